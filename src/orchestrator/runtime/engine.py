"""Runtime: the explicit object that starts, resumes, pauses, inspects and replays runs.

No process-wide singleton: every entry point (CLI, tests, embedding code) makes a
Runtime over a home directory and a ledger URL, and passes it around.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import gates, signing
from orchestrator.budget import Budget
from orchestrator.checkpoint import (
    Checkpointer,
    CheckpointReport,
    Manifest,
    PreviousRef,
    against_ledger,
    latest_manifest,
    list_checkpoints,
    parse_segment,
    read_manifest,
    verify_checkpoints,
)
from orchestrator.clock import Clock, SystemClock, iso
from orchestrator.codec import canonical_bytes
from orchestrator.config import RunConfig
from orchestrator.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    LedgerCorrupt,
    PlanInvalid,
    RunNotFound,
    RunStateError,
    StorageError,
)
from orchestrator.gates import Decision
from orchestrator.ledger.chain import GENESIS
from orchestrator.ledger.events import (
    BaseEvent,
    BudgetOverrun,
    BudgetReplaced,
    CheckpointFailed,
    CheckpointTaken,
    Event,
    PlanSourceRecorded,
    RunResumed,
    RunStarted,
    SandboxChosen,
    decode,
)
from orchestrator.ledger.head import SignedHead
from orchestrator.ledger.state import TERMINAL_RUN, RunState
from orchestrator.ledger.store import LedgerStore, StoredEvent, open_store
from orchestrator.ledger.verify import ChainReport, verify_signed
from orchestrator.ledger.writer import LedgerWriter
from orchestrator.plan import Plan
from orchestrator.runtime.handle import RunHandle
from orchestrator.runtime.home import check_home
from orchestrator.runtime.llm import RunModels
from orchestrator.runtime.loader import load_plan, plan_ref_of
from orchestrator.runtime.lock import RunLock, owner_pid
from orchestrator.runtime.replay import ReplayReport, gc_paused, replay
from orchestrator.runtime.sandboxes import SandboxBroker
from orchestrator.runtime.scheduler import Scheduler
from orchestrator.runtime.sources import fetch_source, load_recorded, read_source, store_source
from orchestrator.runtime.workdirs import remove_run
from orchestrator.sandbox.roots import WorkspacePolicy, check_roots, default_roots
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.signing import fingerprint
from orchestrator.sinks import SinkConfig
from orchestrator.storage.objects import ObjectStore, get_blob, open_object_store
from orchestrator.trust import TrustStore

Listener = Callable[[BaseEvent], None]
DEFAULT_STORE_GRACE = 60.0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of ``orchestrator ls``."""

    run_id: str
    plan: str
    status: str
    events: int
    created_at: str
    updated_at: str


def default_home() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_HOME", ".orchestrator"))


