"""What a run tells the outside world: gate notices, signed receipts, the signed reason
of an abort, and a notice when the run aborts, fails or succeeds. Deliveries run in the
background with retries (the run's ``delivery_attempts`` and ``delivery_backoff``), each
outcome is recorded (``NoticeDelivered``), and none of them can stop or lose the run;
the notices that end a run are given ``OUTCOME_DEADLINE_S`` at most, so a sink that
hangs never keeps the process from exiting. Each notify sink gets only the events it
subscribed to (``SinkConfig.events``)."""

from __future__ import annotations

import asyncio
import logging
import shlex
from typing import Any

from orchestrator import gates, receipts
from orchestrator.clock import Clock, iso, parse_iso
from orchestrator.ledger.events import (
    BudgetOverrun,
    GateParked,
    NoticeDelivered,
    ReceiptIssued,
    RunAborted,
    abort_payload,
)
from orchestrator.ledger.state import RunState
from orchestrator.ledger.writer import LedgerWriter
from orchestrator.signing import Signer
from orchestrator.sinks import (
    Delivery,
    GateNotice,
    Notice,
    NoticeEvent,
    OutcomeNotice,
    ReceiptNotice,
    SinkConfig,
    deliver,
)

log = logging.getLogger("orchestrator.reporting")

OUTCOME_DEADLINE_S = 60.0
"""The longest a notice that ends a run may take to deliver, retries included."""
_ENDED = {"abort": "aborted", "failure": "failed", "success": "succeeded"}


def notice_id(held: GateParked) -> str:
    return f"gate {held.gate} {held.node}#{held.attempt}"


