"""Plans with a human gate and with model calls under a budget (gate and budget tests)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from orchestrator import Budget, NodeContext, Plan, Retry, node


class Topic(BaseModel):
    topic: str


class Change(BaseModel):
    diff: str
    title: str


class Shipped(BaseModel):
    shipped: str


class Side(BaseModel):
    done: bool


@node("propose", gate="review", retry=Retry(max_attempts=3, base_delay=0, backoff="none"))
async def propose(ctx: NodeContext, inputs: Topic) -> Change:
    """Proposes a change; a rejection's comment shapes the next attempt."""
    notes = " / ".join(ctx.feedback)
    title = f"{inputs.topic}: attempt {ctx.attempt}" + (f" (after: {notes})" if notes else "")
    diff = f"--- a/README\n+++ b/README\n@@ -1 +1 @@\n-old\n+{title}\n"
    return Change(diff=diff, title=title)


@node("ship")
async def ship(ctx: NodeContext, inputs: Change) -> Shipped:
    return Shipped(shipped=inputs.title)


@node("side")
async def side(ctx: NodeContext, inputs: Topic) -> Side:
    """An independent branch: it runs while the gate waits."""
    await ctx.log("side branch", topic=inputs.topic)
    return Side(done=True)


class PlanInputs(BaseModel):
    topic: str = "docs"


def gated_plan() -> Plan:
    plan = Plan("gated", inputs=PlanInputs)
    p = plan.add(propose, topic=plan.input("topic"))
    plan.add(ship, diff=p.out.diff, title=p.out.title)
    plan.add(side, topic=plan.input("topic"))
    return plan


plan = gated_plan()


class Ask(BaseModel):
    prompt: str


class Answer(BaseModel):
    text: str
    tokens: int


@node("ask", effects={"llm"}, budget=Budget(tokens=400, spend_usd=0.01))
async def ask(ctx: NodeContext, inputs: Ask) -> Answer:
    done = await ctx.llm.complete(inputs.prompt, max_tokens=int(os.environ.get("ASK_MAX", "100")))
    return Answer(text=done.text, tokens=done.usage.input_tokens + done.usage.output_tokens)


class Prompts(BaseModel):
    prompts: list[str]


@node("fan")
async def fan(ctx: NodeContext, inputs: Prompts) -> Prompts:
    return inputs


def asking_plan(items: int = 4) -> Plan:
    plan = Plan("asking", inputs=Prompts)
    f = plan.add(fan, prompts=plan.input("prompts"))
    plan.map(ask, over=f.out.prompts, item="prompt", max_items=items)
    return plan


asking = asking_plan()


# ---- gate tests: a side branch still running while the gate waits; a gate with no retry ---


class Waiting(BaseModel):
    topic: str = "docs"
    path: str


@node("side-wait")
async def side_wait(ctx: NodeContext, inputs: Waiting) -> Side:
    """An independent branch that runs until the file at ``path`` appears."""
    await ctx.tool("mark", lambda: "waiting")
    while not Path(inputs.path).exists():
        await asyncio.sleep(0.02)
    await ctx.tool("read-release", Path(inputs.path).read_text)
    return Side(done=True)


def live_plan() -> Plan:
    """propose (gated) -> ship, and side-wait, which holds the run open until released."""
    plan = Plan("gated-live", inputs=Waiting)
    p = plan.add(propose, topic=plan.input("topic"))
    plan.add(ship, diff=p.out.diff, title=p.out.title)
    plan.add(side_wait, topic=plan.input("topic"), path=plan.input("path"))
    return plan


live = live_plan()


@node("propose-once", gate="review")
async def propose_once(ctx: NodeContext, inputs: Topic) -> Change:
    """Like ``propose``, but its retry policy allows no second attempt."""
    title = f"{inputs.topic}: the only attempt"
    return Change(diff=f"--- a/README\n+++ b/README\n@@ -1 +1 @@\n-old\n+{title}\n", title=title)


def once_plan() -> Plan:
    plan = Plan("gated-once", inputs=PlanInputs)
    p = plan.add(propose_once, topic=plan.input("topic"))
    plan.add(ship, diff=p.out.diff, title=p.out.title)
    plan.add(side, topic=plan.input("topic"))
    return plan


