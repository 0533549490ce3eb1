"""The scheduler: dispatch every ready node at once, retry, time out, drain and park.

All decisions are recorded before they take effect: a node's NodeDispatched is durable
before its body starts, and its NodeSucceeded is durable before any dependent is
dispatched (the two share one group commit). The scheduler keeps no run state of its
own beyond live tasks and timers; everything else is the ledger fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import gates
from orchestrator.checkpoint import Checkpointer, LiveWorkspace, WorkspaceRef, retry_delay
from orchestrator.clock import Clock, iso, parse_iso
from orchestrator.config import RunConfig
from orchestrator.errors import BudgetExceeded, DecisionRefused, NodeTimeout, WorkspaceRefused
from orchestrator.ledger.events import (
    BudgetOverrun,
    BudgetRefused,
    BudgetReserved,
    CheckpointFailed,
    EffectRecorded,
    ErrorInfo,
    FailureCause,
    GateDecided,
    GateParked,
    NodeDispatched,
    NodeFailed,
    NodeResumed,
    NodesReset,
    NodeSucceeded,
    PauseRequested,
    RetryScheduled,
    RunParked,
    SandboxMetered,
    WorkspaceSaved,
)
from orchestrator.ledger.state import NodeState, RunState
from orchestrator.ledger.writer import LedgerWriter
from orchestrator.node import NodeSpec
from orchestrator.plan import Plan
from orchestrator.runtime.attempts import allowance_for, outputs_of, run_body, site_for
from orchestrator.runtime.context import (
    EffectFields,
    ModelSource,
    NodeContext,
)
from orchestrator.runtime.reporting import Reporter
from orchestrator.runtime.resumption import resume_point
from orchestrator.runtime.sandboxes import SandboxBroker, SandboxHandle, workspace_path
from orchestrator.runtime.transitions import (
    RetryLater,
    Succeed,
    after_failure,
    after_success,
    completion_events,
)
from orchestrator.sandbox.process import AgentSandbox
from orchestrator.sandbox.teardown import TEARDOWN_GRACE_S
from orchestrator.signing import Signer
from orchestrator.sinks import SinkConfig

log = logging.getLogger("orchestrator.scheduler")

CONTROL_POLL_S = 0.1
STOP_CHECKPOINT_S = 10.0
FINAL_RETRY_BASE = 1.0  # seconds before the first retry of a run's last checkpoint


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt of a node body ended."""

    node: str
    attempt: int
    outputs: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    timed_out: bool = False
    overrun: tuple[str, ...] = ()
    """The dimensions in which the attempt used up its allowance (the run aborts)."""


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def workspace_dir(work: Path, node: str, attempt: int) -> Path:
    """The attempt's own directory under the run's ``work`` directory."""
    return work / f"{_UNSAFE.sub('_', node)}.a{attempt}"


