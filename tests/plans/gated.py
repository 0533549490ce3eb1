"""Plans with a human gate and with model calls under a budget (gate and budget tests)."""

from __future__ import annotations

import os

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