def default_store_grace() -> float:
    """Seconds a run retries its last checkpoint while the object store is down."""
    raw = os.environ.get("ORCHESTRATOR_STORE_GRACE", "")
    try:
        grace = float(raw) if raw else DEFAULT_STORE_GRACE
    except ValueError:
        grace = -1.0
    if not 0 <= grace <= 86400:
        raise ConfigError(
            f"ORCHESTRATOR_STORE_GRACE={raw!r}: expected a number of seconds from 0 to 86400"
        )
    return grace


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class Runtime:
    """Runs plans against one ledger store and one home directory."""

    def __init__(
        self,
        home: Path | str | None = None,
        ledger: str | LedgerStore | None = None,
        clock: Clock | None = None,
        sandbox: str | None = None,
        objects: str | None = None,
        store_grace: float | None = None,
        trust: Path | str | None = None,
        keys: Path | None = None,
        *,
        create: bool = True,
    ) -> None:
        """``create=False`` for callers that only read: the home and its ledger are then
        never created (a missing ledger reads as empty)."""
        self.home = (Path(home) if home is not None else default_home()).absolute()
        check_home(self.home, create=create)
        self.trust = TrustStore(None if trust is None else Path(trust))
        self.keys = (keys or signing.key_dir()).absolute()
        """Run signing keys live here, outside every tree a run works on."""
        signing.adopt_legacy(self.home / "keys" / "runs", self.keys / "runs")
        self.sandbox = sandbox or os.environ.get("ORCHESTRATOR_SANDBOX")
        self.objects_given = objects or os.environ.get("ORCHESTRATOR_OBJECTS") or None
        """The object store named by the caller; None: each run's own (else the home's)."""
        self.objects_url = self.objects_given or str(self.home / "objects")
        self._objects: ObjectStore | None = None
        self._run_objects: dict[str, ObjectStore] = {}
        self.store_grace = store_grace if store_grace is not None else default_store_grace()
        if isinstance(ledger, str) or ledger is None:
            url = ledger or os.environ.get("ORCHESTRATOR_LEDGER")
            ledger = open_store(url or f"sqlite:///{self.home.resolve()}/ledger.db", create=create)
        self.store: LedgerStore = ledger
        self.clock: Clock = clock or SystemClock()

    @property
    def objects(self) -> ObjectStore:
        """The object store checkpoints go to (opened on first use)."""
        if self._objects is None:
            self._objects = open_object_store(self.objects_url)
        return self._objects

    def objects_of(self, run_id: str) -> ObjectStore:
        """The object store holding ``run_id``'s checkpoints: the one the caller named,
        else the one the run recorded when it started, else the home's."""
        if self.objects_given is not None or not self.store.has_run(run_id):
            return self.objects
        url = self.state(run_id).config.get("objects")
        if not url or url == self.objects_url:
            return self.objects
        if url not in self._run_objects:
            self._run_objects[url] = open_object_store(url)
        return self._run_objects[url]

    def where(self) -> tuple[str, ...]:
        """The global options that find this runtime's runs from any directory: the home,
        and the ledger unless it is the home's own (a run records its object store)."""
        args = ["--home", str(self.home)]
        url = self.store.url
        # a URL with a password is never printed: whoever approves sets ORCHESTRATOR_LEDGER
        if url != f"sqlite:///{self.home.resolve()}/ledger.db" and "@" not in url:
            args += ["--ledger", url]
        return tuple(args)

    def check_objects(self, action: str, run_id: str | None = None) -> None:
        """Refuse to ``action`` (a phrase: "start the run") while the object store (of
        ``run_id``) cannot be used: a bad endpoint, an unreachable server, a missing
        bucket, bad credentials."""
        try:
            (self.objects if run_id is None else self.objects_of(run_id)).check()
        except StorageError as exc:
            raise StorageError(
                f"cannot {action}: the checkpoint object store is not usable: {exc}. Nothing "
                "was recorded; fix --objects (or ORCHESTRATOR_OBJECTS), or wait until the "
                "store is back, and try again."
            ) from None

    def chunks(self, run_id: str | None = None) -> ChunkStore:
        return ChunkStore(self.objects if run_id is None else self.objects_of(run_id))

    def close(self) -> None:
        self.store.close()
        self.trust.close()
        for store in (self._objects, *self._run_objects.values()):
            if store is not None:
                store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading --------------------------------------------------------------------------

    def rows(self, run_id: str) -> list[StoredEvent]:
        if not self.store.has_run(run_id):
            known = [r.run_id for r in self.store.runs()][-3:]
            hint = f" (latest: {', '.join(known)})" if known else " (there are no runs yet)"
            raise RunNotFound(f"there is no run {run_id!r} in {self.store.url}{hint}")
        return self.store.read(run_id)

    def state(self, run_id: str, *, verify: bool = False) -> RunState:
        if verify:
            return RunState.fold(self._require_whole(run_id)[1])
        return RunState.fold(decode(r.body) for r in self.rows(run_id))

    def runs(self) -> list[RunSummary]:
        """Every run in the ledger with its status, without folding whole histories."""
        out = []
        for row in self.store.runs():
            if row.status_kind == "RunCompleted":
                status = str(row.status_event.get("status"))
            elif row.status_kind == "RunParked":
                status = "parked"
            elif row.status_kind == "RunAborted":
                status = "aborted"
            else:
                status = "running" if self.owner(row.run_id) else "interrupted"
            out.append(
                RunSummary(
                    row.run_id, row.plan_name, status, row.last_seq + 1, row.created_at, row.last_ts
                )
            )
        return out

    def live_status(self, state: RunState) -> str:
        """The fold's status, refined: a non-terminal run with no live owner is interrupted."""
        if state.status in ("running", "pausing", "aborting") and self.owner(state.run_id) is None:
            return "interrupted"
        return state.status

    def verify(self, run_id: str) -> ChainReport:
        """The run's chain re-hashed and checked against its signed heads and pinned key."""
        return self._verified(run_id)[1]

    def _verified(self, run_id: str) -> tuple[list[StoredEvent], ChainReport]:
        """The run's events and their verification, read consistently while a live run
        commits: the trust directory's head first (it is written after each commit, so it
        never names more than the ledger holds), then events and the ledger's signed head
        in one read transaction."""
        self.rows(run_id)  # a run that does not exist is named as such
        kept = self.trust.head(run_id)
        rows, stored = self.store.read_signed(run_id)
        return rows, verify_signed(rows, self.trust.pinned(run_id), stored, kept)

    def owner(self, run_id: str) -> int | None:
        """The pid of the live process driving the run, if any."""
        return owner_pid(self.home, run_id)

    def _require_whole(self, run_id: str) -> tuple[list[StoredEvent], tuple[Event, ...]]:
        """The run's events, raw and decoded, once the chain and its signed heads are
        verified."""
        rows, report = self._verified(run_id)
        if not report.ok:
            raise LedgerCorrupt(
                f"run {run_id}'s ledger fails verification at seq {report.bad_seq}: "
                f"{report.problem}; refusing to use a tampered history"
            )
        return rows, report.decoded

    # ---- running --------------------------------------------------------------------------

    async def start(
        self,
        plan: Plan,
        inputs: Mapping[str, Any] | None = None,
        config: RunConfig | None = None,
        *,
        plan_ref: str = "",
        listeners: tuple[Listener, ...] = (),
        on_start: Callable[[str], None] | None = None,
    ) -> RunState:
        """Validate, record RunStarted, and drive the run until it ends or parks."""
        config = config or RunConfig()
        roots = config.workspace_roots
        if roots is None:
            roots = default_roots(self.home, self.keys)
        roots = check_roots(roots, self.home, self.keys)
        config = config.model_copy(
            update={"workspace_roots": roots, "objects": self._recorded_objects()}
        )
        problems = plan.validate(config)
        if problems:
            raise PlanInvalid(problems)
        values = self._check_inputs(plan, inputs or {})
        plan_ref = plan_ref or plan_ref_of(plan)
        self.check_objects("start the run")
        source = read_source(plan_ref)
        now = self.clock.now()
        run_id = new_run_id(now)
        lock = RunLock(self.home, run_id)
        lock.acquire()
        try:
            signer = signing.load_or_create(self._key_path(run_id))
            self.trust.pin(run_id, signer.public)
            writer = LedgerWriter(self.store, run_id, self.clock, signer=signer, trust=self.trust)
            writer.listeners.extend(listeners)
            started = writer.stage(
                RunStarted,
                run_id=run_id,
                plan_ref=plan_ref,
                plan_digest=plan.digest,
                plan=plan.describe(),
                inputs=values,
                config=config.model_dump(mode="json"),
                seed=secrets.randbits(62),
            )
            writer.state = RunState.start(started)
            if source is not None:
                digest = store_source(self.objects, run_id, source)
                writer.stage(PlanSourceRecorded, path=source.path, digest=digest)
            head = writer.signed_head()
            self.store.create_run(run_id, plan.name, iso(now), writer.take_staged(), head)
            writer.publish(head)
            if on_start is not None:
                on_start(run_id)
            return await self._drive(plan, writer, config, resumed=False)
        finally:
            lock.release()

    async def submit(
        self,
        plan: Plan,
        inputs: Mapping[str, Any] | None = None,
        config: RunConfig | None = None,
        *,
        listeners: tuple[Listener, ...] = (),
    ) -> RunHandle:
        """Start a run in the background of this event loop and return its handle once it
        is recorded (a plan or inputs that fail their checks raise here, nothing recorded)."""
        recorded: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self.start(plan, inputs, config, listeners=listeners, on_start=recorded.set_result)
        )
        await asyncio.wait((recorded, task), return_when=asyncio.FIRST_COMPLETED)
        if not recorded.done():
            task.result()  # it ended before its run was recorded: raise why
            raise RunStateError(f"plan {plan.name!r} ended before its run was recorded")
        return RunHandle(self, recorded.result(), task)

    async def approve(
        self,
        run_id: str,
        gate: str,
        key: Path | str | signing.Signer,
        *,
        node: str | None = None,
        reject: bool = False,
        comment: str = "",
        redo: str | None = None,
    ) -> str:
        """Sign a decision with ``key`` (a private key file or a Signer) for each node
        parked at ``gate`` (or only ``node``) and hand it to the run: ``delivered`` to the
        process driving it, or ``resumed`` (recorded, and the run continued here until it
        ended or parked again). A refused decision (not an approver, nothing waiting)
        raises DecisionRefused and changes nothing. ``redo`` (with ``reject``): send the
        work back to that upstream node, which reruns with ``comment`` in its
        ``ctx.feedback``, and everything downstream of it after it."""
        decisions = self.decisions(run_id, gate, key, node, reject, comment, redo)
        return await self.decide(run_id, decisions)

    def decisions(
        self,
        run_id: str,
        gate: str,
        key: Path | str | signing.Signer,
        node: str | None = None,
        reject: bool = False,
        comment: str = "",
        redo: str | None = None,
    ) -> list[Decision]:
        """Signed decisions for the nodes parked at ``gate``, each checked against the run."""
        signer = key if isinstance(key, signing.Signer) else signing.load(Path(key).expanduser())
        state = self.state(run_id, verify=True)
        now = self.clock.now()
        decisions = gates.decide(state, gate, not reject, comment, signer, now, node, redo)
        for decision in decisions:
            gates.check(state, decision, now)
        return decisions

    def _recorded_objects(self) -> str:
        """The object store URL a new run records: a directory made absolute."""
        url = self.objects_url
        if "://" in url:
            return url
        return str(Path(url).expanduser().absolute())

    async def resume(
        self,
        run_id: str,
        plan: Plan | None = None,
        *,
        listeners: tuple[Listener, ...] = (),
        reason: str = "resume",
        budget: Budget | None = None,
        decisions: list[Decision] | None = None,
    ) -> RunState:
        """Continue a parked, aborted or interrupted run from its ledger, in this process.

        ``budget`` gives the run a fresh envelope (required after a budget abort);
        ``decisions`` are gate decisions to record first (each verified: a refused one
        raises DecisionRefused before anything is written)."""
        lock = RunLock(self.home, run_id)
        self.rows(run_id)  # a run that does not exist is named before the lock
        lock.acquire()
        try:
            rows, events = self._require_whole(run_id)
            state = RunState.fold(events)
            if state.status in TERMINAL_RUN:
                raise RunStateError(
                    f"run {run_id} already ended ({state.status}); nothing to resume"
                )
            if state.status in ("aborted", "aborting") and budget is None:
                overrun = state.refused
                why = (
                    f"node {overrun.node} used up its own budget ({', '.join(overrun.over)})"
                    if isinstance(overrun, BudgetOverrun)
                    else "it stopped at its budget ceiling"
                )
                raise RunStateError(
                    f"run {run_id} was aborted: {why}; resume it with a fresh "
                    f"envelope: orchestrator resume {run_id} --budget "
                    "tokens=N,compute_h=H,spend=USD"
                )
            for decision in decisions or ():
                gates.check(state, decision, self.clock.now())
            self.check_objects(f"resume run {run_id}", run_id)
            from_ref = plan is None
            plan = plan or self._recorded_plan(run_id, state.plan_ref)
            if plan.describe()["nodes"] != state.plan["nodes"]:
                raise RunStateError(
                    f"run {run_id} was started with a differently wired plan; code changes "
                    "inside nodes are fine, but nodes and wiring must stay as recorded"
                )
            writer = self._continuing(run_id, rows[-1], state)
            writer.listeners.extend(listeners)
            writer.stage(RunResumed, reason=reason)
            if from_ref:
                self._record_changed_source(writer, state)
            if budget is not None:
                writer.stage(BudgetReplaced, ceiling=budget, source=reason)
            config = RunConfig.model_validate(state.config)
            return await self._drive(plan, writer, config, resumed=True, decisions=decisions)
        finally:
            lock.release()

    def _record_changed_source(self, writer: LedgerWriter, state: RunState) -> None:
        """A run that stored its plan source and resumes with an edited one stores the
        new text too: the attempts from here on run it, and ``replay --recorded`` follows."""
        if state.source is None:
            return
        source = read_source(state.plan_ref)
        if source is not None and source.digest != state.source.digest:
            digest = store_source(self.objects_of(state.run_id), state.run_id, source)
            writer.stage(PlanSourceRecorded, path=source.path, digest=digest)

    async def _drive(
        self,
        plan: Plan,
        writer: LedgerWriter,
        config: RunConfig,
        *,
        resumed: bool,
        decisions: list[Decision] | None = None,
    ) -> RunState:
        run_id = writer.run_id
        state = writer.state
        assert state is not None

        def controls() -> list[tuple[str, str]]:
            return [(c.command, c.source) for c in self.store.take_controls(run_id)]

        def chosen(backend: str, reason: str) -> None:
            writer.stage(SandboxChosen, backend=backend, reason=reason)

        policy = WorkspacePolicy(config.workspace_roots, self.home, self.keys)
        broker = SandboxBroker(
            self.home, self.sandbox or config.sandbox, config.warm, chosen, policy
        )
        signer = writer.signer
        assert signer is not None
        models = RunModels(config.llm, config.model) if config.llm else None
        scheduler = Scheduler(
            plan,
            writer,
            self.clock,
            self.home,
            config,
            poll_controls=controls,
            sandboxes=broker,
            checkpointer=self._checkpointer(writer, signer, config.checkpoint_interval, resumed),
            signer=signer,
            models=models,
            receipt_sinks=config.receipts or [self.receipt_file(run_id)],
            store_grace=self.store_grace,
            where=self.where(),
        )
        points = {}
        if resumed:
            latest = latest_manifest(
                self.objects_of(run_id), run_id, writer.head_seq, self.trust.pinned(run_id)
            )
            points = latest.workspaces if latest is not None else {}
        try:
            final = await scheduler.run(resumed=resumed, restore_points=points, decisions=decisions)
        finally:
            await broker.close()
            if models is not None:
                await models.aclose()
        if final.status in TERMINAL_RUN:  # it never resumes: its attempts' disks go
            await asyncio.to_thread(remove_run, self.home, run_id)
        return final

    def receipt_file(self, run_id: str) -> SinkConfig:
        """The default receipt sink: a JSONL file per run under the home."""
        return SinkConfig(kind="file", url=str(self.home / "receipts" / f"{run_id}.jsonl"))

    async def decide(self, run_id: str, decisions: list[Decision], wait: float = 30.0) -> str:
        """Hand signed gate decisions to the run: to its live process if it has one (and
        wait until they are on the record), else record them here and continue the run in
        this process. Every decision is checked first; a refused one changes nothing."""
        state = self.state(run_id, verify=True)
        for decision in decisions:
            gates.check(state, decision, self.clock.now())
        if self.owner(run_id) is None:
            await self.resume(run_id, decisions=decisions, reason="gate decision")
            return "resumed"
        for decision in decisions:
            self.store.send_control(run_id, "decide", decision.model_dump_json())
        wanted = {d.signature for d in decisions}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if wanted <= self.state(run_id).decisions_seen:
                return "delivered"
            if self.owner(run_id) is None:
                # it parked and exited before reading them; a run that parks never polls
                # its controls again, so record them here (the queued copies are refused
                # as already recorded if anything reads them later)
                if wanted <= self.state(run_id).decisions_seen:
                    return "delivered"
                await self.resume(run_id, decisions=decisions, reason="gate decision")
                return "resumed"
            await asyncio.sleep(0.1)
        raise RunStateError(
            f"run {run_id}'s process (pid {self.owner(run_id)}) did not record the decision "
            f"within {wait:g}s; it stays queued and is applied when the run reads its controls"
        )

    def signer_public(self, run_id: str) -> str | None:
        """The run's public key as this home knows it (receipts and aborts are signed
        with the run's key)."""
        self.rows(run_id)
        return self._signer_of(run_id)

    def _checkpointer(
        self, writer: LedgerWriter, signer: signing.Signer, interval: float, resumed: bool
    ) -> Checkpointer:
        """The run's checkpointer, chained to its latest checkpoint (a new run has none:
        nothing is asked of the store after its RunStarted is recorded)."""
        run_id = writer.run_id
        objects = self.objects_of(run_id)
        latest = (
            latest_manifest(objects, run_id, writer.head_seq, self.trust.pinned(run_id))
            if resumed
            else None
        )
        previous = None if latest is None else PreviousRef(seq=latest.seq, digest=latest.digest)
        head = GENESIS if latest is None else latest.head_hash
        return Checkpointer(
            run_id,
            writer,
            self.store,
            objects,
            ChunkStore(objects),
            signer,
            previous,
            head,
            workspaces=None if latest is None else latest.workspaces,
            interval=interval,
        )

    async def sync_checkpoints(self, run_id: str) -> CheckpointTaken | None:
        """Upload what the object store lacks of a run that is not running: the ledger
        since its last good checkpoint, in a new signed checkpoint recorded in the ledger
        (snapshots of workspaces carry over from that checkpoint). None when the store
        already holds the whole ledger."""
        self.rows(run_id)
        lock = RunLock(self.home, run_id)
        lock.acquire()
        try:
            self.check_objects(f"sync run {run_id}'s checkpoints", run_id)
            rows, events = self._require_whole(run_id)
            try:
                signer = self._run_signer(run_id)
            except RunStateError as exc:
                raise CheckpointError(
                    f"cannot sync run {run_id}'s checkpoints: {exc}; sync from the home "
                    "that ran it, which holds the run's key"
                ) from None
            writer = self._continuing(run_id, rows[-1], RunState.fold(events), signer)
            checkpointer = self._checkpointer(writer, signer, 0.0, resumed=True)
            covered = -1 if checkpointer.previous is None else checkpointer.previous.seq
            if all(r.kind == "CheckpointTaken" for r in rows[covered + 1 :]):
                return None
            event = await checkpointer.take("sync", "checkpoints sync", {}, keep_workspaces=True)
            if isinstance(event, CheckpointFailed):
                raise StorageError(f"cannot sync run {run_id}'s checkpoints: {event.error}")
            return event
        finally:
            lock.release()

    def restore_ledger(self, run_id: str, signer: str | None = None) -> int:
        """Rebuild a run's ledger from its checkpoints in this Runtime's object store, when
        the local ledger has lost it; returns the number of events restored (0 if the
        local ledger already has the run). Every checkpoint up to the one used must verify,
        since together their segments are the ledger. Manifests must be signed by
        ``signer`` (hex public key, which the caller vouches for) or else by a key pinned
        for the run in the trust directory; with neither, nothing is restored. The
        restored ledger is signed with this home's key for the run, which is pinned."""
        if self.store.has_run(run_id):
            return 0
        trusted = [signer] if signer else self.trust.pinned(run_id)
        if not trusted:
            raise CheckpointError(self._unpinned(run_id))
        reports = verify_checkpoints(self.objects, self.chunks(), run_id, trusted)
        if not reports:
            raise RunNotFound(
                f"there is no run {run_id!r} and no checkpoint of it in {self.objects.url}"
            )
        usable: list[Manifest] = []
        for report in reports:
            if not report.ok or report.manifest is None:
                if not usable:
                    raise CheckpointError(
                        f"cannot restore run {run_id} from {self.objects.url}: {report.problem}"
                    )
                break  # a later checkpoint is damaged or half-written: use the ones before
            usable.append(report.manifest)
        kept = self.trust.head(run_id)
        named = None if kept is None or not kept.verifies(trusted) else kept.checkpoint
        if named is not None and named > usable[-1].seq:
            raise CheckpointError(
                f"cannot restore run {run_id} from {self.objects.url}: the run's signed head "
                f"names a checkpoint cut at seq {named}, but the newest usable checkpoint "
                f"there is cut at seq {usable[-1].seq}; the newest manifest was deleted or "
                "damaged. Nothing was written."
            )
        rows = [
            row
            for manifest in usable
            for row in parse_segment(get_blob(self.objects, manifest.segment.digest))
        ]
        # verify_checkpoints has already chained every segment from seq 0 to its head;
        # resume verifies and decodes the rebuilt ledger once more before folding it.
        first = decode(rows[0].body)
        if not isinstance(first, RunStarted):
            raise CheckpointError(f"run {run_id}'s ledger in {self.objects.url} lacks RunStarted")
        for key in trusted:
            self.trust.pin(run_id, key)
        own = signing.load_or_create(self._key_path(run_id))
        self.trust.pin(run_id, own.public)
        last = decode(rows[-1].body)
        checkpoint = usable[-1].seq
        head = SignedHead.sign(own, run_id, last.seq, rows[-1].hash, checkpoint)
        self.store.create_run(run_id, str(first.plan["name"]), first.ts, rows, head)
        self.trust.put_head(head)
        return len(rows)

    def _unpinned(self, run_id: str) -> str:
        """Why a run whose key is not pinned is not restored, naming the key it carries."""
        named = ""
        try:
            keys = list_checkpoints(self.objects, run_id)
            if keys:
                public = read_manifest(self.objects, keys[0]).manifest.signer
                named = (
                    f" Its checkpoints say they are signed by {fingerprint(public)} "
                    f"({public}); if you started this run, or trust whoever did, run the "
                    f"command again with --signer {public}."
                )
        except (CheckpointError, StorageError, ValueError):
            pass
        return (
            f"refusing to restore run {run_id} from {self.objects.url}: no key is pinned for "
            f"it in {self.trust.root}, so nothing says which key its checkpoints must carry, "
            "and anyone who can write to the object store could have planted it."
            f"{named or ' Pass --signer KEY with the run key you trust.'} Nothing was written."
        )

    def checkpoints(self, run_id: str) -> list[CheckpointReport]:
        """Every checkpoint of a run, verified (signatures by a pinned key, chunks, ledger
        segments) and cross-checked with the ledger, itself verified."""
        self.rows(run_id)
        # Manifests, then the ledger, then the listing: of a live run, every manifest read
        # is covered by the ledger read after it, and every manifest that ledger names is
        # in the listing made after it.
        objects = self.objects_of(run_id)
        reports = verify_checkpoints(
            objects, ChunkStore(objects), run_id, self.trust.pinned(run_id)
        )
        rows, ledger = self._verified(run_id)
        listed = set(list_checkpoints(objects, run_id))
        out = against_ledger(run_id, reports, rows, listed, ledger.checkpoint)
        if not ledger.ok:
            problem = f"the run's ledger fails verification at seq {ledger.bad_seq}: "
            out.append(CheckpointReport("ledger", None, problem + str(ledger.problem)))
        return out

    def _continuing(
        self,
        run_id: str,
        head: StoredEvent,
        state: RunState,
        signer: signing.Signer | None = None,
    ) -> LedgerWriter:
        """A writer that appends to a recorded run after ``head``, signing with its key."""
        writer = LedgerWriter(
            self.store,
            run_id,
            self.clock,
            head.seq,
            head.hash,
            signer=signer or self._run_signer(run_id),
            trust=self.trust,
        )
        writer.state = state
        return writer

    def _run_signer(self, run_id: str) -> signing.Signer:
        """The run's private key from this home; it must be the key pinned for the run."""
        path = self._key_path(run_id)
        pinned = self.trust.pinned(run_id)
        if not path.exists() or not pinned:
            raise RunStateError(
                f"run {run_id} cannot continue here: its signing key {path} is missing "
                f"or no key is pinned for it in {self.trust.root}"
            )
        signer = signing.load(path)
        if signer.public != pinned[-1]:
            raise RunStateError(
                f"run {run_id} cannot continue here: the key in {path} "
                f"({fingerprint(signer.public)}) is not the run's pinned key "
                f"({fingerprint(pinned[-1])}); it was replaced"
            )
        return signer

    def _signer_of(self, run_id: str) -> str | None:
        """The run's current public key as pinned in the trust directory."""
        pinned = self.trust.pinned(run_id)
        return pinned[-1] if pinned else None

    def _key_path(self, run_id: str) -> Path:
        return self.keys / "runs" / f"{run_id}.key"

    def pause(self, run_id: str, source: str = "cli", *, now: bool = False) -> None:
        """Ask the process driving the run to drain in-flight nodes and park; ``now``:
        snapshot their workspaces, stop them and park at once (resume continues them from
        the snapshots)."""
        state = self.state(run_id)
        if state.status in TERMINAL_RUN:
            raise RunStateError(f"run {run_id} already ended ({state.status}); nothing to pause")
        if self.owner(run_id) is None:
            raise RunStateError(
                f"run {run_id} is not running in any process (status: {state.status}); "
                f"it is already stopped — continue it with `orchestrator resume {run_id}`"
            )
        self.store.send_control(run_id, "pause-now" if now else "pause", source)

    async def replay(
        self, run_id: str, plan: Plan | None = None, *, recorded: bool = False
    ) -> ReplayReport:
        """Replay a run against ``plan``, or the plan its reference loads today, or with
        ``recorded`` the plan source the run stored when it started."""
        with gc_paused():
            rows, events = self._require_whole(run_id)
            first = events[0]
            assert isinstance(first, RunStarted)
            if recorded:
                sources = self._stored_plans(run_id, first.plan_ref, events)
                return await replay(next(iter(sources.values())), rows, events, sources)
            if plan is None:
                plan = self._recorded_plan(run_id, first.plan_ref)
            return await replay(plan, rows, events)

    def _stored_plans(self, run_id: str, plan_ref: str, events: Sequence[Event]) -> dict[str, Plan]:
        """The plans loaded from the sources the run stored, by digest, first one first."""
        stored = [e for e in events if isinstance(e, PlanSourceRecorded)]
        if not plan_ref or not stored or stored[0] is not events[1]:
            raise RunStateError(
                f"run {run_id} stored no plan source (it was started by a version that did "
                "not store one, or from a plan no module-level name holds), so it cannot be "
                f"replayed against the code that ran; `orchestrator replay {run_id}` checks "
                "it against today's code instead"
            )
        self.check_objects(f"read run {run_id}'s recorded plan source")
        plans: dict[str, Plan] = {}
        for event in stored:
            if event.digest not in plans:
                source = fetch_source(self.objects_of(run_id), run_id, event.path, event.digest)
                plans[event.digest] = load_recorded(source, plan_ref)
        return plans

    @staticmethod
    def _recorded_plan(run_id: str, plan_ref: str) -> Plan:
        """The plan the run recorded a reference to; a run started from Python with a plan
        no module-level name holds recorded none, and needs it given."""
        if not plan_ref:
            raise RunStateError(
                f"run {run_id} recorded no plan reference (its plan was not a module-level "
                "name when it started); pass the plan: runtime.resume(run_id, plan) or "
                "runtime.replay(run_id, plan)"
            )
        return load_plan(plan_ref)

    @staticmethod
    def _check_inputs(plan: Plan, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if plan.inputs is None:
            if inputs:
                raise InputError(
                    f"plan {plan.name!r} declares no inputs, but got {', '.join(sorted(inputs))}"
                )
            return {}
        try:
            model = plan.inputs.model_validate(dict(inputs))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'inputs'}: {e['msg']}"
                for e in exc.errors()
            )
            fields = ", ".join(plan.inputs.model_fields)
            raise InputError(
                f"bad inputs for plan {plan.name!r}: {problems} (declared inputs: {fields})"
            ) from None
        values: dict[str, Any] = model.model_dump(mode="json")
        try:
            canonical_bytes(values)
        except ValueError as exc:
            raise InputError(
                f"bad inputs for plan {plan.name!r}: {exc} (NaN or infinity)"
            ) from None
        return values
