"""A node that mixes sandbox commands with a host tool, for the resume-effects tests.

``work`` writes a file in its sandbox, counts itself through a host tool (one line per
performance in ``$EFFECTS_SIDE``, outside the ledger), appends to the file, then waits
in a host tool until ``$EFFECTS_RELEASE`` exists (so a test can SIGKILL it there), and
reports what the file holds.
"""

import json
import os
import time

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node


class In(BaseModel):
    side: str
    release: str


class Out(BaseModel):
    text: str
    count: int


def count(side: str, idempotency_key: str) -> int:
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"key": idempotency_key}) + "\n").encode())
    finally:
        os.close(fd)
    with open(side) as lines:
        return sum(1 for _ in lines)


def hold(release: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)


@node(effects={"fs"}, timeout=120)
async def work(ctx: NodeContext, inputs: In) -> Out:
    await ctx.exec(["sh", "-c", "echo one > a.txt"], check=True)
    performed = await ctx.tool("count", count, inputs.side)
    await ctx.exec(["sh", "-c", "echo two >> a.txt"], check=True)
    await ctx.tool("hold", hold, inputs.release)
    text = await ctx.exec(["cat", "a.txt"], check=True)
    return Out(text=text.stdout, count=performed)


plan = Plan("effects", inputs=In)
plan.add(work, side=plan.input("side"), release=plan.input("release"))
