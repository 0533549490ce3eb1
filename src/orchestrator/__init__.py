"""The Orchestrator: durable, typed, parallel runs of agent work.

Public API only; implementation lives in the submodules. Each name is imported on first
use (PEP 562, see ``lazy.py``), so ``import orchestrator`` — and the command line's
``--help`` — do not pay for pydantic, the event models or the runtime until a program
touches them; ``from orchestrator import Plan`` works as before, and type checkers read
the imports under ``TYPE_CHECKING``. Rejected: importing everything here (~0.5 s of
start-up for commands that need none of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.lazy import lazy_exports

if TYPE_CHECKING:
    from orchestrator.budget import Budget, ModelPrice, Prices
    from orchestrator.clock import Clock, ManualClock, SystemClock
    from orchestrator.config import RunConfig
    from orchestrator.errors import (
        EffectFailed,
        ExecFailed,
        NodeTimeout,
        NonDeterminism,
        OrchestratorError,
        PlanInvalid,
        UserError,
    )
    from orchestrator.ids import Ref
    from orchestrator.ledger.state import RunState
    from orchestrator.node import NodeSpec, Retry, define_node, node
    from orchestrator.plan import Const, Input, Plan, PlanProblem
    from orchestrator.runtime.context import ExecResult, NodeContext
    from orchestrator.runtime.engine import Runtime
    from orchestrator.runtime.handle import RunHandle
    from orchestrator.sandbox.limits import Limits
    from orchestrator.sinks.base import SinkConfig

__all__ = [
    # defining work
    "Budget",
    "Limits",
    "NodeSpec",
    "Retry",
    "define_node",
    "node",
    # plans
    "Const",
    "Input",
    "Plan",
    "PlanProblem",
    "Ref",
    # run settings
    "RunConfig",
    "ModelPrice",
    "Prices",
    "SinkConfig",
    # running
    "ExecResult",
    "NodeContext",
    "RunState",
    "Runtime",
    "RunHandle",
    "Clock",
    "ManualClock",
    "SystemClock",
    # errors
    "EffectFailed",
    "ExecFailed",
    "NodeTimeout",
    "NonDeterminism",
    "OrchestratorError",
    "PlanInvalid",
    "UserError",
]

_HOMES = {
    "orchestrator.budget": ("Budget", "ModelPrice", "Prices"),
    "orchestrator.clock": ("Clock", "ManualClock", "SystemClock"),
    "orchestrator.config": ("RunConfig",),
    "orchestrator.errors": (
        "EffectFailed",
        "ExecFailed",
        "NodeTimeout",
        "NonDeterminism",
        "OrchestratorError",
        "PlanInvalid",
        "UserError",
    ),
    "orchestrator.ids": ("Ref",),
    "orchestrator.ledger.state": ("RunState",),
    "orchestrator.node": ("NodeSpec", "Retry", "define_node", "node"),
    "orchestrator.plan": ("Const", "Input", "Plan", "PlanProblem"),
    "orchestrator.runtime.context": ("ExecResult", "NodeContext"),
    "orchestrator.runtime.engine": ("Runtime",),
    "orchestrator.runtime.handle": ("RunHandle",),
    "orchestrator.sandbox.limits": ("Limits",),
    "orchestrator.sinks.base": ("SinkConfig",),
}

if not TYPE_CHECKING:  # type checkers read the imports above, and flag unknown names
    __getattr__ = lazy_exports(__name__, _HOMES)