class Reporter:
    """Sends one run's notices and receipts and records what came of each."""

    def __init__(
        self,
        writer: LedgerWriter,
        clock: Clock,
        signer: Signer | None,
        notify: list[SinkConfig],
        receipt_sinks: list[SinkConfig],
        receipt_interval: float,
        attempts: int = 5,
        backoff: float = 0.5,
        where: tuple[str, ...] = (),
    ) -> None:
        """``where``: the global options that point a command at this run (``--home H``,
        and ``--ledger``/``--objects`` where they are not the home's), for the commands
        notices print."""
        assert writer.state is not None
        self.writer = writer
        self.state: RunState = writer.state
        self.clock = clock
        self.signer = signer
        self.notify = notify
        self.receipt_sinks = receipt_sinks
        self.receipt_interval = receipt_interval
        self.attempts = attempts
        self.backoff = backoff
        self.where = where
        self._deliveries: set[asyncio.Task[None]] = set()

    # ---- gates -------------------------------------------------------------------------

    def gate_parked(self, held: GateParked) -> None:
        """Tell the gate's people what waits for them and how to decide it."""
        sinks = self._subscribed("gate")
        if not sinks:
            return
        run_id = self.state.run_id
        notice = GateNotice(
            run_id=run_id,
            node=held.node,
            attempt=held.attempt,
            gate=held.gate,
            digest=held.digest,
            review=held.review,
            approve=gates.approve_command(run_id, held, where=self.where),
            reject=gates.approve_command(run_id, held, reject=True, where=self.where),
            parked_at=held.ts,
        )
        self._send(notice_id(held), notice, sinks)

    def renotify(self) -> None:
        """Send again the gate notices a stopped process never delivered."""
        for ns in self.state.awaiting():
            if ns.held is not None and notice_id(ns.held) not in self.state.notices_ok:
                self.gate_parked(ns.held)

    # ---- receipts ----------------------------------------------------------------------

    def receipt_due(self) -> bool:
        receipts_so_far = self.state.receipts
        last = receipts_so_far[-1].body["period"]["to"] if receipts_so_far else None
        since = parse_iso(last or self.state.started_at)
        return (self.clock.now() - since).total_seconds() >= self.receipt_interval

    def issue_receipt(self) -> ReceiptIssued | None:
        """Sign and record a receipt for the period up to now, and send it to the sinks."""
        if self.signer is None:
            return None
        number = len(self.state.receipts) + 1
        body = receipts.build(self.state, number, iso(self.clock.now()))
        event = self.writer.stage(
            ReceiptIssued,
            number=number,
            body=body,
            signature=receipts.sign(body, self.signer),
            key=self.signer.public,
        )
        notice = ReceiptNotice(
            run_id=self.state.run_id,
            number=number,
            body=body,
            signature=event.signature,
            key=event.key,
        )
        self._send(f"receipt {number}", notice, self.receipt_sinks)
        return event

    # ---- aborts ------------------------------------------------------------------------

    def abort(self) -> RunAborted:
        """Record why the run stopped (its ceiling reached, or a node's own allowance used
        up), signed, with the last passed gate."""
        refused = self.state.refused
        assert refused is not None
        if isinstance(refused, BudgetOverrun):
            reason = (
                f"node {refused.node} used up its own budget ({', '.join(refused.over)}) in "
                f"attempt {refused.attempt}: {refused.reason.message}"
            )
        else:
            reason = (
                f"budget ceiling reached: node {refused.node} needs "
                f"{_amount(refused.needed.model_dump())} but only "
                f"{_amount(refused.remaining.model_dump())} remains ({'; '.join(refused.over)})"
            )
        ts = iso(self.clock.now())
        last_gate = self.state.last_gate
        signature, key = "", ""
        if self.signer is not None:
            payload = abort_payload(self.state.run_id, ts, reason, last_gate)
            signature, key = self.signer.sign(payload), self.signer.public
        return self.writer.stage(
            RunAborted, ts=ts, reason=reason, last_gate=last_gate, signature=signature, key=key
        )

    # ---- outcomes ----------------------------------------------------------------------

    def ended(self, outcome: NoticeEvent, reason: str, at: str) -> None:
        """Tell the sinks that subscribed to ``outcome`` (abort, failure or success) how
        the run ended or stopped, why, and what to type next."""
        sinks = self._subscribed(outcome)
        if not sinks or outcome == "gate":
            return
        run_id = self.state.run_id
        if outcome == "abort":
            then = ["resume", run_id, "--budget", "tokens=N,compute_h=H,spend=USD"]
        else:
            then = ["status", run_id]
        command = shlex.join(["orchestrator", *self.where, *then])
        plan = str(self.state.plan.get("name") or self.state.plan_ref)
        notice = OutcomeNotice(
            run_id=run_id,
            plan=plan,
            outcome=outcome,
            reason=reason,
            command=command,
            at=at,
            text=f"run {run_id} ({plan}) {_ENDED[outcome]}: {reason}\nnext: {command}",
        )
        self._send(f"run {_ENDED[outcome]}", notice, sinks, OUTCOME_DEADLINE_S)

    def completed(self) -> None:
        """The outcome notice for a run that just completed (its RunCompleted staged)."""
        state = self.state
        summary = state.summary
        failed: dict[str, str] = summary.get("failed", {})
        if state.status == "succeeded":
            reason = f"all {summary.get('nodes')} node(s) succeeded"
            self.ended("success", reason, state.updated_at)
            return
        roots = {k: v for k, v in failed.items() if not v.startswith("upstream:")}
        shown = "; ".join(f"{k}: {v}" for k, v in list(roots.items())[:5])
        more = f" (and {len(roots) - 5} more)" if len(roots) > 5 else ""
        skipped = len(failed) - len(roots)
        reason = f"{len(roots)} node(s) failed: {shown}{more}" + (
            f"; {skipped} not run" if skipped else ""
        )
        self.ended("failure", reason[:2000], state.updated_at)

    # ---- delivery ----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every delivery under way has ended (and is recorded)."""
        while self._deliveries:
            self.writer.flush()
            await asyncio.gather(*list(self._deliveries))

    def _subscribed(self, event: NoticeEvent) -> list[SinkConfig]:
        return [sink for sink in self.notify if sink.wants(event)]

    def _send(
        self,
        notice_id: str,
        notice: Notice,
        sinks: list[SinkConfig],
        deadline: float | None = None,
    ) -> None:
        for sink in sinks:
            task = asyncio.create_task(self._deliver(notice_id, notice, sink, deadline))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, notice_id: str, notice: Notice, sink: SinkConfig, deadline: float | None
    ) -> None:
        try:
            async with asyncio.timeout(deadline):
                done = await deliver(sink, notice, attempts=self.attempts, base_delay=self.backoff)
        except TimeoutError:
            error = f"no delivery within {deadline:g}s; gave up"
            done = Delivery(sink=sink.describe(), ok=False, attempts=0, error=error)
        if not done.ok:
            log.warning("could not deliver %s to %s: %s", notice_id, done.sink, done.error)
        self.writer.stage(
            NoticeDelivered,
            notice=notice_id,
            sink=done.sink,
            ok=done.ok,
            attempts=done.attempts,
            error=done.error,
        )
        await self.writer.commit()


def _amount(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )
