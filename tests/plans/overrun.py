"""Nodes that use up their own allowance part-way (test_budget): one in model tokens,
one in sandbox compute. Each first performs a ``mark`` tool call that appends to a host
file, so a test can count how often an effect before the overrun was performed."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from orchestrator import Budget, NodeContext, Plan, node


class Tally(BaseModel):
    tally: str


class Said(BaseModel):
    text: str


def mark(path: str) -> int:
    """Append one line to ``path``; how many lines it now has."""
    with Path(path).open("a") as f:
        f.write("performed\n")
    return len(Path(path).read_text().splitlines())


@node("talk", effects={"llm"}, budget=Budget(tokens=120))
async def talk(ctx: NodeContext, inputs: Tally) -> Said:
    """Two calls of up to about 70 tokens each: the second does not fit what the first
    left of the node's 120, though it alone would."""
    await ctx.tool("mark", mark, inputs.tally)
    first = await ctx.llm.complete("first question", max_tokens=40)
    second = await ctx.llm.complete("second question", max_tokens=40)
    return Said(text=f"{first.text} {second.text}")


def talking_plan() -> Plan:
    plan = Plan("talking", inputs=Tally)
    t = plan.add(talk, tally=plan.input("tally"))
    plan.add(echo, text=t.out.text)
    return plan


class Echoed(BaseModel):
    text: str


@node("echo")
async def echo(ctx: NodeContext, inputs: Said) -> Echoed:
    return Echoed(text=inputs.text)


TALK_SCRIPT = [
    {"text": "one", "match": "first", "input_tokens": 30, "output_tokens": 40},
    {"text": "two", "match": "second", "input_tokens": 31, "output_tokens": 40},
]


class Crunched(BaseModel):
    code: int


@node("crunch", effects={"fs"}, budget=Budget(compute_h=0.0005))
async def crunch(ctx: NodeContext, inputs: Tally) -> Crunched:
    """Marks, writes a file, then sleeps CRUNCH_S seconds in its sandbox: longer than the
    1.8 s its 0.0005 compute-hours pay for, unless CRUNCH_S says otherwise."""
    await ctx.tool("mark", mark, inputs.tally)
    await ctx.vm.write("begun.txt", "begun\n")
    done = await ctx.exec(["sleep", os.environ.get("CRUNCH_S", "30")])
    return Crunched(code=done.code)


def crunching_plan() -> Plan:
    plan = Plan("crunching", inputs=Tally)
    plan.add(crunch, tally=plan.input("tally"))
    return plan


talking = talking_plan()
crunching = crunching_plan()
