"""RunState: a pure fold over a run's ledger events.

Status, the scheduler, resume and replay all read this same fold; nothing about a run
lives only in memory. The fold needs no plan file: RunStarted carries the plan's
canonical description (nodes, wiring, maps), which is all the graph logic needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.budget import BudgetBook
from orchestrator.errors import LedgerCorrupt
from orchestrator.ids import NodeId, Ref
from orchestrator.ledger.events import (
    BaseEvent,
    BudgetOverrun,
    BudgetRefused,
    BudgetReplaced,
    BudgetReserved,
    CheckpointFailed,
    CheckpointTaken,
    EffectRecorded,
    ErrorInfo,
    Event,
    FailureCause,
    GateDecided,
    GateParked,
    NodeDispatched,
    NodeFailed,
    NodeResumed,
    NodesReset,
    NodeSucceeded,
    NoticeDelivered,
    PauseRequested,
    PlanSourceRecorded,
    ReceiptIssued,
    RetryScheduled,
    RunAborted,
    RunCompleted,
    RunParked,
    RunResumed,
    RunStarted,
    SandboxMetered,
    WorkspaceSaved,
)

NodeStatus = Literal["pending", "running", "retrying", "awaiting", "succeeded", "failed"]
RunStatus = Literal["running", "pausing", "parked", "aborting", "aborted", "succeeded", "failed"]
TERMINAL_RUN: frozenset[str] = frozenset({"succeeded", "failed"})


@dataclass
class NodeState:
    """One node instance (a plain node, or one item of a mapped node)."""

    id: str
    base: str
    index: int | None = None
    status: NodeStatus = "pending"
    attempt: int = 0
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    code_digest: str | None = None
    journal: list[EffectRecorded] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    saved: tuple[int, str | None] = (0, None)
    """The latest known workspace state of the current attempt: (journal index, snapshot
    id), where None is the attempt's initial workspace."""
    not_before: str | None = None
    error: ErrorInfo | None = None
    cause: FailureCause | None = None
    dispatched_at: str | None = None
    finished_at: str | None = None
    placeholder: bool = False
    defect: str | None = None
    compute_h: float = 0.0
    held: GateParked | None = None
    feedback: list[str] = field(default_factory=list)
    overran: bool = False
    """The current attempt used up its allowance; its next life starts a fresh one."""
    allowance_from: int = 0
    """The journal index from which model calls count against the attempt's allowance
    (where its latest fresh allowance began)."""


