"""Uses of the public API that must type-check (mypy --strict), checked by test_typing.py."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator import (
    Budget,
    ManualClock,
    ModelPrice,
    NodeContext,
    NodeSpec,
    Plan,
    Prices,
    Retry,
    RunConfig,
    Runtime,
    SinkConfig,
    node,
)


class Text(BaseModel):
    text: str


class Count(BaseModel):
    count: int


@node
async def bare(ctx: NodeContext, inputs: Text) -> Count:
    return Count(count=len(inputs.text))


@node()
async def empty_call(ctx: NodeContext, inputs: Text) -> Text:
    return inputs


@node("named", effects={"fs"}, retry=Retry(max_attempts=3), budget=Budget(tokens=10))
async def named(ctx: NodeContext, inputs: Text) -> Text:
    await ctx.write("out.txt", inputs.text)
    return inputs


specs: list[NodeSpec] = [bare, empty_call, named]

plan = Plan("typed", inputs=Text)
first = plan.add(named, text=plan.input("text"))
plan.add(empty_call, text=first.out.text)
plan.add(bare, text=first.out.text)

config = RunConfig(
    allow_effects=frozenset({"fs"}),
    budget=Budget(tokens=1_000),
    prices=Prices(models={"my-model*": ModelPrice(input_per_mtok=1, output_per_mtok=2)}),
    receipts=[SinkConfig.parse("file=receipts.jsonl")],
)


def runtime() -> Runtime:
    return Runtime(clock=ManualClock())
