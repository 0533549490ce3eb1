"""Human gates: what a gated node holds, the signed decision a person makes, and the
checks a decision must pass before the runtime records it.

A decision binds (run, node, attempt, gate, digest of the held outputs and review,
approve or reject, comment, time, approver's key) under the approver's Ed25519
signature. The runtime accepts it only if the key is one of the gate's approvers in the
run's config, the node is parked at that gate in that attempt with that digest, it is not
dated in the future (beyond a small clock skew, by the run's clock), and the signature has
not been used before; anything else is refused and changes nothing.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator import signing
from orchestrator.clock import iso, parse_iso
from orchestrator.codec import canonical_bytes, digest
from orchestrator.errors import DecisionRefused, GateRejected
from orchestrator.ids import NodeId
from orchestrator.ledger.events import Decision as DecisionKind
from orchestrator.ledger.events import ErrorInfo, GateDecided, GateParked
from orchestrator.ledger.state import NodeState, RunState

REVIEW_PORT = "diff"
CLOCK_SKEW = timedelta(minutes=5)  # how far ahead of the run's clock a decision may be dated


def review_of(outputs: dict[str, Any]) -> str:
    """What a person reviews: the node's ``diff`` output, or else all its outputs."""
    diff = outputs.get(REVIEW_PORT)
    if isinstance(diff, str):
        return diff
    return json.dumps(outputs, indent=2, sort_keys=True, ensure_ascii=False)


def held_digest(outputs: dict[str, Any], review: str) -> str:
    return digest({"outputs": outputs, "review": review})


def rejection(comment: str) -> ErrorInfo:
    """The error a rejected attempt ends with (retried if its retry policy allows)."""
    return ErrorInfo.of(GateRejected(comment or "rejected without a comment"))


class Decision(BaseModel):
    """A person's signed decision on one parked gate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    node: str
    attempt: int
    gate: str
    digest: str
    decision: DecisionKind
    comment: str = ""
    decided_at: str
    approver: str
    signature: str = ""
    redo: str | None = None
    """A rejection's upstream node to send the work back to (it and what depends on it
    run again, the comment in its ``ctx.feedback``)."""

    def payload(self) -> bytes:
        """The bytes the signature covers: every field but the signature (and ``redo``
        only when set, so decisions signed before it existed still verify)."""
        leave_out = {"signature"} if self.redo is not None else {"signature", "redo"}
        return canonical_bytes(self.model_dump(mode="json", exclude=leave_out))

    def signed_by(self, signer: signing.Signer) -> Decision:
        unsigned = self.model_copy(update={"approver": signer.public, "signature": ""})
        return unsigned.model_copy(update={"signature": signer.sign(unsigned.payload())})

    def event_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"run_id"})


def decide(
    state: RunState,
    gate: str,
    approve: bool,
    comment: str,
    signer: signing.Signer,
    now: datetime,
    node: str | None = None,
    redo: str | None = None,
) -> list[Decision]:
    """Sign a decision for each node parked at ``gate`` (or just ``node``); a rejection
    may send the work back to the upstream node ``redo``."""
    decisions = []
    for ns in held_at(state, gate, node):
        held = ns.held
        assert held is not None
        unsigned = Decision(
            run_id=state.run_id,
            node=ns.id,
            attempt=ns.attempt,
            gate=gate,
            digest=held.digest,
            decision="approve" if approve else "reject",
            comment=comment,
            decided_at=iso(now),
            approver=signer.public,
            redo=redo,
        )
        decisions.append(unsigned.signed_by(signer))
    return decisions


def check(state: RunState, decision: Decision, now: datetime) -> None:
    """Refuse (DecisionRefused) a decision the run must not accept; return if it may.
    ``now`` is the run's clock."""
    d = decision
    if d.run_id != state.run_id:
        raise DecisionRefused(f"this decision is for run {d.run_id}, not {state.run_id}")
    if not signing.verify(d.approver, d.payload(), d.signature):
        raise DecisionRefused(
            f"the decision on gate {d.gate!r} of run {d.run_id} does not verify against the "
            f"key {d.approver[:16]}… that claims to have signed it; it is forged or altered"
        )
    approvers: list[str] = state.config.get("approvers", {}).get(d.gate, [])
    gates = gates_of(state)
    if d.gate not in gates:
        known = ", ".join(sorted(gates)) or "none"
        raise DecisionRefused(f"run {state.run_id} has no gate {d.gate!r} (its gates: {known})")
    if d.approver not in approvers:
        raise DecisionRefused(
            f"key {d.approver[:16]}… is not an approver of gate {d.gate!r} in run "
            f"{state.run_id}; its approvers are {', '.join(a[:16] + '…' for a in approvers)}"
        )
    if d.signature in state.decisions_seen:
        raise DecisionRefused(
            f"this decision on gate {d.gate!r} (node {d.node}, attempt {d.attempt}) was "
            "already recorded; a decision counts once and cannot be replayed"
        )
    ns = state.nodes.get(d.node)
    held = ns.held if ns is not None else None
    if ns is None or held is None or ns.status != "awaiting" or held.gate != d.gate:
        raise DecisionRefused(_nothing_waiting(state, d.gate, d.node))
    if ns.attempt != d.attempt:
        raise DecisionRefused(
            f"this decision is for attempt {d.attempt} of node {d.node}, but attempt "
            f"{ns.attempt} is the one waiting at gate {d.gate!r}; sign a new decision"
        )
    if held.digest != d.digest:
        raise DecisionRefused(
            f"this decision was signed for outputs with digest {d.digest[:16]}…, but node "
            f"{d.node} holds outputs with digest {held.digest[:16]}…; review them again"
        )
    if parse_iso(d.decided_at) < parse_iso(held.ts):
        raise DecisionRefused(
            f"this decision is dated {d.decided_at}, before node {d.node} parked at gate "
            f"{d.gate!r} ({held.ts}); it cannot be about these outputs"
        )
    if d.redo is not None:
        redo_problem = _redo_problem(state, d)
        if redo_problem:
            raise DecisionRefused(redo_problem)
    if parse_iso(d.decided_at) > now + CLOCK_SKEW:
        raise DecisionRefused(
            f"this decision on gate {d.gate!r} (node {d.node}) is dated {d.decided_at}, more "
            f"than {CLOCK_SKEW.seconds // 60} minutes after now ({iso(now)} by the run's "
            "clock); a decision cannot be made in the future. Check the clock of the machine "
            "that signed it and sign a new decision"
        )