class Scheduler:
    """Drives one run from its current state to completion, failure or a park."""

    def __init__(
        self,
        plan: Plan,
        writer: LedgerWriter,
        clock: Clock,
        home: Path,
        config: RunConfig,
        *,
        poll_controls: Callable[[], list[tuple[str, str]]] | None = None,
        sandboxes: SandboxBroker | None = None,
        checkpointer: Checkpointer | None = None,
        signer: Signer | None = None,
        models: ModelSource | None = None,
        receipt_sinks: list[SinkConfig] | None = None,
        store_grace: float = 60.0,
        where: tuple[str, ...] = (),
    ) -> None:
        assert writer.state is not None
        self.plan = plan
        self.writer = writer
        self.state: RunState = writer.state
        self.clock = clock
        self.home = home
        self._work = home / "runs" / self.state.run_id / "work"
        self.config = config
        self.concurrency = config.concurrency
        self.poll_controls = poll_controls
        self.sandboxes = sandboxes
        self.checkpointer = checkpointer
        self.checkpoint_interval = config.checkpoint_interval if checkpointer else None
        self.store_grace = store_grace
        self.models = models
        self.reporter = Reporter(
            writer,
            clock,
            signer,
            config.notify,
            receipt_sinks if receipt_sinks is not None else config.receipts,
            config.receipt_interval,
            config.delivery_attempts,
            config.delivery_backoff,
            where,
        )
        self._live: dict[str, tuple[NodeContext, SandboxHandle]] = {}
        self._tasks: dict[str, asyncio.Task[Outcome]] = {}
        self._finished: list[Outcome] = []
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._fatal: Exception | None = None
        self._signals = 0
        self._park_reason: str | None = None
        self.interrupted = False
        """Set by a second SIGINT/SIGTERM: attempts were stopped, the run left resumable."""
        self._pause_now: str | None = None
        """Who asked for ``pause --now``: snapshot, stop the attempts, park."""

    # ---- the loop ---------------------------------------------------------------------

    async def run(
        self,
        resumed: bool = False,
        restore_points: Mapping[str, WorkspaceRef] | None = None,
        decisions: list[gates.Decision] | None = None,
    ) -> RunState:
        state = self.state
        if resumed:
            self._resume_in_flight(restore_points or {})
        for decision in decisions or ():
            self.apply_decision(decision)
        if resumed:  # after the decisions: no "approval needed" for a gate just decided
            self.reporter.renotify()
        for ns in list(state.retrying()):
            if ns.id not in self._timers:  # a decision or a code change above armed it
                self._arm_timer(ns)
        poller = asyncio.create_task(self._poll()) if self.poll_controls else None
        periodic = None
        stop_periodic = asyncio.Event()
        if self.checkpointer is not None and self.checkpoint_interval:
            periodic = asyncio.create_task(self._periodic(self.checkpoint_interval, stop_periodic))
        restore = self._trap_signals()
        try:
            final = await self._loop()
            if periodic is not None:
                stop_periodic.set()
            if self.interrupted:
                await self._last_checkpoint(periodic)
                return final
            if self._pause_now is not None:
                if periodic is not None:
                    await periodic
                # the snapshots taken before the stop stay the ones to resume from
                await self.checkpoint("parked", "run parked", keep_workspaces=True)
                return final
            if periodic is not None:
                await periodic  # a checkpoint under way finishes; it is never cut short
            await self._final_checkpoint(final.status)
            return final
        finally:
            restore()
            if poller is not None:
                poller.cancel()
            if periodic is not None:
                periodic.cancel()
            for timer in self._timers.values():
                timer.cancel()
            for task in self._tasks.values():
                task.cancel()

    async def _loop(self) -> RunState:
        state, writer = self.state, self.writer
        while True:
            for outcome in self._drain_finished():
                self._settle(outcome)
            starting: list[NodeState] = []
            if state.status == "running":
                while state.doomed:
                    node_id, failed_dep = min(state.doomed.items())
                    writer.stage(
                        NodeFailed,
                        node=node_id,
                        attempt=state.nodes[node_id].attempt,
                        cause="upstream",
                        reason=ErrorInfo(type="UpstreamFailed", message=f"{failed_dep} failed"),
                    )
                starting = self._dispatch_ready()
            if not self._tasks and not starting and not self._timers:
                if await self._finish():
                    return state
                continue
            writer.flush()
            for ns in starting:
                self._start(ns, journal=[])
            await self._wake.wait()
            self._wake.clear()
            if self._fatal is not None:
                raise self._fatal
            if self.interrupted:
                await self._stop_now()
                return state
            if self._pause_now is not None:
                await self._park_now(self._pause_now)
                return state

    def _dispatch_ready(self) -> list[NodeState]:
        state, writer = self.state, self.writer
        room = self.concurrency - len(self._tasks)
        starting: list[NodeState] = []
        for node_id in sorted(self._due):
            if room <= 0 or state.status != "running":
                break
            self._due.discard(node_id)
            ns = state.nodes[node_id]
            if self._stage_dispatch(ns, ns.attempt + 1, ns.inputs or {}):
                starting.append(ns)
                room -= 1
        while room > 0 and state.ready and state.status == "running":
            node_id = min(state.ready) if len(state.ready) > 1 else next(iter(state.ready))
            ns = state.nodes[node_id]
            if ns.placeholder:
                writer.stage(
                    NodeFailed,
                    node=node_id,
                    attempt=0,
                    cause="map_too_large",
                    reason=ErrorInfo(type="MapError", message=ns.defect or "bad map"),
                )
                continue
            # attempt 1, or the next one of a node a rejection sent the work back to
            if self._stage_dispatch(ns, ns.attempt + 1, state.inputs_for(node_id)):
                starting.append(ns)
                room -= 1
        return starting

    def _stage_dispatch(self, ns: NodeState, attempt: int, inputs: dict[str, Any]) -> bool:
        """Reserve the node's worst case and record its dispatch; or, when the worst case
        does not fit what the envelope has left, record the refusal (the run then drains
        and aborts) and return False."""
        spec = self.plan.nodes[ns.base].spec
        book = self.state.book
        if book.ceiling is not None:
            over = book.admits(spec.budget)
            if over:
                remaining = book.remaining()
                assert remaining is not None
                self.writer.stage(
                    BudgetRefused,
                    node=ns.id,
                    attempt=attempt,
                    needed=spec.budget,
                    remaining=remaining,
                    over=over,
                )
                return False
        self.writer.stage(
            NodeDispatched,
            node=ns.id,
            attempt=attempt,
            code_digest=spec.code_digest,
            inputs=inputs,
        )
        if book.ceiling is not None:
            self.writer.stage(BudgetReserved, node=ns.id, attempt=attempt, amount=spec.budget)
        return True

    # ---- attempts ---------------------------------------------------------------------

    def _start(
        self,
        ns: NodeState,
        journal: list[EffectRecorded],
        restore: str | None = None,
        fresh: bool = False,
    ) -> None:
        spec = self.plan.nodes[ns.base].spec
        base = workspace_dir(self._work, ns.id, ns.attempt)
        # What the sandbox sees at /workspace, on the host: an overlay's merged view of
        # the node's repository, or the attempt's own directory.
        seen = workspace_path(base, overlay=spec.workspace is not None)
        site = site_for(self.state, spec, ns.id, ns.attempt, seen, journal)
        handle = None
        if self.sandboxes is not None:
            lower = None
            if spec.workspace is not None and ns.inputs is not None:
                try:
                    lower = self.sandboxes.workspace_of(
                        ns.id, spec.workspace, ns.inputs[spec.workspace]
                    )
                except WorkspaceRefused as exc:
                    # Refused at dispatch: the body never starts, and retrying the same
                    # input would be refused again.
                    reason = ErrorInfo.of(exc)
                    self.writer.stage(
                        NodeFailed, node=ns.id, attempt=ns.attempt, cause="error", reason=reason
                    )
                    self._wake.set()
                    return
            chunks = self.checkpointer.chunks if self.checkpointer is not None else None
            handle = SandboxHandle(
                self.sandboxes, spec, base, lower, restore if chunks else None, chunks, fresh
            )
        node_id = ns.id

        async def on_checkpoint(label: str) -> Any:
            return await self.checkpoint(label, "node checkpoint", requester=node_id)

        attempt = ns.attempt

        async def record_save(index: int, snapshot: str) -> None:
            self._stage_save(node_id, attempt, index, snapshot)
            await self._commit()

        ctx = NodeContext(
            site,
            self.clock,
            self._record_effect,
            sandbox=handle,
            on_checkpoint=on_checkpoint,
            models=self.models,
            allowance=allowance_for(self.state, spec, ns.allowance_from),
            record_save=record_save,
        )
        if handle is not None:
            self._live[node_id] = (ctx, handle)
        task = asyncio.create_task(
            self._attempt(spec, ctx, dict(ns.inputs or {}), handle, self._compute_limit(spec))
        )
        task.add_done_callback(lambda done: self._on_done(done, node_id, ns.attempt))
        self._tasks[ns.id] = task

    def _compute_limit(self, spec: NodeSpec) -> float | None:
        """Seconds of sandbox wall-clock the attempt's compute reservation pays for."""
        if self.state.book.ceiling is None:
            return None
        vcpus = (spec.limits.cpu_share if spec.limits is not None else None) or 1.0
        seconds = spec.budget.compute_h * 3600 / vcpus
        # stop early enough that tearing the sandbox down stays inside the reservation
        return max(0.0, seconds - min(0.05 * seconds + 0.05, 5.0))

    async def _attempt(
        self,
        spec: NodeSpec,
        ctx: NodeContext,
        inputs: dict[str, Any],
        handle: SandboxHandle | None,
        compute_limit: float | None,
    ) -> Outcome:
        try:
            return await self._run_attempt(spec, ctx, inputs, handle, compute_limit)
        finally:
            self._live.pop(ctx.node, None)
            if handle is not None:
                try:
                    # A checkpoint snapshotting this workspace finishes before its disk goes.
                    async with ctx.gate:
                        metered = await handle.release()  # bounded: see sandbox.teardown
                except Exception as exc:  # the outcome stands; the sandbox is swept later
                    log.warning("node %s: releasing its sandbox failed: %s", ctx.node, exc)
                    metered = None
                if metered is not None:
                    backend, meter = metered
                    self.writer.stage(
                        SandboxMetered,
                        node=ctx.node,
                        attempt=ctx.attempt,
                        backend=backend,
                        wall_s=meter.wall_s,
                        vcpus=meter.vcpus,
                        cpu_s=meter.cpu_s,
                    )

    async def _run_attempt(
        self,
        spec: NodeSpec,
        ctx: NodeContext,
        inputs: dict[str, Any],
        handle: SandboxHandle | None = None,
        compute_limit: float | None = None,
    ) -> Outcome:
        node, attempt = ctx.node, ctx.attempt
        metered = {"cut": False}
        try:
            async with asyncio.timeout(spec.timeout) as scope:
                if handle is not None and compute_limit is not None:
                    # Compute is metered from the sandbox's start: stop the attempt when
                    # its reservation is used up rather than run past the envelope.
                    def arm() -> None:
                        deadline = asyncio.get_running_loop().time() + compute_limit
                        current = scope.when()
                        if current is None or deadline < current:
                            metered["cut"] = True
                            scope.reschedule(deadline)

                    handle.on_start = arm
                result = await run_body(spec, ctx, inputs)
            return Outcome(node, attempt, outputs=outputs_of(spec, result))
        except TimeoutError as exc:
            if scope.expired() and metered["cut"]:
                message = (
                    f"node {node} used the {spec.budget.compute_h:g} compute-hours it reserved "
                    "and was stopped before passing them"
                )
                over = ("compute_h",)
                error = ErrorInfo.of(BudgetExceeded(message, over, used_up=True))
                return Outcome(node, attempt, error=error, overrun=over)
            if scope.expired():
                message = f"exceeded its timeout of {spec.timeout:g}s"
                return Outcome(
                    node, attempt, error=ErrorInfo.of(NodeTimeout(message)), timed_out=True
                )
            return Outcome(node, attempt, error=ErrorInfo.of(exc))
        except ValidationError as exc:
            return Outcome(node, attempt, error=ErrorInfo.of(exc))
        except BudgetExceeded as exc:
            used_up = (exc.over or ("budget",)) if exc.used_up else ()
            return Outcome(node, attempt, error=ErrorInfo.of(exc), overrun=used_up)
        except Exception as exc:
            return Outcome(node, attempt, error=ErrorInfo.of(exc))

    def _on_done(self, task: asyncio.Task[Outcome], node: str, attempt: int) -> None:
        if not task.cancelled():
            error = task.exception()
            if error is None:
                self._finished.append(task.result())
            else:  # never leave a node in flight with nothing left to settle it
                self._finished.append(Outcome(node, attempt, error=ErrorInfo.of(error)))
        self._wake.set()

    def _drain_finished(self) -> list[Outcome]:
        done, self._finished = self._finished, []
        for outcome in done:
            self._tasks.pop(outcome.node, None)
        return done

    async def _record_effect(self, fields: EffectFields, saved_after: str | None) -> None:
        self.writer.stage(EffectRecorded, **fields)
        if saved_after is not None:
            self._stage_save(fields["node"], fields["attempt"], fields["index"] + 1, saved_after)
        await self._commit()

    def _stage_save(self, node: str, attempt: int, index: int, snapshot: str) -> None:
        self.writer.stage(
            WorkspaceSaved, node=node, attempt=attempt, index=index, snapshot=snapshot
        )

    async def _commit(self) -> None:
        try:
            await self.writer.commit()
        except Exception as exc:
            # A body may swallow this; the run must not go on without a durable journal.
            self._fatal = exc
            self._wake.set()
            raise

    def _settle(self, outcome: Outcome) -> None:
        writer, node, attempt = self.writer, outcome.node, outcome.attempt
        if outcome.overrun:
            # As a refused dispatch: the run drains and aborts; the attempt stays in flight
            # and goes on from its journal once the run is resumed with a fresh budget.
            assert outcome.error is not None
            writer.stage(
                BudgetOverrun,
                node=node,
                attempt=attempt,
                over=list(outcome.overrun),
                reason=outcome.error,
            )
            return
        if outcome.error is None:
            assert outcome.outputs is not None
            spec = self.plan.nodes[self.state.nodes[node].base].spec
            decision = after_success(spec.gate, outcome.outputs)
            if isinstance(decision, Succeed):
                writer.stage(NodeSucceeded, **decision.event_fields(node, attempt))
                return
            held = writer.stage(GateParked, **decision.event_fields(node, attempt))
            self.reporter.gate_parked(held)
            return
        self._fail_or_retry(
            node, attempt, outcome.error, "timeout" if outcome.timed_out else "error"
        )

    def _fail_or_retry(
        self, node: str, attempt: int, error: ErrorInfo, cause: FailureCause
    ) -> None:
        """Retry the node if its policy allows this error, else record its failure."""
        retry = self.plan.nodes[self.state.nodes[node].base].spec.retry
        decision = after_failure(retry, self.state.seed, node, attempt, error, cause)
        if isinstance(decision, RetryLater):
            self._schedule_retry(node, attempt, decision)
            if decision.park:
                self.request_pause(f"{node} failed: {error.type}")
                self._park_reason = f"{node} failed; fix the cause, then resume the run"
        else:
            self.writer.stage(NodeFailed, **decision.event_fields(node, attempt))

    # ---- gates -------------------------------------------------------------------------

    def apply_decision(self, decision: gates.Decision) -> None:
        """Record a verified decision: approval releases the held outputs, rejection fails
        the attempt with the comment (retried, comment in hand, if the policy allows), or
        with ``redo`` sends the work back to an upstream node (it and all below it rerun)."""
        gates.check(self.state, decision, self.clock.now())
        held = self.state.nodes[decision.node].held
        assert held is not None
        self.writer.stage(GateDecided, **decision.event_fields())
        if decision.decision == "approve":
            self.writer.stage(
                NodeSucceeded, node=held.node, attempt=held.attempt, outputs=held.outputs
            )
        elif decision.redo is not None:
            reset = gates.redo_set(self.state, decision)
            self.writer.stage(NodesReset, node=decision.redo, reset=reset, comment=decision.comment)
        else:
            self._fail_or_retry(
                held.node, held.attempt, gates.rejection(decision.comment), "rejected"
            )
        self._wake.set()

    # ---- receipts and the end of a run -------------------------------------------------

    async def _finish(self) -> bool:
        """Nothing runs and nothing can start: issue a receipt, then abort, park or
        complete. Returns False if a decision arrived meanwhile and work can go on."""
        state, writer = self.state, self.writer
        self.reporter.issue_receipt()
        await self.reporter.drain()
        if state.status == "running" and (state.ready or self._due or state.doomed):
            return False
        if state.status == "aborting":
            aborted = self.reporter.abort()
            self.reporter.ended("abort", aborted.reason, aborted.ts)
        elif state.status == "pausing" and state.unfinished():
            writer.stage(RunParked, reason=self._park_reason or "paused")
        elif state.awaiting():
            waiting = ", ".join(
                f"{ns.id} at gate {ns.held.gate}" for ns in state.awaiting() if ns.held
            )
            writer.stage(RunParked, reason=f"awaiting approval: {waiting}")
        else:
            self._complete()
            self.reporter.completed()
        writer.flush()
        await self.reporter.drain()  # the notices that end the run (bounded)
        return True

    def _schedule_retry(self, node: str, attempt: int, decision: RetryLater) -> None:
        now = self.clock.now()
        self.writer.stage(RetryScheduled, ts=iso(now), **decision.event_fields(node, attempt, now))
        self._arm_timer(self.state.nodes[node])

    def _arm_timer(self, ns: NodeState) -> None:
        assert ns.not_before is not None
        wait = (parse_iso(ns.not_before) - self.clock.now()).total_seconds()
        self._timers[ns.id] = asyncio.create_task(self._retry_after(ns.id, wait))

    async def _retry_after(self, node: str, wait: float) -> None:
        if wait > 0:
            await self.clock.sleep(wait)
        self._timers.pop(node, None)
        self._due.add(node)
        self._wake.set()

    # ---- checkpoints -------------------------------------------------------------------

    async def checkpoint(
        self,
        label: str,
        reason: str,
        requester: str | None = None,
        *,
        keep_workspaces: bool = False,
    ) -> dict[str, Any] | None:
        """Take a checkpoint now (no-op without a checkpointer); returns where it went.
        ``keep_workspaces``: keep the snapshots of attempts no longer live (parked now)."""
        if self.checkpointer is None:
            return None
        live: dict[str, LiveWorkspace] = {}
        for node_id, (ctx, handle) in self._live.items():
            sandbox = handle.started
            if sandbox is None:
                continue
            live[node_id] = LiveWorkspace(
                attempt=ctx.attempt,
                gate=ctx.gate,
                snapshot=sandbox.snapshot,
                journal_length=_journal_length(self.state, node_id),
                ended=_released(handle, sandbox),
            )
        event = await self.checkpointer.take(
            label, reason, live, requester, keep_workspaces=keep_workspaces
        )
        if isinstance(event, CheckpointFailed):
            return None  # recorded; the next checkpoint covers what this one would have
        return {"manifest": event.manifest, "digest": event.digest}

    async def _last_checkpoint(self, periodic: asyncio.Task[None] | None) -> None:
        """After a stop: one more checkpoint, given ``STOP_CHECKPOINT_S`` at most (the
        local ledger already holds everything; this only brings the object store up to
        date)."""
        try:
            async with asyncio.timeout(STOP_CHECKPOINT_S):
                if periodic is not None:
                    await periodic
                await self.checkpoint("interrupted", "stopped by a second signal")
        except TimeoutError:
            log.warning("the checkpoint after the stop took over %gs; skipped", STOP_CHECKPOINT_S)

    async def _periodic(self, interval: float, stop: asyncio.Event) -> None:
        assert self.checkpointer is not None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.checkpointer.retry_in)
            except TimeoutError:
                await self.checkpoint("periodic", f"every {interval:g}s")

    async def _final_checkpoint(self, status: str) -> None:
        """The run's last checkpoint. While the store fails it is retried, backing off,
        for ``store_grace`` seconds at most; the run's status never depends on it."""
        if self.checkpointer is None:
            return
        deadline = time.monotonic() + self.store_grace
        tries = 0
        while await self.checkpoint(status, "run " + status) is None:
            tries += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # RunState.unsynced names the failure; `checkpoints sync` finishes
            base = min(self.checkpointer.interval, FINAL_RETRY_BASE)
            await asyncio.sleep(min(retry_delay(base, tries), remaining))

    # ---- resume, pause, completion -----------------------------------------------------

    def _resume_in_flight(self, restore_points: Mapping[str, WorkspaceRef]) -> None:
        """Re-enter every attempt that was in flight when the previous process stopped.

        The workspace is restored to its latest saved state (see ``resume_point``) and
        the journal is served up to the index that state matches; only sandbox effects
        after it are performed again, live.
        """
        for ns in self.state.in_flight():
            spec = self.plan.nodes[ns.base].spec
            if ns.code_digest != spec.code_digest:
                reason = ErrorInfo(
                    type="CodeChanged",
                    message=f"code {ns.code_digest} -> {spec.code_digest}; starting a new attempt",
                )
                self._schedule_retry(ns.id, ns.attempt, RetryLater(reason, 0.0))
                continue
            renew = ns.overran  # it used up its allowance: this life gets a fresh one
            if renew and not self._reserve_again(ns, spec):
                continue
            from_index, snapshot = resume_point(ns, restore_points.get(ns.id))
            self.writer.stage(
                NodeResumed,
                node=ns.id,
                attempt=ns.attempt,
                from_index=from_index,
                snapshot=snapshot,
            )
            if renew and self.state.book.ceiling is not None:
                self.writer.stage(
                    BudgetReserved, node=ns.id, attempt=ns.attempt, amount=spec.budget
                )
            # A workspace never saved may be torn (a command killed mid-write): it starts
            # again from the attempt's initial state.
            self._start(ns, list(ns.journal), restore=snapshot, fresh=snapshot is None)

    def _reserve_again(self, ns: NodeState, spec: NodeSpec) -> bool:
        """Whether the fresh envelope admits another reservation for an attempt that used
        up its own; if not, the refusal is recorded (the run aborts again, the attempt
        still in flight)."""
        book = self.state.book
        over = book.admits(spec.budget)
        if not over:
            return True
        remaining = book.remaining()
        assert remaining is not None
        self.writer.stage(
            BudgetRefused,
            node=ns.id,
            attempt=ns.attempt,
            needed=spec.budget,
            remaining=remaining,
            over=over,
        )
        return False

    def request_pause(self, source: str) -> None:
        if self.state.status == "running":
            self.writer.stage(PauseRequested, source=source)
            self._wake.set()

    async def _poll(self) -> None:
        """Every tick: pause requests and gate decisions from other processes; receipts
        when one is due (by the run's clock, so tests can skip hours)."""
        assert self.poll_controls is not None
        while True:
            await asyncio.sleep(CONTROL_POLL_S)
            for command, source in self.poll_controls():
                if command == "pause":
                    self.request_pause(source or "cli")
                elif command == "pause-now" and self._pause_now is None:
                    self.request_pause(source or "cli")
                    self._pause_now = source or "cli"
                    self._wake.set()
                elif command == "decide":
                    self._decide_from(source)
            if self.state.status == "running" and self.reporter.receipt_due():
                self.reporter.issue_receipt()
                await self.writer.commit()

    def _decide_from(self, source: str) -> None:
        try:
            self.apply_decision(gates.Decision.model_validate_json(source))
        except (DecisionRefused, ValidationError) as exc:
            # `approve` checked it before sending; a race (two people at once) lands here
            log.warning("gate decision refused: %s", exc)

    def _trap_signals(self) -> Callable[[], None]:
        """SIGINT/SIGTERM pause the run (drain in-flight nodes, then park); a second one
        stops it now (see :meth:`_stop_now`)."""
        loop = asyncio.get_running_loop()
        trapped: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                trapped.append(sig)

        def restore() -> None:
            for sig in trapped:
                loop.remove_signal_handler(sig)

        return restore

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request_pause(f"signal {sig.name}")
            log.warning(
                "pausing run %s: %d in-flight node(s) drain, then it parks; "
                "send %s again to stop now (it stays resumable)",
                self.state.run_id,
                len(self._tasks),
                sig.name,
            )
        elif not self.interrupted:
            self.interrupted = True
            self._wake.set()

    async def _stop_now(self) -> None:
        """Stop every attempt at once (each sandbox torn down within its grace), keep
        what finished, and leave the rest in flight on the record: ``resume`` re-enters
        those attempts with their journals, as after a crash."""
        for timer in self._timers.values():
            timer.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TEARDOWN_GRACE_S + 1)
        for outcome in self._drain_finished():
            self._settle(outcome)
        for timer in self._timers.values():  # a retry just settled armed one
            timer.cancel()
        self.writer.flush()

    async def _park_now(self, source: str) -> None:
        """``pause --now``: snapshot every live workspace in a checkpoint, stop the
        attempts, and park; ``resume`` re-enters them from those snapshots, serving their
        journals up to where each snapshot was taken."""
        await self.checkpoint("pause-now", f"paused now by {source}")
        await self._stop_now()
        if self.state.status == "pausing":
            stopped = ", ".join(ns.id for ns in self.state.in_flight()) or "none"
            self.writer.stage(RunParked, reason=f"paused now by {source} (stopped: {stopped})")
            self.writer.flush()

    def _complete(self) -> None:
        for event_cls, fields in completion_events(self.state):
            self.writer.stage(event_cls, **fields)


def _released(handle: SandboxHandle, sandbox: AgentSandbox) -> Callable[[], bool]:
    return lambda: handle.started is not sandbox


def _journal_length(state: RunState, node_id: str) -> Callable[[], int]:
    return lambda: len(state.nodes[node_id].journal)
