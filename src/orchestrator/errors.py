"""Errors of the Orchestrator.

OrchestratorError
├── UserError               something the user can fix; the CLI prints it, no traceback
│   ├── ConfigError         bad option, URL, config value, run id or home directory
│   │   └── MissingExtra    an optional dependency is not installed (names its extra)
│   ├── PlanLoadError       FILE.py:ATTR missing, not importable, or not a Plan
│   ├── PlanInvalid         Plan.validate() found problems (carries them all)
│   ├── InputError          run inputs that do not fit the plan's declared inputs
│   ├── RunNotFound         no such run in the ledger
│   ├── RunBusy             another live process owns the run
│   ├── RunStateError       the run is not in a state that allows the request
│   └── DecisionRefused     a gate decision that is forged, stale or for something else
├── LedgerError             the ledger cannot be opened or written (sqlite3 errors mapped)
│   ├── LedgerConflict      two writers raced on one run's chain
│   └── LedgerCorrupt       a stored event does not hash, decode or parse; a damaged file
└── NodeError               raised inside node bodies, recorded in the ledger
    ├── EffectFailed        an effect raised; re-raised identically on resume/replay
    ├── NodeTimeout         a node exceeded its declared timeout
    ├── NonDeterminism      a re-run body asked for a different effect than its journal
    ├── GateRejected        a person rejected the node's outputs (their comment)
    └── BudgetExceeded      a model call refused before sending (orchestrator.budget)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.plan import PlanProblem


class OrchestratorError(Exception):
    """Base of every error the Orchestrator raises on purpose."""


class UserError(OrchestratorError):
    """An error the user can fix; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(UserError):
    pass


class MissingExtra(ConfigError):
    """A feature needs an optional dependency that is not installed; ``extra`` names the
    extra that brings it (``pip install 'orchestrator[EXTRA]'``)."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature, self.module, self.extra = feature, module, extra
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed. "
            f"Install the orchestrator with its {extra!r} extra: "
            f"pip install 'orchestrator[{extra}]' (in a checkout: uv sync --extra {extra})."
        )


class PlanLoadError(UserError):
    pass


class PlanInvalid(UserError):
    exit_code = 2

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the plan has {len(problems)} problem(s):\n{lines}")


class InputError(UserError):
    pass


class RunNotFound(UserError):
    pass


class RunBusy(UserError):
    pass


class RunStateError(UserError):
    pass


class DecisionRefused(UserError):
    """A gate decision was refused; nothing was recorded."""


class LedgerError(OrchestratorError):
    pass


class LedgerConflict(LedgerError):
    pass


class LedgerCorrupt(LedgerError):
    pass


class NodeError(OrchestratorError):
    pass


class EffectFailed(NodeError):
    """An effect raised. Carries the original exception's type name and message."""

    def __init__(self, effect: str, type_name: str, message: str, classes: list[str]) -> None:
        self.effect = effect
        self.type_name = type_name
        self.classes = classes
        super().__init__(f"{effect} effect failed: {type_name}: {message}")


class EffectNotDeclared(NodeError):
    pass


class NodeTimeout(NodeError):
    pass


class NonDeterminism(NodeError):
    """A re-run node body issued an effect different from the one in its journal."""

    def __init__(self, node: str, attempt: int, index: int, expected: str, got: str) -> None:
        self.node, self.attempt, self.index = node, attempt, index
        self.expected, self.got = expected, got
        super().__init__(
            f"node {node} attempt {attempt} effect #{index}: expected {expected}, got {got}"
        )


class GateRejected(NodeError):
    """A person rejected a gated node's outputs; the message is their comment."""
