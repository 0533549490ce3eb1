"""A 100-node plan of trivial sandboxed commands, for many concurrent runs in one home."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node

WIDTH = 98


class Empty(BaseModel):
    pass


class Items(BaseModel):
    items: list[int]


class Item(BaseModel):
    item: int


class Echoed(BaseModel):
    value: int


class Values(BaseModel):
    values: list[int]


class Total(BaseModel):
    total: int


@node("fan")
async def fan(ctx: NodeContext, inputs: Empty) -> Items:
    return Items(items=list(range(WIDTH)))


@node("echo", timeout=120)
async def echo(ctx: NodeContext, inputs: Item) -> Echoed:
    out = await ctx.exec(["sh", "-c", 'echo "$0"', str(inputs.item)], check=True)
    return Echoed(value=int(out.stdout))


@node("sum")
async def total(ctx: NodeContext, inputs: Values) -> Total:
    return Total(total=sum(inputs.values))


def load_plan() -> Plan:
    plan = Plan("load")
    items = plan.add(fan)
    echoed = plan.map(echo, over=items.out.items, item="item", max_items=WIDTH)
    plan.add(total, values=echoed.out.value)
    return plan


plan = load_plan()
