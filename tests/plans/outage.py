"""Sandboxed and tool nodes that keep working until the test releases them, for the
object-store outage tests. Every tool performance is appended to ``$OUTAGE_DIR/performed``
(one idempotency key a line), so a test can count effects performed twice."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node

WORKERS = 3
RELEASE_WAIT = 240.0


class Nothing(BaseModel):
    pass


class Done(BaseModel):
    lines: int


class Total(BaseModel):
    total: int


def _dir() -> Path:
    return Path(os.environ["OUTAGE_DIR"])


def count(step: int, idempotency_key: str) -> int:
    with open(_dir() / "performed", "a") as log:
        log.write(idempotency_key + "\n")
    return step


async def released(idempotency_key: str) -> bool:
    """Wait (bounded) until the test creates ``$OUTAGE_DIR/release``."""
    count(-1, idempotency_key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELEASE_WAIT
    while not (_dir() / "release").exists():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _work(ctx: NodeContext, steps: int) -> None:
    for i in range(steps):
        await ctx.exec(["sh", "-c", f"echo step {i} >> log.txt"], check=True)
        await ctx.tool("count", count, i)
        await asyncio.sleep(0.05)


@node("worker", effects={"fs"})
async def worker(ctx: NodeContext, inputs: Nothing) -> Done:
    await _work(ctx, 3)
    if not await ctx.tool("release", released):
        raise TimeoutError("the test never released the nodes")
    await _work(ctx, 3)
    lines = await ctx.exec(["sh", "-c", "wc -l < log.txt"], check=True)
    return Done(lines=int(lines.stdout))


class Lines(BaseModel):
    a: int
    b: int
    c: int


@node("total", effects={"fs"})
async def total(ctx: NodeContext, inputs: Lines) -> Total:
    await ctx.tool("count", count, 99)
    summed = await ctx.exec(["sh", "-c", f"echo $(({inputs.a} + {inputs.b} + {inputs.c}))"])
    return Total(total=int(summed.stdout))


plan = Plan("outage")
workers = [plan.add(worker, name=f"worker{n}") for n in range(WORKERS)]
plan.add(total, a=workers[0].out.lines, b=workers[1].out.lines, c=workers[2].out.lines)
