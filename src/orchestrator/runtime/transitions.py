"""What an attempt's outcome, or a run's end, leads to: pure decisions shared by the scheduler
and replay.

The scheduler stages the events a decision names; replay regenerates the same events from
the same decisions and compares them with the record. No I/O, no clock reads (times are
passed in), no asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator import gates
from orchestrator.clock import iso
from orchestrator.codec import digest
from orchestrator.ledger.events import ErrorInfo, FailureCause, NodeFailed, RunCompleted
from orchestrator.ledger.state import RunState
from orchestrator.node import Retry


def unit_random(seed: int, node: str, attempt: int) -> float:
    """A reproducible number in [0, 1) from the run's recorded seed (retry jitter)."""
    return int(digest([seed, node, attempt])[:13], 16) / 16**13


@dataclass(frozen=True, slots=True)
class Succeed:
    """The node succeeded with these outputs."""

    outputs: dict[str, Any]

    def event_fields(self, node: str, attempt: int) -> dict[str, Any]:
        """The NodeSucceeded fields."""
        return {"node": node, "attempt": attempt, "outputs": self.outputs}


@dataclass(frozen=True, slots=True)
class Park:
    """A gated node's outputs are held for a person's decision."""

    gate: str
    outputs: dict[str, Any]

    def event_fields(self, node: str, attempt: int) -> dict[str, Any]:
        """The GateParked fields: the outputs, their review and the digest a decision signs."""
        review = gates.review_of(self.outputs)
        digest = gates.held_digest(self.outputs, review)
        return {
            "node": node,
            "attempt": attempt,
            "gate": self.gate,
            "outputs": self.outputs,
            "review": review,
            "digest": digest,
        }


def after_success(gate: str | None, outputs: dict[str, Any]) -> Succeed | Park:
    """A body that returned valid outputs succeeds, or parks at its node's gate."""
    return Succeed(outputs) if gate is None else Park(gate, outputs)


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Run the node again after ``delay`` seconds; ``park``: not before the run is
    resumed (its policy gave up, and parks the run rather than fail it)."""

    reason: ErrorInfo
    delay: float
    park: bool = False

    def event_fields(self, node: str, attempt: int, now: datetime) -> dict[str, Any]:
        """The RetryScheduled fields (all but its timestamp) when decided at ``now``."""
        return {
            "node": node,
            "attempt": attempt,
            "next_attempt": attempt + 1,
            "reason": self.reason,
            "delay": self.delay,
            "not_before": iso(now + timedelta(seconds=self.delay)),
        }


@dataclass(frozen=True, slots=True)
class Fail:
    """The node failed for good."""

    cause: FailureCause
    reason: ErrorInfo

    def event_fields(self, node: str, attempt: int) -> dict[str, Any]:
        """The NodeFailed fields."""
        return {"node": node, "attempt": attempt, "cause": self.cause, "reason": self.reason}


def after_failure(
    retry: Retry, seed: int, node: str, attempt: int, error: ErrorInfo, cause: FailureCause
) -> RetryLater | Fail:
    """A failed attempt (an error, a timeout or a rejection, named by ``cause``) is retried
    if the node's policy retries its error class and attempts remain; else the node fails,
    with cause ``retries_exhausted`` once a retrying policy has run out, or, under a
    policy that parks, waits to run again once the run is resumed (a person's rejection
    is never parked: it fails as decided)."""
    retryable = retry.retries(error.classes)
    if retryable and attempt < retry.max_attempts:
        return RetryLater(error, retry.delay(attempt, unit_random(seed, node, attempt)))
    if retry.exhausted == "park" and cause != "rejected":
        return RetryLater(error, 0.0, park=True)
    if retryable and retry.max_attempts > 1:
        cause = "retries_exhausted"
    return Fail(cause, error)


def completion_events(state: RunState) -> list[tuple[Any, dict[str, Any]]]:
    """The events that end a run: unreachable nodes failed, then RunCompleted."""
    events: list[tuple[Any, dict[str, Any]]] = []
    failed = {
        k: f"{ns.cause}: {ns.error}" for k, ns in state.nodes.items() if ns.status == "failed"
    }
    for node_id, ns in state.nodes.items():
        if ns.status not in ("succeeded", "failed"):
            reason = ErrorInfo(type="Unreachable", message="its inputs can never be ready")
            fields = {"node": node_id, "attempt": ns.attempt, "cause": "upstream", "reason": reason}
            events.append((NodeFailed, fields))
            failed[node_id] = f"upstream: {reason}"
    summary = {
        "nodes": len(state.nodes),
        "succeeded": sum(ns.status == "succeeded" for ns in state.nodes.values()),
        "failed": dict(sorted(failed.items())),
        "outputs_digest": digest(state.outputs()),
    }
    events.append(
        (RunCompleted, {"status": "failed" if failed else "succeeded", "summary": summary})
    )
    return events
