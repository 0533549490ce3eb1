"""Small plans for scheduler, ledger, replay and CLI tests."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, node


class Text(BaseModel):
    text: str


class Items(BaseModel):
    items: list[str]


class Joined(BaseModel):
    texts: list[str]


class Count(BaseModel):
    count: int


@node("split")
async def split(ctx: NodeContext, inputs: Text) -> Items:
    stamp = await ctx.now()
    await ctx.log("split", at=stamp.isoformat())
    return Items(items=inputs.text.split())


@node("shout", effects={"fs"}, retry=Retry(max_attempts=3, base_delay=0.01))
async def shout(ctx: NodeContext, inputs: Text) -> Text:
    roll = await ctx.random()
    result = await ctx.exec(["sh", "-c", 'printf "%s" "$0" | tr a-z A-Z', inputs.text])
    await ctx.checkpoint(f"shouted {roll:.3f}")
    return Text(text=result.stdout)


@node("join", effects={"fs"})
async def join(ctx: NodeContext, inputs: Joined) -> Count:
    await ctx.write("joined.txt", " ".join(inputs.texts))
    back = await ctx.read("joined.txt")
    return Count(count=len(back.split()))


def words_plan() -> Plan:
    plan = Plan("words", inputs=Text)
    parts = plan.add(split, text=plan.input("text"))
    loud = plan.map(shout, over=parts.out.items, item="text", max_items=20)
    plan.add(join, texts=loud.out.text)
    return plan


plan = words_plan()


# ---- a plan whose middle node waits on a file (for kill / pause tests) ------------------


class Gate(BaseModel):
    path: str


@node("before")
async def before(ctx: NodeContext, inputs: Gate) -> Gate:
    await ctx.tool("mark", lambda: "before")
    return inputs


@node("wait-for-file")
async def wait_for_file(ctx: NodeContext, inputs: Gate) -> Text:
    await ctx.tool("mark", lambda: "waiting")
    while not Path(inputs.path).exists():
        await asyncio.sleep(0.02)
    content = await ctx.tool("read-gate", Path(inputs.path).read_text)
    return Text(text=content)


@node("wait-for-file")
async def wait_for_file_v2(ctx: NodeContext, inputs: Gate) -> Text:
    await ctx.tool("mark", lambda: "waiting")
    await ctx.tool("changed", lambda: "a different effect")
    while not Path(inputs.path).exists():
        await asyncio.sleep(0.02)
    content = await ctx.tool("read-gate", Path(inputs.path).read_text)
    return Text(text=content)


@node("after")
async def after(ctx: NodeContext, inputs: Text) -> Count:
    await ctx.log("after", text=inputs.text)
    return Count(count=len(inputs.text))


def gated_plan() -> Plan:
    """before -> wait-for-file -> after; WAIT_VARIANT=v2 swaps in changed node code."""
    body = wait_for_file_v2 if os.environ.get("WAIT_VARIANT") == "v2" else wait_for_file
    plan = Plan("wait", inputs=Gate)
    first = plan.add(before, path=plan.input("path"))
    middle = plan.add(body, path=first.out.path)
    plan.add(after, text=middle.out.text)
    return plan


waiting = gated_plan


# ---- an invalid plan for `plan check` ------------------------------------------------------


def broken_plan() -> Plan:
    plan = Plan("broken", inputs=Text)
    first = plan.add(split, text=plan.input("nope"))
    plan.add(join, texts=first.out.missing)
    plan.map(shout, over=Plan("x").input("y"), item="text", max_items=0)  # type: ignore[arg-type]
    return plan


broken = broken_plan
not_a_plan = 42


# ---- a sandboxed node that waits on a host file between two commands ---------------------


@node("sandboxed-wait", effects={"fs"})
async def sandboxed_wait(ctx: NodeContext, inputs: Gate) -> Text:
    first = await ctx.exec(["sh", "-c", "echo before > state.txt; cat state.txt"], check=True)

    async def gate_opened() -> str:
        while not Path(inputs.path).exists():
            await asyncio.sleep(0.02)
        return Path(inputs.path).read_text()

    opened = await ctx.tool("wait-gate", gate_opened)
    second = await ctx.exec(["cat", "state.txt"], check=True)  # the same sandbox, still alive
    return Text(text=f"{first.stdout.strip()}|{opened}|{second.stdout.strip()}")


def sandboxed_plan() -> Plan:
    plan = Plan("sandboxed-wait", inputs=Gate)
    waited = plan.add(sandboxed_wait, path=plan.input("path"))
    plan.add(after, text=waited.out.text)
    return plan


sandboxed = sandboxed_plan
