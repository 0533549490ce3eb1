"""Byte-identical replay.

Replay walks the recorded ledger in order and regenerates each event from the current
code: at each NodeDispatched it checks the dispatch was legal (inputs ready) and runs the
node body once with every effect served from that attempt's journal, queuing the events
the body produces; each later recorded event of that attempt is compared, byte for byte,
with the regenerated one. Bookkeeping that no code produces (pause, park, resume marks)
is checked for consistency and carried over. Timestamps come from the recorded events.

Rejected alternative: re-running the scheduler against a fake clock. It would have to
re-race parallel nodes into the recorded interleaving; replaying per attempt in recorded
order gives the same guarantee without depending on scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import gates, receipts, signing
from orchestrator.clock import SystemClock, parse_iso
from orchestrator.codec import canonical_bytes
from orchestrator.errors import NonDeterminism
from orchestrator.ids import NodeId
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.ledger.events import (
    BaseEvent,
    BudgetOverrun,
    BudgetRefused,
    BudgetReplaced,
    BudgetReserved,
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
    PlanSourceRecorded,
    ReceiptIssued,
    RetryScheduled,
    RunAborted,
    RunCompleted,
    RunStarted,
    WorkspaceSaved,
    abort_payload,
    decode,
    encode,
)
from orchestrator.ledger.state import RunState
from orchestrator.ledger.store import StoredEvent
from orchestrator.plan import Plan
from orchestrator.runtime.attempts import allowance_for, outputs_of, run_body, site_for
from orchestrator.runtime.context import EffectFields, JournalExhausted, NodeContext
from orchestrator.runtime.fielddiff import field_diff
from orchestrator.runtime.llm import RunModels
from orchestrator.runtime.transitions import (
    Fail,
    Park,
    Succeed,
    after_failure,
    completion_events,
)


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first place where regenerated history differs from the record."""

    seq: int
    node: str | None
    attempt: int | None
    effect_index: int | None
    expected: str
    got: str
    diff: tuple[str, ...] = ()
    """One line per differing field, ``path: expected → got``, when both sides are events."""

    def __str__(self) -> str:
        where = f"node {self.node} attempt {self.attempt}" if self.node else "run"
        if self.effect_index is not None:
            where += f" effect #{self.effect_index}"
        text = f"at seq {self.seq}, {where}:\n  expected: {self.expected}\n  got:      {self.got}"
        if self.diff:
            text += "\n  differing fields (recorded → regenerated):"
            text += "".join(f"\n    {line}" for line in self.diff)
        return text


@dataclass
class ReplayReport:
    """What replay found: OK with the regenerated head hash, or the first divergence."""

    events: int
    head_hash: str
    code_changed: list[str] = field(default_factory=list)
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


@dataclass
class _Effect:
    """A regenerated EffectRecorded kept as plain data: encoding the fields directly costs
    far less than building a model per effect, and replay compares only the bytes."""

    fields: dict[str, Any]

    @property
    def body(self) -> bytes:
        return canonical_bytes(self.fields)


@dataclass(frozen=True, slots=True)
class _LifeRecord:
    """One life of an attempt as recorded: where its journal was served from, the journal
    it saw, and the allowance it had (whether the run had a ceiling when it began, and
    from which index its model calls counted: see ``NodeState.allowance_from``)."""

    start: int
    journal: list[EffectRecorded]
    reserved: bool
    counted_from: int


@dataclass
class _Life:
    """One process's run of an attempt's body: the effects it recorded, regenerated."""

    start: int
    queue: deque[BaseEvent | _Effect] = field(default_factory=deque)
    halted: bool = False
    error: NonDeterminism | None = None


@dataclass
class _Attempt:
    lives: list[_Life]
    current: int = 0

    @property
    def life(self) -> _Life:
        return self.lives[self.current]

    @property
    def halted(self) -> bool:
        return self.lives[-1].halted


class _Diverged(Exception):
    """Internal signal carrying the first divergence out of the walk."""

    def __init__(self, divergence: Divergence) -> None:
        self.divergence = divergence


