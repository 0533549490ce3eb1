"""The Orchestrator: durable, typed, parallel runs of agent work.

Public API only; implementation lives in the submodules.
"""

from orchestrator.errors import (
    EffectFailed,
    NodeTimeout,
    NonDeterminism,
    OrchestratorError,
    PlanInvalid,
    UserError,
)
from orchestrator.ledger.state import RunState
from orchestrator.node import Budget, NodeSpec, Retry, define_node, node
from orchestrator.plan import Const, Input, Plan, PlanProblem, Ref, RunConfig
from orchestrator.runtime.context import ExecFailed, ExecResult, NodeContext
from orchestrator.runtime.engine import Runtime
from orchestrator.sandbox.limits import Limits

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
    "RunConfig",
    # running
    "ExecResult",
    "NodeContext",
    "RunState",
    "Runtime",
    # errors
    "EffectFailed",
    "ExecFailed",
    "NodeTimeout",
    "NonDeterminism",
    "OrchestratorError",
    "PlanInvalid",
    "UserError",
]
