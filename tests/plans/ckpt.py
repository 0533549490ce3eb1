"""A node that keeps changing its sandbox workspace, for checkpoint and crash tests."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node

STEPS = 16


class Nothing(BaseModel):
    pass


class Done(BaseModel):
    lines: int
    last: str


@node("appender", effects={"fs"})
async def appender(ctx: NodeContext, inputs: Nothing) -> Done:
    for i in range(STEPS):
        await ctx.exec(["sh", "-c", f"echo step {i} >> log.txt"], check=True)
        if i == STEPS // 2:
            await ctx.checkpoint("halfway")
        # between effects, where checkpoints snapshot it
        await asyncio.sleep(float(os.environ.get("APPENDER_SLEEP", "0.12")))
    lines = await ctx.exec(["sh", "-c", "wc -l < log.txt; tail -n 1 log.txt"], check=True)
    count, last = lines.stdout.splitlines()
    return Done(lines=int(count), last=last)


plan = Plan("appender")
plan.add(appender)
