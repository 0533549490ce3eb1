"""Setting up and running one attempt's body; shared by the scheduler and replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.budget import attempt_limit
from orchestrator.ledger.events import EffectRecorded
from orchestrator.ledger.state import RunState
from orchestrator.node import NodeSpec
from orchestrator.runtime.context import Allowance, EffectSite, NodeContext


def run_body(spec: NodeSpec, ctx: NodeContext, inputs: dict[str, Any]) -> Any:
    """Validate inputs and call the node body (a coroutine)."""
    return spec.fn(ctx, spec.inputs.model_validate(inputs, by_name=True))


def site_for(
    state: RunState,
    spec: NodeSpec,
    node: str,
    attempt: int,
    workspace: Path,
    journal: list[EffectRecorded],
) -> EffectSite:
    """Where an attempt runs, with its journal and earlier reviewers' comments."""
    feedback = tuple(state.nodes[node].feedback)
    return EffectSite(state.run_id, node, attempt, workspace, journal, spec.effects, feedback)


def allowance_for(
    state: RunState, spec: NodeSpec, counted_from: int = 0, reserved: bool | None = None
) -> Allowance:
    """What an attempt may spend on model calls: its reservation when the run has a
    ceiling (``reserved``; by default whether ``state`` has one: every dispatch then
    reserves), else what the node declares; calls before ``counted_from`` are not
    counted (see ``NodeState.allowance_from``)."""
    if reserved is None:
        reserved = state.book.ceiling is not None
    limit = attempt_limit(spec.budget, reserved)
    return Allowance(limit, state.book.prices, counted_from)


def outputs_of(spec: NodeSpec, result: Any) -> dict[str, Any]:
    """Check a body's return value against the node's output model; JSON-ready data."""
    if isinstance(result, spec.outputs):
        model: BaseModel = result
    else:
        model = spec.outputs.model_validate(result)
    return model.model_dump(mode="json")
