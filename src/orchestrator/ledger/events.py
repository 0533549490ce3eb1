"""The typed events of a run's ledger.

Every event carries its ``kind`` (the union's discriminator), its position ``seq`` in the
run's chain and the time ``ts`` it was recorded (ISO-8601 UTC). Events are immutable; a
run's whole history is the ordered list of them, and everything else is a fold.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from orchestrator.budget import Budget
from orchestrator.codec import canonical_bytes
from orchestrator.errors import LedgerCorrupt

FailureCause = Literal[
    "error", "timeout", "upstream", "retries_exhausted", "map_too_large", "rejected"
]
Decision = Literal["approve", "reject"]


class ErrorInfo(BaseModel):
    """An exception as recorded: its type, message and the names of its classes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str
    classes: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        names = [c.__name__ for c in type(exc).__mro__ if c not in (object, BaseException)]
        return cls(type=type(exc).__name__, message=str(exc), classes=names)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


class BaseEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    seq: int
    ts: str


class RunStarted(BaseEvent):
    kind: Literal["RunStarted"] = "RunStarted"
    run_id: str
    plan_ref: str
    plan_digest: str
    plan: dict[str, Any]
    inputs: dict[str, Any]
    config: dict[str, Any]
    seed: int


class PlanSourceRecorded(BaseEvent):
    """The plan module's source as the run started: its file name and sha256, the text
    stored under the run in its object store (``replay --recorded`` loads it)."""

    kind: Literal["PlanSourceRecorded"] = "PlanSourceRecorded"
    path: str
    digest: str


class NodeDispatched(BaseEvent):
    kind: Literal["NodeDispatched"] = "NodeDispatched"
    node: str
    attempt: int
    code_digest: str
    inputs: dict[str, Any]


class EffectRecorded(BaseEvent):
    kind: Literal["EffectRecorded"] = "EffectRecorded"
    node: str
    attempt: int
    index: int
    effect: str
    key: str
    request: Any
    request_digest: str
    response: Any
    usage: dict[str, float] = Field(default_factory=dict)


class NodeResumed(BaseEvent):
    """An in-flight attempt goes on in a new process: its journal is served up to
    ``from_index`` and what follows is performed again live. ``snapshot`` names the
    workspace snapshot restored first, if any."""

    kind: Literal["NodeResumed"] = "NodeResumed"
    node: str
    attempt: int
    from_index: int
    snapshot: str | None = None


class WorkspaceSaved(BaseEvent):
    """The attempt's workspace as it stood when its journal held ``index`` effects was
    saved as ``snapshot`` (content-addressed, in the run's chunk store). A resume
    restores the latest such point and serves the journal from there, so journaled
    effects are not performed again."""

    kind: Literal["WorkspaceSaved"] = "WorkspaceSaved"
    node: str
    attempt: int
    index: int
    snapshot: str


class RetryScheduled(BaseEvent):
    kind: Literal["RetryScheduled"] = "RetryScheduled"
    node: str
    attempt: int
    next_attempt: int
    reason: ErrorInfo
    delay: float
    not_before: str


class NodeSucceeded(BaseEvent):
    kind: Literal["NodeSucceeded"] = "NodeSucceeded"
    node: str
    attempt: int
    outputs: dict[str, Any]


class NodeFailed(BaseEvent):
    kind: Literal["NodeFailed"] = "NodeFailed"
    node: str
    attempt: int
    cause: FailureCause
    reason: ErrorInfo


class CheckpointTaken(BaseEvent):
    """A signed checkpoint of the run up to ``cut`` was written to object storage."""

    kind: Literal["CheckpointTaken"] = "CheckpointTaken"
    label: str
    reason: str
    cut: int
    manifest: str
    digest: str
    workspaces: int
    pause_ms: float


class CheckpointFailed(BaseEvent):
    """A checkpoint could not be written (the object store was unreachable, say); the
    next one, ``retry_in`` seconds later at the earliest, covers everything since the
    last good one."""

    kind: Literal["CheckpointFailed"] = "CheckpointFailed"
    label: str
    reason: str
    error: str
    failures: int
    retry_in: float


class SandboxChosen(BaseEvent):
    """Which sandbox backend the run's nodes use, and why (recorded on first use)."""

    kind: Literal["SandboxChosen"] = "SandboxChosen"
    backend: str
    reason: str


class SandboxMetered(BaseEvent):
    """Compute one attempt's sandbox used: wall-clock x vCPUs is what budgets charge."""

    kind: Literal["SandboxMetered"] = "SandboxMetered"
    node: str
    attempt: int
    backend: str
    wall_s: float
    vcpus: float
    cpu_s: float


class GateParked(BaseEvent):
    """A gated node finished: its outputs are held until a person decides on them.

    ``review`` is what the person sees (the node's diff or declared review payload);
    ``digest`` binds outputs and review, and every decision must name it."""

    kind: Literal["GateParked"] = "GateParked"
    node: str
    attempt: int
    gate: str
    outputs: dict[str, Any]
    review: str
    digest: str