@dataclass
class RunState:
    """Everything known about a run, derived from its events and nothing else."""

    run_id: str
    plan_ref: str
    plan_digest: str
    plan: dict[str, Any]
    inputs: dict[str, Any]
    config: dict[str, Any]
    seed: int
    started_at: str
    status: RunStatus = "running"
    updated_at: str = ""
    head_seq: int = 0
    nodes: dict[str, NodeState] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    doomed: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointTaken | None = None
    unsynced: CheckpointFailed | None = None  # the latest failure, until a checkpoint succeeds
    book: BudgetBook = field(default_factory=lambda: BudgetBook.from_config({}))
    last_gate: dict[str, Any] | None = None
    decisions_seen: set[str] = field(default_factory=set)
    refused: BudgetRefused | BudgetOverrun | None = None
    """Why the run is aborting: the first refusal or overrun since the last envelope."""
    receipts: list[ReceiptIssued] = field(default_factory=list)
    notices_ok: set[str] = field(default_factory=set)
    source: PlanSourceRecorded | None = None
    """The plan source stored when the run started (None for runs that stored none)."""
    _deps: dict[str, set[str]] = field(default_factory=dict)
    _dependents: dict[str, set[str]] = field(default_factory=dict)

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def start(cls, event: RunStarted) -> RunState:
        state = cls(
            run_id=event.run_id,
            plan_ref=event.plan_ref,
            plan_digest=event.plan_digest,
            plan=event.plan,
            inputs=event.inputs,
            config=event.config,
            seed=event.seed,
            started_at=event.ts,
            updated_at=event.ts,
            head_seq=event.seq,
            book=BudgetBook.from_config(event.config),
        )
        nodes: dict[str, Any] = event.plan["nodes"]
        for base, desc in nodes.items():
            deps = {Ref.parse(w["ref"]).node for w in desc["wiring"].values() if "ref" in w}
            if desc["map"] is not None:
                deps.add(Ref.parse(desc["map"]["over"]).node)
                state.nodes[base] = NodeState(base, base, placeholder=True)
            else:
                state.nodes[base] = NodeState(base, base)
            state.groups[base] = [base]
            state._deps[base] = deps & nodes.keys()
            for dep in state._deps[base]:
                state._dependents.setdefault(dep, set()).add(base)
        for base in nodes:
            if not state._deps[base] and state.nodes[base].placeholder is False:
                state.ready.add(base)
        return state

    @classmethod
    def fold(cls, events: Iterable[Event]) -> RunState:
        """Fold a run's events, first to last, into its state. Events that do not fit the
        run (a node it does not have, say: a damaged ledger) raise :class:`LedgerCorrupt`."""
        it = iter(events)
        first = next(it, None)
        if not isinstance(first, RunStarted):
            raise ValueError("a run's ledger must begin with RunStarted")
        state = cls.start(first)
        for event in it:
            try:
                state.apply(event)
            except (KeyError, IndexError, TypeError, AttributeError) as exc:
                raise LedgerCorrupt(
                    f"run {state.run_id}: event {event.seq} ({event.kind}) does not fit the "
                    f"run ({type(exc).__name__}: {exc}); the ledger is damaged — check it "
                    f"with `orchestrator ledger verify {state.run_id}`"
                ) from exc
        return state

    # ---- the fold ---------------------------------------------------------------------

    def apply(self, event: BaseEvent) -> None:
        """Advance the state by one event."""
        self.head_seq = event.seq
        self.updated_at = event.ts
        if isinstance(event, EffectRecorded):
            self.nodes[event.node].journal.append(event)
            if event.effect == "llm" and event.usage:
                self.book.charge_llm(event.node, _model_of(event), event.usage)
        elif isinstance(event, NodeDispatched):
            ns = self.nodes[event.node]
            ns.status, ns.attempt, ns.inputs = "running", event.attempt, event.inputs
            ns.code_digest, ns.journal, ns.resumed_from = event.code_digest, [], []
            ns.saved = (0, None)
            ns.overran, ns.allowance_from = False, 0
            ns.dispatched_at, ns.not_before = event.ts, None
            self.ready.discard(event.node)
            self.book.dispatched(event.node)
        elif isinstance(event, BudgetReserved):
            self.book.reserve(event.node, event.amount)
        elif isinstance(event, NodeSucceeded):
            ns = self.nodes[event.node]
            ns.status, ns.outputs, ns.finished_at = "succeeded", event.outputs, event.ts
            ns.held = None
            self.book.release(event.node)
            self._settled(ns.base)
        elif isinstance(event, GateParked):
            ns = self.nodes[event.node]
            ns.status, ns.held = "awaiting", event
            self.book.release(event.node)
        elif isinstance(event, GateDecided):
            self.decisions_seen.add(event.signature)
            if event.decision == "approve":
                self.last_gate = {
                    "node": event.node,
                    "attempt": event.attempt,
                    "gate": event.gate,
                    "digest": event.digest,
                    "approver": event.approver,
                    "at": event.ts,
                }
            else:
                self.nodes[event.node].feedback.append(event.comment)
        elif isinstance(event, NodesReset):
            for node_id in event.reset:
                ns = self.nodes[node_id]
                ns.status, ns.outputs, ns.held, ns.error, ns.cause = (
                    "pending",
                    None,
                    None,
                    None,
                    None,
                )
                ns.finished_at = ns.not_before = None
                self.ready.discard(node_id)
                self.doomed.pop(node_id, None)
            self.nodes[event.node].feedback.append(event.comment)
            for node_id in event.reset:
                self._evaluate(node_id)
        elif isinstance(event, NodeFailed):
            self.book.release(event.node)
            ns = self.nodes[event.node]
            ns.status, ns.error, ns.cause, ns.finished_at = (
                "failed",
                event.reason,
                event.cause,
                event.ts,
            )
            self.ready.discard(event.node)
            self.doomed.pop(event.node, None)
            self._settled(ns.base)
        elif isinstance(event, RetryScheduled):
            self.book.release(event.node)
            ns = self.nodes[event.node]
            ns.status, ns.error, ns.not_before = "retrying", event.reason, event.not_before
        elif isinstance(event, NodeResumed):
            ns = self.nodes[event.node]
            ns.journal = ns.journal[: event.from_index]  # the rest is performed again
            ns.resumed_from.append(event.from_index)
            ns.saved = (event.from_index, event.snapshot)  # what the workspace is reset to
            if ns.overran:  # this life has a fresh allowance
                ns.overran, ns.allowance_from = False, event.from_index
                self.book.renew(event.node)
        elif isinstance(event, WorkspaceSaved):
            ns = self.nodes[event.node]
            if ns.attempt == event.attempt:
                ns.saved = (event.index, event.snapshot)
        elif isinstance(event, CheckpointTaken):
            self.checkpoint, self.unsynced = event, None
        elif isinstance(event, CheckpointFailed):
            self.unsynced = event
        elif isinstance(event, SandboxMetered):
            self.nodes[event.node].compute_h += event.wall_s * event.vcpus / 3600
            sandbox = f"{event.node}#{event.attempt}@{event.backend}"
            self.book.charge_compute(event.node, sandbox, event.wall_s, event.vcpus)
        elif isinstance(event, BudgetRefused):
            self.status, self.refused = "aborting", event
        elif isinstance(event, BudgetOverrun):
            self.nodes[event.node].overran = True
            self.book.release(event.node)
            self.status, self.refused = "aborting", self.refused or event
        elif isinstance(event, BudgetReplaced):
            self.book.replace(event.ceiling)
            self.refused = None
        elif isinstance(event, RunAborted):
            self.status = "aborted"
        elif isinstance(event, ReceiptIssued):
            self.receipts.append(event)
        elif isinstance(event, NoticeDelivered):
            if event.ok:
                self.notices_ok.add(event.notice)
        elif isinstance(event, PauseRequested):
            self.status = "pausing"
        elif isinstance(event, RunParked):
            self.status = "parked"
        elif isinstance(event, RunResumed):
            self.status = "running"
        elif isinstance(event, RunCompleted):
            self.status, self.summary = event.status, event.summary
        elif isinstance(event, PlanSourceRecorded):
            self.source = event
        elif isinstance(event, RunStarted):
            raise ValueError("RunStarted may only begin a ledger")

    def _settled(self, base: str) -> None:
        """A node of ``base`` reached a terminal state: expand maps, re-check dependents."""
        for dependent in self._dependents.get(base, ()):
            desc = self.plan["nodes"][dependent]
            if desc["map"] is not None and Ref.parse(desc["map"]["over"]).node == base:
                self._expand(dependent, desc["map"])
            for instance in self.groups[dependent]:
                self._evaluate(instance)

    def _expand(self, base: str, spec: dict[str, Any]) -> None:
        holder = self.nodes[base]
        if (
            not holder.placeholder
            or holder.status != "pending"
            or not self._complete(Ref.parse(spec["over"]).node)
        ):
            return
        items = self.value_of(Ref.parse(spec["over"]))
        if not isinstance(items, list):
            holder.defect = f"map source {spec['over']} is not a list at run time"
            return
        if len(items) > spec["max"]:
            holder.defect = f"map over {len(items)} items exceeds max_items {spec['max']}"
            return
        del self.nodes[base]
        self.ready.discard(base)
        ids = [str(NodeId(base, i)) for i in range(len(items))]
        for i, instance in enumerate(ids):
            self.nodes[instance] = NodeState(instance, base, index=i)
        self.groups[base] = ids
        for dependent in self._dependents.get(base, ()):
            for instance in self.groups[dependent]:
                self._evaluate(instance)

    def _complete(self, base: str) -> bool:
        return all(
            self.nodes[i].status == "succeeded" and not self.nodes[i].placeholder
            for i in self.groups[base]
        )

    def _evaluate(self, instance: str) -> None:
        ns = self.nodes.get(instance)
        if ns is None or ns.status != "pending":
            return
        for dep in self._deps[ns.base]:
            for member in self.groups[dep]:
                if self.nodes[member].status == "failed":
                    self.doomed[instance] = dep
                    self.ready.discard(instance)
                    return
        if all(self._complete(dep) for dep in self._deps[ns.base]) and (
            not ns.placeholder or ns.defect is not None
        ):
            self.ready.add(instance)

    # ---- queries ----------------------------------------------------------------------

    def downstream(self, node_id: str) -> list[str]:
        """``node_id``, then every node instance that depends on it, directly or not."""
        base = self.nodes[node_id].base
        bases, frontier = {base}, [base]
        while frontier:
            for dependent in self._dependents.get(frontier.pop(), ()):
                if dependent not in bases:
                    bases.add(dependent)
                    frontier.append(dependent)
        below = sorted(i for b in bases - {base} for i in self.groups[b])
        return [node_id, *below]

    def value_of(self, ref: Ref) -> Any:
        """What a ref delivers: one output, or the list of a mapped node's items' outputs."""
        desc = self.plan["nodes"][ref.node]
        if desc["map"] is None:
            outputs = self.nodes[ref.node].outputs
            assert outputs is not None
            return outputs[ref.port]
        return [self.nodes[i].outputs[ref.port] for i in self.groups[ref.node]]  # type: ignore[index]

    def inputs_for(self, instance: str) -> dict[str, Any]:
        """The inputs a ready node instance is dispatched with."""
        ns = self.nodes[instance]
        desc = self.plan["nodes"][ns.base]
        inputs: dict[str, Any] = {}
        for port, wire in desc["wiring"].items():
            if "ref" in wire:
                inputs[port] = self.value_of(Ref.parse(wire["ref"]))
            elif "input" in wire:
                inputs[port] = self.inputs.get(wire["input"])
            else:
                inputs[port] = wire["const"]
        if desc["map"] is not None and ns.index is not None:
            inputs[desc["map"]["item"]] = self.value_of(Ref.parse(desc["map"]["over"]))[ns.index]
        return inputs

    def in_flight(self) -> list[NodeState]:
        return [ns for ns in self.nodes.values() if ns.status == "running"]

    def retrying(self) -> list[NodeState]:
        return [ns for ns in self.nodes.values() if ns.status == "retrying"]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(
            ("pending", "running", "retrying", "awaiting", "succeeded", "failed"), 0
        )
        for ns in self.nodes.values():
            out[ns.status] += 1
        return out

    def awaiting(self) -> list[NodeState]:
        """Nodes whose outputs are held at a gate, waiting for a decision."""
        return [ns for ns in self.nodes.values() if ns.status == "awaiting"]

    def unfinished(self) -> bool:
        return any(ns.status not in ("succeeded", "failed") for ns in self.nodes.values())

    def outputs(self) -> dict[str, dict[str, Any] | None]:
        return {k: ns.outputs for k, ns in self.nodes.items()}


def _model_of(event: EffectRecorded) -> str:
    """The model a journaled call was answered by (as the provider reported it)."""
    response = event.response
    if isinstance(response, dict) and isinstance(response.get("ok"), dict):
        model = response["ok"].get("model")
        if isinstance(model, str):
            return model
    return str(event.request.get("model", "unknown")) if isinstance(event.request, dict) else "?"
