"""The Orchestrator: durable, typed, parallel runs of agent work.

Public API only; implementation lives in the submodules.
"""

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