class GateDecided(BaseEvent):
    """A signed decision on a parked gate, as verified and accepted by the runtime."""

    kind: Literal["GateDecided"] = "GateDecided"
    node: str
    attempt: int
    gate: str
    digest: str
    decision: Decision
    comment: str
    approver: str
    decided_at: str
    signature: str
    redo: str | None = None
    """A rejection that sends the work back to this upstream node (``--redo``)."""

    @model_serializer(mode="wrap")
    def _without_no_redo(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("redo") is None:
            data.pop("redo", None)  # the bytes of decisions recorded before --redo existed
        return data


class NodesReset(BaseEvent):
    """A rejection sent the work back to ``node``: it and everything downstream of it
    (``reset``, ``node`` first) are pending again, the comment in ``node``'s feedback."""

    kind: Literal["NodesReset"] = "NodesReset"
    node: str
    reset: list[str]
    comment: str


class BudgetReserved(BaseEvent):
    """The node's declared worst case was set aside from the run's envelope at dispatch."""

    kind: Literal["BudgetReserved"] = "BudgetReserved"
    node: str
    attempt: int
    amount: Budget


class BudgetRefused(BaseEvent):
    """A ready node's worst case does not fit what remains: it is not started, and the
    run drains and aborts."""

    kind: Literal["BudgetRefused"] = "BudgetRefused"
    node: str
    attempt: int
    needed: Budget
    remaining: Budget
    over: list[str]


class BudgetOverrun(BaseEvent):
    """A running attempt used up its own allowance (``over`` names the dimensions): it is
    stopped and stays in flight, and the run drains and aborts. Resumed with a fresh
    budget, the attempt goes on from its journal with a fresh reservation."""

    kind: Literal["BudgetOverrun"] = "BudgetOverrun"
    node: str
    attempt: int
    over: list[str]
    reason: ErrorInfo


class BudgetReplaced(BaseEvent):
    """A fresh envelope: usage counts against ``ceiling`` from here on."""

    kind: Literal["BudgetReplaced"] = "BudgetReplaced"
    ceiling: Budget | None
    source: str


class ReceiptIssued(BaseEvent):
    """A signed budget receipt (``body``) for the period since the previous one."""

    kind: Literal["ReceiptIssued"] = "ReceiptIssued"
    number: int
    body: dict[str, Any]
    signature: str
    key: str


class NoticeDelivered(BaseEvent):
    """The outcome of delivering a gate notice or receipt to one sink."""

    kind: Literal["NoticeDelivered"] = "NoticeDelivered"
    notice: str
    sink: str
    ok: bool
    attempts: int
    error: str | None = None


class RunAborted(BaseEvent):
    """The run stopped at its budget ceiling, or because a node used up its own
    allowance, after draining; resumable with a fresh envelope. ``signature`` is the run
    key's over :func:`abort_payload`."""

    kind: Literal["RunAborted"] = "RunAborted"
    reason: str
    last_gate: dict[str, Any] | None
    signature: str
    key: str


class PauseRequested(BaseEvent):
    kind: Literal["PauseRequested"] = "PauseRequested"
    source: str


class RunParked(BaseEvent):
    kind: Literal["RunParked"] = "RunParked"
    reason: str


class RunResumed(BaseEvent):
    kind: Literal["RunResumed"] = "RunResumed"
    reason: str


class RunCompleted(BaseEvent):
    kind: Literal["RunCompleted"] = "RunCompleted"
    status: Literal["succeeded", "failed"]
    summary: dict[str, Any]


Event = Annotated[
    RunStarted
    | PlanSourceRecorded
    | NodeDispatched
    | EffectRecorded
    | NodeResumed
    | WorkspaceSaved
    | RetryScheduled
    | NodeSucceeded
    | NodeFailed
    | CheckpointTaken
    | CheckpointFailed
    | SandboxChosen
    | SandboxMetered
    | GateParked
    | GateDecided
    | NodesReset
    | BudgetReserved
    | BudgetRefused
    | BudgetOverrun
    | BudgetReplaced
    | ReceiptIssued
    | NoticeDelivered
    | RunAborted
    | PauseRequested
    | RunParked
    | RunResumed
    | RunCompleted,
    Field(discriminator="kind"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

NODE_EVENTS = (
    NodeDispatched,
    EffectRecorded,
    NodeResumed,
    WorkspaceSaved,
    RetryScheduled,
    NodeSucceeded,
    NodeFailed,
    GateParked,
    GateDecided,
    NodesReset,
    BudgetReserved,
)


def encode(event: BaseEvent) -> bytes:
    """The canonical bytes of an event: what is hashed, stored and compared on replay."""
    return canonical_bytes(event.model_dump(mode="json"))


def decode(body: bytes) -> Event:
    """Parse stored canonical bytes back into a typed event; bytes that are not one raise
    LedgerCorrupt (the validation error is its ``__cause__``)."""
    try:
        return EVENT_ADAPTER.validate_json(body)
    except ValidationError as exc:
        raise LedgerCorrupt(
            f"a stored event does not decode ({str(exc).splitlines()[0]}); "
            "`orchestrator ledger verify RUN` names the first damaged event"
        ) from exc


def abort_payload(run_id: str, ts: str, reason: str, last_gate: dict[str, Any] | None) -> bytes:
    """The bytes a RunAborted's signature covers."""
    return canonical_bytes({"run_id": run_id, "at": ts, "reason": reason, "last_gate": last_gate})