def _describe(event: BaseEvent | _Effect | None) -> str:
    if event is None or isinstance(event, _Nothing):
        return "nothing (the body produced no such event)"
    if isinstance(event, _Effect):
        return f"{event.fields['effect']} {event.fields['request']!r}"
    if isinstance(event, EffectRecorded):
        return f"{event.effect} {event.request!r}"
    data = event.model_dump(mode="json", exclude={"seq", "ts", "kind"})
    return f"{event.kind} {_sorted(data)!r}"[:400]


def _sorted(value: Any) -> Any:
    """``value`` with every mapping's keys in order, so both sides print alike."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _fields(event: BaseEvent | _Effect) -> dict[str, Any] | None:
    """An event's fields as canonical JSON data; None for an event that is not there."""
    if isinstance(event, _Nothing):
        return None
    body = event.body if isinstance(event, _Effect) else encode(event)
    data: dict[str, Any] = json.loads(body)
    return data


class Replayer:
    """Regenerates one run's ledger from its plan's current code."""

    def __init__(
        self,
        plan: Plan,
        rows: Sequence[StoredEvent],
        decoded: Sequence[Event] | None = None,
        sources: Mapping[str, Plan] | None = None,
    ) -> None:
        self.plan = plan
        self.sources = dict(sources or {})
        self.rows = rows
        self.recorded = list(decoded) if decoded is not None else [decode(r.body) for r in rows]
        # An attempt resumed in a new process has one "life" per process: each life's body
        # saw the journal as it stood then (truncated at NodeResumed.from_index), with the
        # allowance it had then (fresh after the attempt used up its own).
        self.journals: dict[tuple[str, int], list[EffectRecorded]] = defaultdict(list)
        self.lives: dict[tuple[str, int], list[_LifeRecord]] = {}
        starts: dict[tuple[str, int], int] = defaultdict(int)
        allowances: dict[tuple[str, int], tuple[bool, int]] = {}
        overran: set[tuple[str, int]] = set()
        first = self.recorded[0] if self.recorded else None
        ceiling = isinstance(first, RunStarted) and first.config.get("budget") is not None
        for event in self.recorded:
            if isinstance(event, EffectRecorded):
                self.journals[(event.node, event.attempt)].append(event)
            elif isinstance(event, NodeDispatched):
                allowances[(event.node, event.attempt)] = (ceiling, 0)
            elif isinstance(event, BudgetReplaced):
                ceiling = event.ceiling is not None
            elif isinstance(event, BudgetOverrun):
                overran.add((event.node, event.attempt))
            elif isinstance(event, NodeResumed):
                key = (event.node, event.attempt)
                effective = self.journals[key]
                reserved, counted = allowances.get(key, (ceiling, 0))
                life = _LifeRecord(starts[key], list(effective), reserved, counted)
                self.lives.setdefault(key, []).append(life)
                self.journals[key] = effective[: event.from_index]
                starts[key] = event.from_index
                if key in overran:
                    overran.discard(key)
                    counted = event.from_index
                allowances[key] = (ceiling, counted)
        for key, effective in self.journals.items():
            reserved, counted = allowances.get(key, (ceiling, 0))
            life = _LifeRecord(starts[key], list(effective), reserved, counted)
            self.lives.setdefault(key, []).append(life)
        self.superseded = {
            (e.node, e.attempt)
            for e in self.recorded
            if isinstance(e, RetryScheduled) and e.reason.type == "CodeChanged"
        }
        self.attempts: dict[tuple[str, int], _Attempt] = {}
        self.outcomes: dict[tuple[str, int], dict[str, Any]] = {}
        self.rejected: dict[tuple[str, int], str] = {}
        self.last_decided: GateDecided | None = None
        self.state: RunState | None = None

    def code_changes(self) -> list[str]:
        """The nodes whose recorded code digest differs from the code replay runs."""
        changed: set[str] = set()
        plan = self.plan
        for event in self.recorded:
            if isinstance(event, PlanSourceRecorded):
                plan = self.sources.get(event.digest, plan)
            elif isinstance(event, NodeDispatched):
                base = NodeId.parse(event.node).base
                pn = plan.nodes.get(base)
                if pn is None or pn.spec.code_digest != event.code_digest:
                    changed.add(base)
        return sorted(changed)

    async def run(self) -> ReplayReport:
        head = GENESIS
        report = ReplayReport(
            events=len(self.recorded), head_hash=head, code_changed=self.code_changes()
        )
        try:
            for row, recorded in zip(self.rows, self.recorded, strict=True):
                regenerated = await self._regenerate(recorded)
                applied: BaseEvent
                if isinstance(regenerated, _Effect):
                    body, applied = regenerated.body, recorded  # equal bytes, equal event
                else:
                    body, applied = encode(regenerated), regenerated
                if body != row.body:
                    raise _Diverged(self._mismatch(recorded, regenerated))
                head = chain_hash(head, body)
                if self.state is None:
                    assert isinstance(applied, RunStarted)
                    self.state = RunState.start(applied)
                else:
                    self.state.apply(applied)
        except _Diverged as stop:
            report.divergence = stop.divergence
        report.head_hash = head
        return report

    def _mismatch(self, recorded: BaseEvent, regenerated: BaseEvent | _Effect) -> Divergence:
        node = getattr(recorded, "node", None)
        attempt = getattr(recorded, "attempt", None)
        index = recorded.index if isinstance(recorded, EffectRecorded) else None
        expected, got = _fields(recorded), _fields(regenerated)
        diff = () if expected is None or got is None else tuple(field_diff(expected, got))
        return Divergence(
            recorded.seq, node, attempt, index, _describe(recorded), _describe(regenerated), diff
        )

    async def _regenerate(self, rec: BaseEvent) -> BaseEvent | _Effect:
        stamp = {"seq": rec.seq, "ts": rec.ts}
        if isinstance(rec, RunStarted):
            # Code digests are reported separately (code_changed); what must match here is
            # the graph: nodes, wiring and maps.
            if self.plan.describe()["nodes"] != rec.plan["nodes"]:
                return rec.model_copy(update={"plan": self.plan.describe()})
            return rec
        state = self.state
        assert state is not None
        if isinstance(rec, PlanSourceRecorded):
            # With the run's stored sources, what runs from here on is the code stored here.
            self.plan = self.sources.get(rec.digest, self.plan)
            return rec
        if isinstance(rec, NodeDispatched):
            return await self._dispatch(rec, state)
        if isinstance(rec, EffectRecorded):
            return self._next_of(rec)
        if isinstance(rec, NodeSucceeded | RetryScheduled) or (
            isinstance(rec, NodeFailed) and rec.cause not in ("upstream", "map_too_large")
        ):
            return self._terminal(rec)
        if isinstance(rec, NodeFailed):
            return self._derived_failure(rec, state)
        if isinstance(rec, NodeResumed):
            return self._resumed(rec)
        if isinstance(rec, WorkspaceSaved):
            return self._saved(rec, state)
        if isinstance(rec, BudgetReserved):
            spec = self.plan.nodes[NodeId.parse(rec.node).base].spec
            return rec.model_copy(update={"amount": spec.budget})
        if isinstance(rec, BudgetRefused):
            return self._refused(rec, state)
        if isinstance(rec, BudgetOverrun):
            return self._overrun(rec, state)
        if isinstance(rec, GateParked):
            return self._parked(rec)
        if isinstance(rec, GateDecided):
            decided = self._decided(rec, state)
            self.last_decided = decided if isinstance(decided, GateDecided) else None
            return decided
        if isinstance(rec, NodesReset):
            return self._reset(rec, state)
        if isinstance(rec, ReceiptIssued):
            body = receipts.build(state, rec.number, rec.body["period"]["to"])
            return rec.model_copy(update={"body": body})
        if isinstance(rec, RunAborted):
            payload = abort_payload(state.run_id, rec.ts, rec.reason, rec.last_gate)
            if rec.last_gate != state.last_gate or not signing.verify(
                rec.key, payload, rec.signature
            ):
                return rec.model_copy(update={"last_gate": state.last_gate, "signature": "?"})
            return rec
        if isinstance(rec, RunCompleted):
            *_, (_, fields) = completion_events(state)
            return RunCompleted(**stamp, **fields)
        return rec

    async def _dispatch(self, rec: NodeDispatched, state: RunState) -> NodeDispatched:
        ns = state.nodes.get(rec.node)
        legal = ns is not None and (
            rec.attempt == ns.attempt + 1 and (rec.node in state.ready or ns.status == "retrying")
        )
        spec = self.plan.nodes[NodeId.parse(rec.node).base].spec
        over = state.book.admits(spec.budget)
        if ns is None or not legal or over:
            status = "absent" if ns is None else f"{ns.status} after attempt {ns.attempt}"
            if over:
                status += ", over budget (" + "; ".join(over) + ")"
            raise _Diverged(
                Divergence(
                    rec.seq,
                    rec.node,
                    rec.attempt,
                    None,
                    "a dispatch the plan allows here",
                    f"dispatch of a node that is {status}",
                )
            )
        # a ready node takes its inputs now (attempt 1, or a redo); a retry keeps its own
        inputs = state.inputs_for(rec.node) if rec.node in state.ready else dict(ns.inputs or {})
        regenerated = rec.model_copy(update={"inputs": inputs})
        if (rec.node, rec.attempt) in self.superseded:
            # Cut short by a code change on resume: the old code is gone, so its effects
            # stand as recorded and the new attempt is what replay re-executes.
            recorded = [
                e
                for e in self.recorded
                if isinstance(e, EffectRecorded) and (e.node, e.attempt) == (rec.node, rec.attempt)
            ]
            life = _Life(0, deque(recorded), halted=True)
            self.attempts[(rec.node, rec.attempt)] = _Attempt([life])
        else:
            await self._run_body(rec, inputs)
        return regenerated

    async def _run_body(self, rec: NodeDispatched, inputs: dict[str, Any]) -> None:
        key = (rec.node, rec.attempt)
        lives = []
        outcome: dict[str, Any] = {}
        assert self.state is not None
        unrecorded = _LifeRecord(0, [], self.state.book.ceiling is not None, 0)
        for record in self.lives.get(key, [unrecorded]):
            life, outcome = await self._live_once(rec, inputs, record)
            lives.append(life)
        self.attempts[key] = _Attempt(lives)
        self.outcomes[key] = outcome

    async def _live_once(
        self, rec: NodeDispatched, inputs: dict[str, Any], record: _LifeRecord
    ) -> tuple[_Life, dict[str, Any]]:
        """Run the body once against one life's journal; queue what that life recorded."""
        start, journal = record.start, record.journal
        spec = self.plan.nodes[NodeId.parse(rec.node).base].spec
        produced: list[EffectFields] = []
        assert self.state is not None
        # Every effect is served from the journal, so the workspace is never touched.
        state = self.state
        site = site_for(state, spec, rec.node, rec.attempt, Path("/nonexistent"), journal)
        llm = state.config.get("llm")
        ctx = NodeContext(
            site,
            SystemClock(),
            record=None,
            regenerated=produced,
            models=RunModels(llm, state.config.get("model")) if llm else None,
            allowance=allowance_for(state, spec, record.counted_from, record.reserved),
        )
        life = _Life(start)
        outcome: dict[str, Any]
        try:
            # Effects return at once here; the declared timeout still bounds whatever
            # else the body awaits, as it did when the attempt was recorded.
            async with asyncio.timeout(spec.timeout) as scope:
                result = await run_body(spec, ctx, inputs)
            outcome = {"outputs": outputs_of(spec, result)}
        except JournalExhausted:
            life.halted = True
            outcome = {}
        except TimeoutError as exc:
            life.halted = scope.expired()
            outcome = {} if life.halted else {"error": ErrorInfo.of(exc)}
        except NonDeterminism as exc:
            life.error = exc
            outcome = {"error": ErrorInfo.of(exc)}
        except Exception as exc:
            outcome = {"error": ErrorInfo.of(exc)}
        for fields in produced:
            if fields["index"] < start:
                continue  # served in this life, recorded by an earlier one
            source = journal[fields["index"]]
            stamp = {"kind": "EffectRecorded", "seq": source.seq, "ts": source.ts}
            life.queue.append(_Effect({**fields, **stamp}))
        return life, outcome

    def _resumed(self, rec: NodeResumed) -> BaseEvent:
        """A new life starts: the previous one must have produced all it recorded."""
        attempt = self.attempts.get((rec.node, rec.attempt))
        if attempt is None or attempt.current + 1 >= len(attempt.lives):
            return _Nothing(seq=rec.seq, ts=rec.ts)
        if attempt.life.queue:
            raise _Diverged(self._mismatch(rec, attempt.life.queue[0]))
        attempt.current += 1
        return rec.model_copy(update={"from_index": attempt.life.start})

    def _saved(self, rec: WorkspaceSaved, state: RunState) -> BaseEvent:
        """A workspace save stands as recorded (its bytes come from the workspace, which
        replay never touches) if it names the running attempt at its journal's end."""
        ns = state.nodes.get(rec.node)
        if ns is None or ns.status != "running" or ns.attempt != rec.attempt:
            return _Nothing(seq=rec.seq, ts=rec.ts)
        if rec.index != len(ns.journal):
            return rec.model_copy(update={"index": len(ns.journal)})
        return rec

    def _next_of(self, rec: EffectRecorded) -> BaseEvent | _Effect:
        attempt = self.attempts.get((rec.node, rec.attempt))
        if attempt is None:
            return _Nothing(seq=rec.seq, ts=rec.ts)
        life = attempt.life
        if not life.queue:
            if life.error is not None and life.error.index == rec.index:
                err = life.error
                raise _Diverged(
                    Divergence(rec.seq, rec.node, rec.attempt, rec.index, err.expected, err.got)
                )
            return _Nothing(seq=rec.seq, ts=rec.ts)
        return life.queue.popleft()

    def _parked(self, rec: GateParked) -> BaseEvent:
        """A gated attempt's outputs, held: regenerated from the body's outcome."""
        key = (rec.node, rec.attempt)
        attempt = self.attempts.get(key)
        if attempt is not None and attempt.life.queue:
            raise _Diverged(self._mismatch(rec, attempt.life.queue[0]))
        outputs = self.outcomes.get(key, {}).get("outputs")
        if outputs is None:
            return _Nothing(seq=rec.seq, ts=rec.ts)
        fields = Park(rec.gate, outputs).event_fields(rec.node, rec.attempt)
        return rec.model_copy(update=fields)

    def _decided(self, rec: GateDecided, state: RunState) -> BaseEvent:
        """A recorded decision stands only if its signature holds and it was legal."""
        ns = state.nodes.get(rec.node)
        approvers = state.config.get("approvers", {}).get(rec.gate, [])
        held = ns.held if ns is not None else None
        if (
            held is None
            or held.digest != rec.digest
            or held.attempt != rec.attempt
            or rec.approver not in approvers
            or not gates.verify_recorded(state, rec)
        ):
            return _Nothing(seq=rec.seq, ts=rec.ts)
        if rec.decision == "reject" and rec.redo is None:
            self.rejected[(rec.node, rec.attempt)] = rec.comment
        return rec

    def _reset(self, rec: NodesReset, state: RunState) -> BaseEvent:
        """A reset stands only as the consequence of the decision recorded just before it."""
        decided = self.last_decided
        if decided is None or decided.redo != rec.node or decided.comment != rec.comment:
            return _Nothing(seq=rec.seq, ts=rec.ts)
        return rec.model_copy(update={"reset": gates.redo_set(state, decided)})

    def _refused(self, rec: BudgetRefused, state: RunState) -> BaseEvent:
        spec = self.plan.nodes[NodeId.parse(rec.node).base].spec
        remaining = state.book.remaining()
        over = state.book.admits(spec.budget)
        if remaining is None or not over:
            return _Nothing(seq=rec.seq, ts=rec.ts)
        return rec.model_copy(update={"needed": spec.budget, "remaining": remaining, "over": over})

    def _overrun(self, rec: BudgetOverrun, state: RunState) -> BaseEvent:
        """An attempt stopped at its allowance stands as recorded (how much it used is
        metered outside the body) if it was running and its body produced no more effects
        than were recorded."""
        ns = state.nodes.get(rec.node)
        if ns is None or ns.status != "running" or ns.attempt != rec.attempt:
            return _Nothing(seq=rec.seq, ts=rec.ts)
        attempt = self.attempts.get((rec.node, rec.attempt))
        if attempt is not None and attempt.life.queue:
            raise _Diverged(self._mismatch(rec, attempt.life.queue[0]))
        return rec

    def _terminal(self, rec: NodeSucceeded | NodeFailed | RetryScheduled) -> BaseEvent:
        key = (rec.node, rec.attempt)
        attempt = self.attempts.get(key)
        outcome = self.outcomes.get(key, {})
        if key in self.rejected:
            outcome = {"error": gates.rejection(self.rejected[key])}
        if attempt is not None and attempt.life.queue:
            extra = attempt.life.queue[0]
            raise _Diverged(self._mismatch(rec, extra))
        if attempt is not None and attempt.halted:
            # The body was stopped mid-way (timeout, crash before a code-changed retry) or
            # never started (its workspace refused at dispatch):
            # what it would have done next is not on the record, so the record stands.
            reason = getattr(rec, "reason", None)
            if reason is not None and reason.type in (
                "NodeTimeout",
                "CodeChanged",
                "BudgetExceeded",
                "WorkspaceRefused",
            ):
                return rec
        if "outputs" in outcome:
            fields = Succeed(outcome["outputs"]).event_fields(rec.node, rec.attempt)
            return NodeSucceeded(seq=rec.seq, ts=rec.ts, **fields)
        error: ErrorInfo = outcome.get("error") or ErrorInfo(type="Halted", message="no outcome")
        spec = self.plan.nodes[NodeId.parse(rec.node).base].spec
        assert self.state is not None
        cause: FailureCause = "rejected" if key in self.rejected else "error"
        decision = after_failure(spec.retry, self.state.seed, rec.node, rec.attempt, error, cause)
        if isinstance(decision, Fail):
            return NodeFailed(
                seq=rec.seq, ts=rec.ts, **decision.event_fields(rec.node, rec.attempt)
            )
        fields = decision.event_fields(rec.node, rec.attempt, parse_iso(rec.ts))
        return RetryScheduled(seq=rec.seq, ts=rec.ts, **fields)

    def _derived_failure(self, rec: NodeFailed, state: RunState) -> BaseEvent:
        ns = state.nodes.get(rec.node)
        if rec.cause == "map_too_large" and ns is not None and ns.defect:
            reason = ErrorInfo(type="MapError", message=ns.defect)
            return rec.model_copy(update={"reason": reason})
        failed_dep = state.doomed.get(rec.node)
        if failed_dep is not None:
            reason = ErrorInfo(type="UpstreamFailed", message=f"{failed_dep} failed")
            return rec.model_copy(update={"reason": reason})
        if rec.reason.type == "Unreachable":
            return rec
        return _Nothing(seq=rec.seq, ts=rec.ts)


class _Nothing(BaseEvent):
    """Stands for an event the regenerated history lacks."""

    kind: str = "Nothing"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a whole ledger is decoded and replayed.

    Replay keeps every decoded event alive at once (about seven tracked objects per
    event) and makes next to no cyclic garbage, so the full collections its growing heap
    triggers cost as much as the replay itself (see bench/replay.py).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def replay(
    plan: Plan,
    rows: Sequence[StoredEvent],
    decoded: Sequence[Event] | None = None,
    sources: Mapping[str, Plan] | None = None,
) -> ReplayReport:
    """Replay a run's stored events against ``plan``'s current code; with ``sources``
    (the plans of the run's stored sources, by digest), against the code each
    PlanSourceRecorded names from there on."""
    return await Replayer(plan, rows, decoded, sources).run()
