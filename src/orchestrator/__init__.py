"""The Orchestrator: durable, typed, parallel runs of agent work.

Public API only; implementation lives in the submodules. Each name is imported on first
use (PEP 562), so ``import orchestrator`` — and the command line's ``--help`` — do not pay
for pydantic, the event models or the runtime until a program touches them;
``from orchestrator import Plan`` works as before, and type checkers read the imports
under ``TYPE_CHECKING``. Rejected: importing everything here (~0.5 s of start-up for
commands that need none of it).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

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
    "orchestrator.sandbox.limits": ("Limits",),
    "orchestrator.sinks.base": ("SinkConfig",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    """This package, with ``orchestrator.node`` always the decorator.

    The name is also a submodule's, and importing a submodule sets it on its package: the
    setter keeps the decorator in place (as the eager ``from orchestrator.node import
    node`` used to), whoever imports ``orchestrator.node`` first.
    """

    @property
    def node(self) -> Any:
        return importlib.import_module("orchestrator.node").node

    @node.setter
    def node(self, value: Any) -> None:
        if value is not sys.modules.get("orchestrator.node"):
            raise AttributeError("orchestrator.node is the node decorator")


sys.modules[__name__].__class__ = _Package