once = once_plan()


# ---- budget abort, drain and resume; model calls across a crash (test_budget, test_llm_runs)


class Burnt(BaseModel):
    prompt: str


@node(
    "burn",
    effects={"llm"},
    budget=Budget(tokens=100),
    retry=Retry(max_attempts=2, base_delay=0, backoff="none"),
)
async def burn(ctx: NodeContext, inputs: Topic) -> Burnt:
    """One model call per attempt; the first attempt fails after its call, so the two
    attempts together use more than the node's declared worst case (100 tokens)."""
    await ctx.llm.complete(f"burn {inputs.topic}", max_tokens=40)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails after its model call")
    return Burnt(prompt=f"ask about {inputs.topic}")


class Napped(BaseModel):
    code: int


@node("nap", budget=Budget(compute_h=0.01))
async def nap(ctx: NodeContext, inputs: Burnt) -> Napped:
    """Sleeps in its sandbox for NAP_S seconds (default 1)."""
    done = await ctx.exec(["sleep", os.environ.get("NAP_S", "1")])
    return Napped(code=done.code)


def burning_plan(with_nap: bool = False) -> Plan:
    """burn, then ask (and, with_nap, a sandboxed sibling ``nap`` dispatched before ask).

    Worst case: 500 tokens and $0.01 (+ 0.01 compute-h with nap). Under a ceiling of
    exactly that, burn's two attempts use 120 of its 100 tokens (with BURN_SCRIPT's
    usage), so ``then_ask`` (400 tokens) no longer fits and is refused."""
    plan = Plan("burning", inputs=PlanInputs)
    b = plan.add(burn, topic=plan.input("topic"))
    if with_nap:
        plan.add(nap, prompt=b.out.prompt)
    plan.add(ask, name="then_ask", prompt=b.out.prompt)
    return plan


burning = burning_plan()
BURN_SCRIPT = [
    {"text": "burnt", "match": "burn ", "input_tokens": 20, "output_tokens": 40},
    {"text": "answered", "match": "ask about", "input_tokens": 30, "output_tokens": 50},
]


class AskWait(BaseModel):
    prompt: str
    go: str


@node("ask_then_wait", effects={"llm"})
async def ask_then_wait(ctx: NodeContext, inputs: AskWait) -> Answer:
    """Asks the model, then waits (outside any effect) until the file ``go`` exists."""
    done = await ctx.llm.complete(inputs.prompt, max_tokens=50)
    while not os.path.exists(inputs.go):
        await asyncio.sleep(0.02)
    return Answer(text=done.text, tokens=done.usage.input_tokens + done.usage.output_tokens)


def waiting_plan() -> Plan:
    plan = Plan("ask-then-wait", inputs=AskWait)
    plan.add(ask_then_wait, prompt=plan.input("prompt"), go=plan.input("go"))
    return plan


waiting = waiting_plan()


# ---- a rejection that sends the work back upstream (approve --reject --redo draft) -------


class Draft(BaseModel):
    text: str


@node("draft")
async def draft(ctx: NodeContext, inputs: Topic) -> Draft:
    """Writes the text the gated node proposes; a redo's comment shapes the next one."""
    notes = " / ".join(ctx.feedback)
    return Draft(text=f"{inputs.topic} draft {ctx.attempt}" + (f" ({notes})" if notes else ""))


@node("propose-draft", gate="review")
async def propose_draft(ctx: NodeContext, inputs: Draft) -> Change:
    diff = f"--- a/README\n+++ b/README\n@@ -1 +1 @@\n-old\n+{inputs.text}\n"
    return Change(diff=diff, title=inputs.text)


def redo_plan() -> Plan:
    plan = Plan("gated-redo", inputs=PlanInputs)
    d = plan.add(draft, topic=plan.input("topic"))
    p = plan.add(propose_draft, text=d.out.text)
    plan.add(ship, diff=p.out.diff, title=p.out.title)
    plan.add(side, topic=plan.input("topic"))
    return plan


redo = redo_plan()
