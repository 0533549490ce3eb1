"""Plans for the disk-limit tests (sandboxed; run under --sandbox bwrap or gvisor)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, node
from orchestrator.sandbox.limits import Limits

LIMIT_MB = 20


class Gate(BaseModel):
    path: str


class Kept(BaseModel):
    check: str


async def _wait_for(path: str) -> str:
    for _ in range(6000):  # at most ~2 minutes
        if Path(path).exists():
            return "open"
        await asyncio.sleep(0.02)
    return "timed out"


@node("keeper", effects={"fs"}, limits=Limits(disk_mb=LIMIT_MB), timeout=180)
async def keeper(ctx: NodeContext, inputs: Gate) -> Kept:
    """Write 5 MB (within the limit), checkpoint, wait for the gate, check the file."""
    make = "head -c 5000000 /dev/urandom > data.bin && sha256sum data.bin > data.sum"
    await ctx.exec(["sh", "-c", make], check=True)
    await ctx.checkpoint("written")
    await ctx.tool("wait", _wait_for, inputs.path)
    out = await ctx.exec(["sha256sum", "-c", "data.sum"], check=True)
    return Kept(check=out.stdout.strip())


def keeper_plan() -> Plan:
    plan = Plan("disk-keeper", inputs=Gate)
    plan.add(keeper, path=plan.input("path"))
    return plan


class Nothing(BaseModel):
    pass


class Written(BaseModel):
    code: int


@node(
    "filler",
    effects={"fs"},
    limits=Limits(disk_mb=LIMIT_MB),
    retry=Retry(max_attempts=2, base_delay=0),
    timeout=120,
)
async def filler(ctx: NodeContext, inputs: Nothing) -> Written:
    """Write 200 MB into the workspace (ten times the limit; dd stops at the first error)."""
    out = await ctx.exec(["dd", "if=/dev/zero", "of=big", "bs=1M", "count=200"])
    return Written(code=out.code)


@node("modest", effects={"fs"}, limits=Limits(disk_mb=LIMIT_MB), timeout=120)
async def modest(ctx: NodeContext, inputs: Nothing) -> Written:
    """Write 10 MB: within the limit."""
    out = await ctx.exec(["dd", "if=/dev/zero", "of=ten", "bs=1M", "count=10"])
    return Written(code=out.code)


class TmpUse(BaseModel):
    code: int
    written: int


@node("tmp-filler", effects={"fs"}, limits=Limits(disk_mb=LIMIT_MB), timeout=120)
async def tmp_filler(ctx: NodeContext, inputs: Nothing) -> TmpUse:
    """Write 200 MB into /tmp; report how much landed."""
    out = await ctx.exec(
        [
            "sh",
            "-c",
            "dd if=/dev/zero of=/tmp/big bs=1M count=200 2>/dev/null; r=$?; "
            "wc -c < /tmp/big; exit $r",
        ]
    )
    return TmpUse(code=out.code, written=int(out.stdout.split()[0]))


def filler_plan() -> Plan:
    plan = Plan("disk-filler")
    plan.add(filler)
    plan.add(modest)
    plan.add(tmp_filler)
    return plan


@node("drafter", effects={"fs"}, gate="review", limits=Limits(disk_mb=LIMIT_MB))
async def drafter(ctx: NodeContext, inputs: Nothing) -> Written:
    """Writes a draft in its workspace, then waits at a gate (the run parks)."""
    out = await ctx.exec(["sh", "-c", "echo draft > draft.txt"])
    return Written(code=out.code)


def drafter_plan() -> Plan:
    plan = Plan("disk-drafter")
    plan.add(drafter)
    return plan
