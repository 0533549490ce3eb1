"""Errors of the Orchestrator.

OrchestratorError
├── UserError               something the user can fix; the CLI prints it, no traceback
│   ├── ConfigError         bad option, URL, config value, run id or home directory
│   │   ├── MissingExtra    an optional dependency is not installed (names its extra)
│   │   └── UsageError      a command's arguments do not fit its usage (exit status 2)
│   ├── PlanLoadError       FILE.py:ATTR missing, not importable, or not a Plan
│   ├── PlanInvalid         Plan.validate() found problems (carries them all)
│   ├── InputError          run inputs that do not fit the plan's declared inputs
│   ├── RunNotFound         no such run in the ledger
│   ├── RunBusy             another live process owns the run
│   ├── RunStateError       the run is not in a state that allows the request
│   ├── DecisionRefused     a gate decision that is forged, stale or for something else
│   └── SandboxUnavailable  the chosen sandbox backend cannot run on this machine
├── LedgerError             the ledger cannot be opened or written (sqlite3 errors mapped)
│   ├── LedgerConflict      two writers raced on one run's chain
│   └── LedgerCorrupt       a stored event does not hash, decode or parse; a damaged file
├── SigningError            a key is missing or malformed, or a signature does not verify
├── StorageError            an object store is unreachable, or refused or failed a call
│   ├── ObjectMissing       no object under the key
│   └── CorruptObject       an object does not match the digest it is stored under
├── CheckpointError         a checkpoint could not be written or does not verify
├── SnapshotError           a workspace snapshot could not be taken, read or restored
│   ├── CorruptChunk        a chunk is missing or does not hash to its digest
│   └── UnsafeSnapshot      a manifest that is malformed or would write outside
├── GcRefused               gc could not be sure what is referenced; deleted nothing
├── SandboxError            a sandbox failed to start or broke down
├── WorkspaceError          a workspace could not be set up, mounted or removed
│   └── DiskError           a disk image could not be made, mounted or removed
├── CgroupError             a cgroup could not be created, configured or removed
├── ProviderError           a model call failed after the SDK's own retries
├── GitHubError             GitHub refused or could not be reached
└── NodeError               raised inside node bodies, recorded in the ledger
    ├── TransientError      likely to pass if tried again as is (network, a busy service)
    ├── EffectFailed        an effect raised; re-raised identically on resume/replay
    │   └── TransientEffectFailed  …with a TransientError (also a TransientError)
    ├── EffectNotDeclared   a node used an effect it did not declare
    ├── NodeTimeout         a node exceeded its declared timeout
    ├── NonDeterminism      a re-run body asked for a different effect than its journal
    ├── GateRejected        a person rejected the node's outputs (their comment)
    ├── BudgetExceeded      a node used up its allowance, or a model call would pass it
    ├── ExecFailed          ``ctx.exec(..., check=True)`` saw a non-zero exit
    ├── SandboxLimitExceeded a resource limit was hit; the sandbox's processes were killed
    ├── WorkspaceRefused    a workspace input names a directory the run may not use
    ├── BranchRefused       publishing would move a branch this run did not create
    ├── NoRunReachedTest    a hunt's first batch of runs never reached the test
    └── ConsistentlyFailing a hunted test failed on every run: not flaky

Each module imports the errors it raises from here; the tree is the whole list.
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


class UsageError(ConfigError):
    """A command's arguments do not fit its usage: exit status 2, as for a usage error."""

    exit_code = 2


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


class SandboxUnavailable(UserError):
    """The chosen backend cannot run on this machine."""


class LedgerError(OrchestratorError):
    pass


class LedgerConflict(LedgerError):
    pass


class LedgerCorrupt(LedgerError):
    pass


class SigningError(OrchestratorError):
    """A key is missing or malformed, or a signature does not verify."""


class StorageError(OrchestratorError):
    """An object store could not be reached, or refused or failed an operation."""


class ObjectMissing(StorageError):
    """There is no object under the key."""

    def __init__(self, key: str, store: str) -> None:
        self.key, self.store = key, store
        super().__init__(f"object {key!r} is missing from {store}")


