"""The plan the crash chaos test drives: 62 nodes, parallel branches, retries, side effects.

Shape: ``seed`` makes a list of items; a map ``work`` fans out over it while four
parallel chains of twelve steps each run beside it; ``join`` gathers everything.
Every body appends to a side file through ``ctx.tool`` (a journaled effect that takes
an idempotency key) and sleeps through ``ctx.sleep`` so kills land mid-node. Some nodes
fail their first (or first two) attempts, decided by ``ctx.attempt`` alone.

Outside the journal, on purpose, each body start is written to ``$CHAOS_STARTS`` as
``start NODE ATTEMPT INCARNATION`` so the test can see whether a completed node ran
again. ``$CHAOS_INCARNATION`` numbers the process performing the work. Outputs depend
only on inputs and the deterministic parts of journaled effect results, so a crashed
and resumed run must end with the same outputs as an uncrashed one.
"""

import asyncio
import hashlib
import json
import os

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, node

N_ITEMS = 12
N_CHAINS = 4  # join takes end0..end3
CHAIN_LEN = 12
NAP = 0.05  # seconds per ctx.sleep; a chain step sleeps STEP_NAPS of them
STEP_NAPS = 8
APPEND_HOLD = 0.01  # time between performing an append and its result reaching the ledger

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


class JoinIn(BaseModel):
    side: str
    works: list[str]
    work_attempts: list[int]
    end0: str
    end1: str
    end2: str
    end3: str


class JoinOut(BaseModel):
    total: str
    works: int
    retried: int


@node()
async def seed(ctx: NodeContext, inputs: SeedIn) -> SeedOut:
    mark_start(ctx)
    await ctx.sleep(NAP)
    salt = await side_effect(ctx, inputs.side, f"seed n={inputs.n}")
    return SeedOut(items=list(range(inputs.n)), salt=salt)


def work_failures(item: int) -> int:
    """How many leading attempts of ``work[item]`` fail."""
    if item % 6 == 5:
        return 2
    return 1 if item % 3 == 1 else 0


@node(retry=RETRY)
async def work(ctx: NodeContext, inputs: WorkIn) -> Val:
    mark_start(ctx)
    digests = [await side_effect(ctx, inputs.side, f"work {inputs.item} a{ctx.attempt} begin")]
    if ctx.attempt <= work_failures(inputs.item):
        raise Flaky(f"work {inputs.item} fails attempt {ctx.attempt}")
    for i in range(2 + inputs.item % 5):
        for _ in range(4):
            await ctx.sleep(NAP)
        digests.append(await side_effect(ctx, inputs.side, f"work {inputs.item} part {i}"))
    return Val(value=short(inputs.salt, *digests), attempt=ctx.attempt)


@node(retry=RETRY)
async def step(ctx: NodeContext, inputs: StepIn) -> Val:
    mark_start(ctx)
    half = STEP_NAPS // 2
    for _ in range(half):
        await ctx.sleep(NAP)
    first = await side_effect(ctx, inputs.side, f"chain {inputs.chain} step {inputs.step} one")
    if ctx.attempt == 1 and (inputs.chain + inputs.step) % 5 == 2:
        raise Flaky(f"chain {inputs.chain} step {inputs.step} fails its first attempt")
    for _ in range(STEP_NAPS - half):
        await ctx.sleep(NAP)
    second = await side_effect(
        ctx, inputs.side, f"chain {inputs.chain} step {inputs.step} two a{ctx.attempt}"
    )
    return Val(value=short(inputs.prev, first, second), attempt=ctx.attempt)


@node()
async def join(ctx: NodeContext, inputs: JoinIn) -> JoinOut:
    mark_start(ctx)
    await ctx.sleep(NAP)
    ends = [inputs.end0, inputs.end1, inputs.end2, inputs.end3]
    final = await side_effect(ctx, inputs.side, f"join {len(inputs.works)} {len(ends)}")
    return JoinOut(
        total=short(*inputs.works, *ends, final),
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
    ends = {}
    for c in range(N_CHAINS):
        prev = s.out.salt
        for k in range(CHAIN_LEN):
            h = plan.add(step, name=f"chain{c}-{k:02d}", side=side, chain=c, step=k, prev=prev)
            prev = h.out.value
        ends[f"end{c}"] = prev
    plan.add(join, side=side, works=w.out.value, work_attempts=w.out.attempt, **ends)
    return plan


plan = build()
