"""A misuse of the public API that mypy must reject, checked by test_typing.py."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator import NodeContext, Plan


class Text(BaseModel):
    text: str


async def undecorated(ctx: NodeContext, inputs: Text) -> Text:
    return inputs


plan = Plan("wrong")
plan.add(undecorated, text="x")  # a plain function is not a NodeSpec
