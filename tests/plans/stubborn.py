"""Nodes whose sandboxed commands misbehave: a command that stops the agent with
SIGSTOP, and one that ignores SIGTERM and leaves a child in a session of its own holding
the command's pipes. Each node must still end, and the run with it."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node

HOLDER = "trap '' TERM; setsid sh -c \"trap '' TERM; sleep 600\" & echo started; sleep 600"


class Empty(BaseModel):
    pass


class Text(BaseModel):
    text: str


@node("stop-agent", timeout=120)
async def stop_agent(ctx: NodeContext, inputs: Empty) -> Text:
    # the agent never answers again: the sandbox counts as broken after the command's
    # timeout and its grace, and is torn down
    await ctx.exec(["sh", "-c", "kill -STOP $PPID"], timeout=2)
    return Text(text="unreachable")


@node("hold-pipes", timeout=60)
async def hold_pipes(ctx: NodeContext, inputs: Empty) -> Text:
    result = await ctx.exec(["sh", "-c", HOLDER], timeout=2)
    return Text(text=f"timed_out={result.timed_out} {result.stdout.strip()}")


def stubborn_plan() -> Plan:
    plan = Plan("stubborn")
    plan.add(stop_agent)
    plan.add(hold_pipes)
    return plan


plan = stubborn_plan()
