"""The plan the crash chaos test drives: sandboxes, host tools, model calls and a gate.

Shape: ``seed`` makes a list of items; a map ``work`` fans out over it, each instance
working in its own sandbox (shell commands over a file in its workspace) between host
tool calls and model calls; three parallel chains of steps, each with a tool and a model
call, run beside it; ``review`` looks at every work result and waits at the ``merge``
gate; ``join`` gathers everything. Bodies sleep through ``ctx.sleep`` so kills land
mid-node, and some fail their first (or first two) attempts, decided by ``ctx.attempt``.

Outside the journal, on purpose: each body start is written to ``$CHAOS_STARTS`` as
``start NODE ATTEMPT INCARNATION``, each tool performance to the side file as
``{key, payload, incarnation}`` and each model call reaches the loopback model server,
which counts it (every prompt names its node, attempt and step, so a count per prompt is
a count per journal index). ``$CHAOS_INCARNATION`` numbers the process doing the work.
Outputs depend only on inputs and the deterministic parts of effect results, so a crashed
and resumed run must end with the same outputs as an uncrashed one.
"""

import asyncio
import hashlib
import json
import os

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, node

N_ITEMS = 6
N_CHAINS = 3  # join takes end0..end2
CHAIN_LEN = 24
NAP = 0.2  # seconds per ctx.sleep (the chains last ~40 s uncrashed: room for 100+ kills)
STEP_NAPS = 8
APPEND_HOLD = 0.01  # time between performing an append and its result reaching the ledger
GATE = "merge"

RETRY = Retry(max_attempts=3, base_delay=0.01)


class Flaky(RuntimeError):
    """A deterministic failure of an early attempt."""


def incarnation() -> int:
    return int(os.environ.get("CHAOS_INCARNATION", "-1"))


def _append(path: str, text: str) -> None:
    # One write(2) on an O_APPEND descriptor: a SIGKILL cannot tear the line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def mark_start(ctx: NodeContext) -> None:
    """Record, outside the journal, that this body began in this process."""
    starts = os.environ.get("CHAOS_STARTS")
    if starts:  # unset in the test process, so replay leaves no marks
        _append(starts, f"start {ctx.node} {ctx.attempt} {incarnation()}\n")