class CorruptObject(StorageError):
    """An object's content does not match the digest it is stored under."""

    def __init__(self, key: str, store: str, problem: str) -> None:
        self.key, self.store = key, store
        super().__init__(f"object {key!r} in {store} is corrupt: {problem}")


class CheckpointError(OrchestratorError):
    """A checkpoint could not be written or does not verify."""


class SnapshotError(OrchestratorError):
    """A snapshot could not be taken, read or restored."""


class CorruptChunk(SnapshotError):
    """A stored chunk is missing or does not hash to its digest."""

    def __init__(self, digest: str, problem: str) -> None:
        self.digest = digest
        super().__init__(f"chunk {digest} {problem}")


class UnsafeSnapshot(SnapshotError):
    """A manifest that is malformed or could write outside the workspace on restore."""


class GcRefused(OrchestratorError):
    """Garbage collection stopped before deleting anything: it could not know for sure
    what is referenced (an unreadable manifest or snapshot), or the store is in use."""


class SandboxError(OrchestratorError):
    """A sandbox failed to start or broke down."""


class WorkspaceError(OrchestratorError):
    """A workspace could not be set up, mounted, unmounted or removed."""


class DiskError(WorkspaceError):
    """A disk image could not be made, mounted, unmounted or removed."""


class CgroupError(OrchestratorError):
    """A cgroup could not be found, created, configured, joined, emptied or removed."""


class ProviderError(OrchestratorError):
    """A model call failed after the SDK's own retries.

    The message names the provider, the HTTP status (when there was a response) and the
    server's own error message; API keys are redacted from it before it is built.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.provider = provider
        self.status_code = status_code
        self.request_id = request_id
        super().__init__(message)


class GitHubError(OrchestratorError):
    """GitHub refused or could not be reached. ``status`` is the HTTP status (``None``
    when no answer came); ``message`` is GitHub's own message, if it sent one."""

    def __init__(self, text: str, *, status: int | None = None, message: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.message = message


class NodeError(OrchestratorError):
    pass


class TransientError(NodeError):
    """A failure likely to pass if tried again as is: the network, a busy service. Retry
    policies name it (``Retry(on=TransientError)``) so that a deterministic failure,
    such as a repository that does not exist, is not tried again."""


class EffectFailed(NodeError):
    """An effect raised. Carries the original exception's type name and message."""

    def __init__(self, effect: str, type_name: str, message: str, classes: list[str]) -> None:
        self.effect = effect
        self.type_name = type_name
        self.classes = classes
        super().__init__(f"{effect} effect failed: {type_name}: {message}")


class TransientEffectFailed(EffectFailed, TransientError):
    """An effect raised a :class:`TransientError`: retryable like one."""


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


class ExecFailed(NodeError):
    """``ctx.exec(..., check=True)`` saw a non-zero exit."""


class SandboxLimitExceeded(NodeError):
    """A resource limit was hit; the sandbox's processes were killed."""

    def __init__(self, limit: str, detail: str) -> None:
        self.limit = limit
        super().__init__(f"{limit} limit exceeded: {detail}")


class WorkspaceRefused(NodeError):
    """A node's workspace input names a directory the run may not work on."""


class BranchRefused(NodeError):
    """Publishing would move a branch that exists and that this run did not create (it
    may be a person's work): nothing was written. Never retried."""


class BudgetExceeded(NodeError):
    """A node used up its allowance (its sandbox was stopped), or a model call was refused
    before it was sent because its maximum cost does not fit. ``over`` names the
    dimensions; ``used_up``: what the attempt already used leaves no room, so a fresh
    allowance lets it go on (the run aborts, resumable with a fresh budget) — otherwise
    the call alone asks for more than the node's allowance, which no budget mends."""

    def __init__(self, message: str, over: tuple[str, ...] = (), used_up: bool = False) -> None:
        super().__init__(message)
        self.over, self.used_up = over, used_up


class NoRunReachedTest(NodeError):
    """No run of a hunt's first batch reached the test (the command was not found, or the
    tests could not be collected); the message names the cause with an output excerpt."""


class ConsistentlyFailing(NodeError):
    """The test a hunt measured failed on every run: consistently failing, not flaky."""