def redo_set(state: RunState, decision: Decision | GateDecided) -> list[str]:
    """What a rejection with ``redo`` sends back: that node, then every node downstream
    of it (the rejected one among them)."""
    assert decision.redo is not None
    return state.downstream(decision.redo)


def _redo_problem(state: RunState, d: Decision) -> str:
    """Why a rejection may not send the work back to ``d.redo`` ("" if it may)."""
    target = state.nodes.get(d.redo or "")
    if d.decision != "reject":
        return f"--redo {d.redo} goes with a rejection: an approval sends nothing back"
    if target is None or target.index is not None:
        return f"--redo {d.redo}: run {state.run_id} has no such node (a mapped item cannot be)"
    downstream = state.downstream(target.id)
    if d.node not in downstream or d.node == target.id:
        return (
            f"--redo {d.redo}: {d.node} does not depend on it; name a node upstream of "
            f"{d.node} (or reject without --redo to retry {d.node} itself)"
        )
    if target.status != "succeeded":
        return f"--redo {d.redo}: it has not succeeded (it is {target.status})"
    for node_id in downstream:
        ns = state.nodes[node_id]
        if ns.index is not None or ns.placeholder:
            return (
                f"--redo {d.redo}: {node_id} downstream of it is mapped; redo does not cross maps"
            )
        if node_id != d.node and ns.status in ("running", "retrying", "awaiting"):
            return f"--redo {d.redo}: {node_id} downstream of it is {ns.status}; decide later"
    return ""


def verify_recorded(state: RunState, event: GateDecided) -> bool:
    """Whether a recorded decision's signature holds (replay and audits check this)."""
    decision = Decision(run_id=state.run_id, **event.model_dump(exclude={"kind", "seq", "ts"}))
    return signing.verify(decision.approver, decision.payload(), decision.signature)


def gates_of(state: RunState) -> set[str]:
    specs: dict[str, Any] = state.plan["specs"]
    return {
        specs[desc["spec"]]["gate"]
        for desc in state.plan["nodes"].values()
        if specs[desc["spec"]].get("gate")
    }


def awaiting_at(state: RunState, gate: str) -> list[NodeState]:
    return [ns for ns in state.awaiting() if ns.held is not None and ns.held.gate == gate]


def held_at(state: RunState, gate: str, node: str | None = None) -> list[NodeState]:
    """The nodes parked at ``gate`` (or just ``node``); DecisionRefused, naming the run's
    gates and what waits where, when there are none."""
    waiting = [ns for ns in awaiting_at(state, gate) if node is None or ns.id == node]
    if not waiting:
        raise DecisionRefused(_nothing_waiting(state, gate, node))
    return waiting


def approve_command(
    run_id: str, held: GateParked, reject: bool = False, where: Sequence[str] = ()
) -> str:
    """The command that decides ``held``; ``where``: the global options that find the run
    from any directory (``Runtime.where()``)."""
    parts = ["orchestrator", *where, "approve", run_id, held.gate]
    if NodeId.parse(held.node).index is not None:
        parts += ["--node", held.node]
    if reject:
        parts += ["--reject", "--comment", "WHY"]
    return shlex.join(parts)


def _nothing_waiting(state: RunState, gate: str, node: str | None) -> str:
    gates = gates_of(state)
    if gate not in gates:
        known = ", ".join(sorted(gates)) or "none"
        return f"run {state.run_id} has no gate {gate!r} (its gates: {known})"
    waiting = [f"{ns.id} at {ns.held.gate}" for ns in state.awaiting() if ns.held is not None]
    where = f"node {node} is not" if node else "no node is"
    return (
        f"{where} waiting at gate {gate!r} in run {state.run_id} (status {state.status}; "
        f"waiting: {', '.join(waiting) or 'nothing'})"
    )