def short(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


async def append_line(path: str, payload: str, idempotency_key: str) -> dict[str, object]:
    """The side effect: append {key, payload, incarnation} to ``path``."""
    me = incarnation()
    line = {"key": idempotency_key, "payload": payload, "incarnation": me}
    _append(path, json.dumps(line, sort_keys=True) + "\n")
    await asyncio.sleep(APPEND_HOLD)
    return {"incarnation": me, "digest": short(payload)}


async def side_effect(ctx: NodeContext, side: str, payload: str) -> str:
    result = await ctx.tool("append", append_line, side, payload)
    digest: str = result["digest"]
    return digest


async def ask(ctx: NodeContext, what: str) -> str:
    """A model call whose prompt names the node, attempt and step (unique per effect)."""
    answer = await ctx.llm.complete(f"{ctx.node} a{ctx.attempt}: {what}", max_tokens=16)
    return short(what, answer.text)


async def sh(ctx: NodeContext, script: str) -> str:
    done = await ctx.exec(["sh", "-c", script], check=True)
    return done.stdout


class SeedIn(BaseModel):
    side: str
    n: int


class SeedOut(BaseModel):
    items: list[int]
    salt: str


class WorkIn(BaseModel):
    side: str
    salt: str
    item: int


class StepIn(BaseModel):
    side: str
    chain: int
    step: int
    prev: str


class Val(BaseModel):
    value: str
    attempt: int


class ReviewIn(BaseModel):
    side: str
    works: list[str]


class Reviewed(BaseModel):
    verdict: str
    diff: str


class JoinIn(BaseModel):
    side: str
    verdict: str
    works: list[str]
    work_attempts: list[int]
    end0: str
    end1: str
    end2: str


class JoinOut(BaseModel):
    total: str
    works: int
    retried: int


@node(effects={"llm"})
async def seed(ctx: NodeContext, inputs: SeedIn) -> SeedOut:
    mark_start(ctx)
    await ctx.sleep(NAP)
    salt = await side_effect(ctx, inputs.side, f"seed n={inputs.n}")
    told = await ask(ctx, "seed")
    return SeedOut(items=list(range(inputs.n)), salt=short(salt, told))


def work_failures(item: int) -> int:
    """How many leading attempts of ``work[item]`` fail."""
    if item % 6 == 5:
        return 2
    return 1 if item % 3 == 1 else 0


@node(effects={"fs", "llm"}, retry=RETRY, timeout=120)
async def work(ctx: NodeContext, inputs: WorkIn) -> Val:
    """Shell work in the sandbox between tool and model calls: a resume must restore the
    workspace each journaled call saw, or the file's content (and so the output) differs."""
    mark_start(ctx)
    digests = [await side_effect(ctx, inputs.side, f"work {inputs.item} a{ctx.attempt} begin")]
    await sh(ctx, f"echo item {inputs.item} > w.txt")
    if ctx.attempt <= work_failures(inputs.item):
        raise Flaky(f"work {inputs.item} fails attempt {ctx.attempt}")
    for i in range(4 + inputs.item % 3):
        await sh(ctx, f"echo part {i} >> w.txt; cp w.txt w{i}.txt")
        for _ in range(3):
            await ctx.sleep(NAP)
        seen = await sh(ctx, "cat w.txt; ls | wc -l")
        digests.append(await ask(ctx, f"part {i}: {seen}"))
        digests.append(await side_effect(ctx, inputs.side, f"work {inputs.item} part {i}"))
    final = await sh(ctx, "cat w*.txt | sha256sum")
    return Val(value=short(inputs.salt, *digests, final), attempt=ctx.attempt)


@node(effects={"llm"}, retry=RETRY)
async def step(ctx: NodeContext, inputs: StepIn) -> Val:
    mark_start(ctx)
    half = STEP_NAPS // 2
    for _ in range(half):
        await ctx.sleep(NAP)
    first = await side_effect(ctx, inputs.side, f"chain {inputs.chain} step {inputs.step} one")
    if ctx.attempt == 1 and (inputs.chain + inputs.step) % 5 == 2:
        raise Flaky(f"chain {inputs.chain} step {inputs.step} fails its first attempt")
    told = await ask(ctx, "step")
    for _ in range(STEP_NAPS - half):
        await ctx.sleep(NAP)
    second = await side_effect(
        ctx, inputs.side, f"chain {inputs.chain} step {inputs.step} two a{ctx.attempt}"
    )
    return Val(value=short(inputs.prev, first, told, second), attempt=ctx.attempt)


@node(effects={"llm"}, gate=GATE)
async def review(ctx: NodeContext, inputs: ReviewIn) -> Reviewed:
    mark_start(ctx)
    await ctx.sleep(NAP)
    told = await ask(ctx, f"review {len(inputs.works)}")
    noted = await side_effect(ctx, inputs.side, f"review {len(inputs.works)}")
    return Reviewed(verdict=short(told, noted, *inputs.works), diff="\n".join(inputs.works))


@node()
async def join(ctx: NodeContext, inputs: JoinIn) -> JoinOut:
    mark_start(ctx)
    await ctx.sleep(NAP)
    ends = [inputs.end0, inputs.end1, inputs.end2]
    final = await side_effect(ctx, inputs.side, f"join {len(inputs.works)} {len(ends)}")
    return JoinOut(
        total=short(inputs.verdict, *inputs.works, *ends, final),
        works=len(inputs.works),
        retried=sum(a > 1 for a in inputs.work_attempts),
    )


class ChaosIn(BaseModel):
    side: str
    n: int = N_ITEMS


def build() -> Plan:
    plan = Plan("chaos", inputs=ChaosIn)
    side = plan.input("side")
    s = plan.add(seed, side=side, n=plan.input("n"))
    w = plan.map(work, over=s.out.items, item="item", max_items=32, side=side, salt=s.out.salt)
    r = plan.add(review, side=side, works=w.out.value)
    ends = {}
    for c in range(N_CHAINS):
        prev = s.out.salt
        for k in range(CHAIN_LEN):
            h = plan.add(step, name=f"chain{c}-{k:02d}", side=side, chain=c, step=k, prev=prev)
            prev = h.out.value
        ends[f"end{c}"] = prev
    plan.add(
        join,
        side=side,
        verdict=r.out.verdict,
        works=w.out.value,
        work_attempts=w.out.attempt,
        **ends,
    )
    return plan


plan = build()
