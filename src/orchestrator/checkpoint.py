"""Checkpoints: signed, consistent cuts of a run, written to object storage.

A checkpoint holds the ledger head (sequence and hash), a digest of the folded run state,
the ledger segment since the previous checkpoint (so object storage alone holds the whole
ledger), and a content-addressed snapshot of every live sandbox's workspace, each with
the journal index it corresponds to. A manifest names all of it and is signed with the
run's Ed25519 key; manifests chain to their predecessor by digest. Objects:

    runs/RUN/checkpoints/SEQ.json   {"manifest": {...}, "signature": HEX}
    blobs/ab/DIGEST                 ledger segments (JSON Lines of seq, hash, body)
    chunks/ab/DIGEST                workspace snapshot manifests and file chunks

A workspace is snapshotted only while its node is between effects (its effect gate is
free), so the snapshot and the journal index agree; a node busy in a long command is not
waited for — its previous snapshot stays the one the manifest names.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.clock import iso
from orchestrator.codec import canonical_bytes, digest
from orchestrator.errors import CheckpointError, LedgerCorrupt, SnapshotError, StorageError
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.ledger.events import CheckpointFailed, CheckpointTaken, decode
from orchestrator.ledger.state import RunState
from orchestrator.ledger.store import LedgerStore, StoredEvent
from orchestrator.ledger.writer import LedgerWriter
from orchestrator.sandbox.snapshot.manifest import load_manifest
from orchestrator.sandbox.snapshot.scan import SnapshotIndex
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.signing import Signer, verify
from orchestrator.storage.objects import ObjectStore, get_blob, put_blob

MANIFEST_VERSION = 1


BACKOFF_CAP = 30.0
"""Seconds: failed checkpoints are retried at least this often (or every interval)."""


def retry_delay(interval: float, failures: int) -> float:
    """The wait before the next checkpoint after ``failures`` failures in a row: the
    interval, doubled per failure, capped at ``max(interval, BACKOFF_CAP)``."""
    if failures <= 0:
        return interval
    return min(interval * 2.0 ** min(failures, 32), max(interval, BACKOFF_CAP))


class Segment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    first: int
    last: int
    digest: str


class WorkspaceRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt: int
    snapshot: str
    journal_index: int


class PreviousRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    digest: str


class Manifest(BaseModel):
    """What one checkpoint holds; its canonical bytes are what the run key signs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = MANIFEST_VERSION
    run_id: str
    seq: int
    head_hash: str
    state_digest: str
    label: str
    reason: str
    ts: str
    segment: Segment
    previous: PreviousRef | None
    workspaces: dict[str, WorkspaceRef]
    signer: str

    def canonical(self) -> bytes:
        return canonical_bytes(self.model_dump(mode="json"))

    @property
    def digest(self) -> str:
        return digest(self.model_dump(mode="json"))


class SignedManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Manifest
    signature: str


def manifest_key(run_id: str, seq: int) -> str:
    return f"runs/{run_id}/checkpoints/{seq:012d}.json"


def state_digest(state: RunState) -> str:
    """A digest of what the fold says: node statuses, attempts and outputs, run status."""
    return digest(
        {
            "status": state.status,
            "nodes": {
                k: [ns.status, ns.attempt, ns.outputs, len(ns.journal)]
                for k, ns in sorted(state.nodes.items())
            },
        }
    )


def segment_bytes(rows: Sequence[StoredEvent]) -> bytes:
    """Ledger rows as JSON Lines: ``{"seq", "hash", "body"}`` with the body's exact text."""
    lines = [canonical_bytes({"seq": r.seq, "hash": r.hash, "body": r.body.decode()}) for r in rows]
    return b"".join(line + b"\n" for line in lines)


def parse_segment(data: bytes) -> list[StoredEvent]:
    rows = []
    for line in data.splitlines():
        item = json.loads(line)
        body = item["body"].encode()
        rows.append(StoredEvent(item["seq"], json.loads(body)["kind"], body, item["hash"]))
    return rows


@dataclass
class LiveWorkspace:
    """A running attempt's sandbox as the checkpointer sees it."""

    attempt: int
    gate: asyncio.Lock
    snapshot: Callable[[ChunkStore, SnapshotIndex | None], Any]
    journal_length: Callable[[], int]
    ended: Callable[[], bool] = lambda: False
    """Whether the attempt has ended (its sandbox released) since the cut began: then
    there is nothing to snapshot, nor any need to (checked holding ``gate``)."""


class Checkpointer:
    """Takes one run's checkpoints, one at a time."""

    def __init__(
        self,
        run_id: str,
        writer: LedgerWriter,
        ledger: LedgerStore,
        objects: ObjectStore,
        chunks: ChunkStore,
        signer: Signer,
        previous: PreviousRef | None = None,
        previous_head: str = GENESIS,
        workspaces: Mapping[str, WorkspaceRef] | None = None,
        interval: float = 60.0,
    ) -> None:
        self.run_id = run_id
        self.writer = writer
        self.ledger = ledger
        self.objects = objects
        self.chunks = chunks
        self.signer = signer
        self.previous = previous
        self.previous_head = previous_head
        self.workspaces: dict[str, WorkspaceRef] = dict(workspaces or {})
        self.interval = interval
        self.failures = 0  # in a row, since the last good checkpoint
        self._indexes: dict[str, SnapshotIndex] = {}
        self._lock = asyncio.Lock()

    @property
    def retry_in(self) -> float:
        """Seconds until the next checkpoint should be tried: the interval, doubled for
        each failure in a row, capped at ``max(interval, BACKOFF_CAP)``."""
        return retry_delay(self.interval, self.failures)

    async def take(
        self,
        label: str,
        reason: str,
        live: Mapping[str, LiveWorkspace],
        requester: str | None = None,
        *,
        keep_workspaces: bool = False,
    ) -> CheckpointTaken | CheckpointFailed:
        """Cut, snapshot the live workspaces, write and sign the manifest, record it.

        A checkpoint the store cannot take is recorded as CheckpointFailed, never raised:
        the run goes on, and the next cut starts where the last good one ended (chunks
        that did not reach the store are uploaded again, as the snapshot index only
        advances once a snapshot is whole). ``keep_workspaces`` keeps the snapshots of
        workspaces that are not live (a sync after the run stopped)."""
        try:
            event = await self._take(label, reason, live, requester, keep_workspaces)
        except (StorageError, SnapshotError, CheckpointError) as exc:
            self.failures += 1
            failed = self.writer.stage(
                CheckpointFailed,
                label=label,
                reason=reason,
                error=str(exc),
                failures=self.failures,
                retry_in=self.retry_in,
            )
            self.writer.flush()
            return failed
        self.failures = 0
        return event

    async def _take(
        self,
        label: str,
        reason: str,
        live: Mapping[str, LiveWorkspace],
        requester: str | None,
        keep_workspaces: bool,
    ) -> CheckpointTaken:
        async with self._lock:
            pause_ms = 0.0
            for node, workspace in live.items():
                paused = await self._snapshot(node, workspace, held=node == requester)
                pause_ms = max(pause_ms, paused)
            if not keep_workspaces:
                self.workspaces = {n: w for n, w in self.workspaces.items() if n in live}
            self.writer.flush()
            state = self.writer.state
            assert state is not None
            cut = self.writer.head_seq
            first = 0 if self.previous is None else self.previous.seq + 1
            rows = self.ledger.read(self.run_id, first - 1)
            rows = [r for r in rows if r.seq <= cut]
            manifest = Manifest(
                run_id=self.run_id,
                seq=cut,
                head_hash=self.writer.head_hash,
                state_digest=state_digest(state),
                label=label,
                reason=reason,
                ts=iso(self.writer.clock.now()),
                segment=Segment(first=first, last=cut, digest=await self._put(segment_bytes(rows))),
                previous=self.previous,
                workspaces=dict(self.workspaces),
                signer=self.signer.public,
            )
            signed = SignedManifest(
                manifest=manifest, signature=self.signer.sign(manifest.canonical())
            )
            # Once the manifest is being written it is also recorded, whatever cancels the
            # caller: a manifest with no CheckpointTaken would break the chain for the next.
            return await asyncio.shield(self._publish(signed, label, reason, pause_ms))

    async def _publish(
        self, signed: SignedManifest, label: str, reason: str, pause_ms: float
    ) -> CheckpointTaken:
        manifest = signed.manifest
        key = manifest_key(self.run_id, manifest.seq)
        body = canonical_bytes(signed.model_dump(mode="json"))
        try:
            await asyncio.to_thread(self.objects.put, key, body)
        except StorageError as exc:
            raise CheckpointError(f"checkpoint {key} could not be written: {exc}") from exc
        self.previous = PreviousRef(seq=manifest.seq, digest=manifest.digest)
        self.previous_head = manifest.head_hash
        event = self.writer.stage(
            CheckpointTaken,
            label=label,
            reason=reason,
            cut=manifest.seq,
            manifest=key,
            digest=manifest.digest,
            workspaces=len(manifest.workspaces),
            pause_ms=round(pause_ms, 3),
        )
        self.writer.flush()
        return event

    async def _put(self, data: bytes) -> str:
        return await asyncio.to_thread(put_blob, self.objects, data)

    async def _snapshot(self, node: str, workspace: LiveWorkspace, *, held: bool) -> float:
        """Snapshot one workspace; returns how long its node was held still (ms)."""
        if not held and workspace.gate.locked():
            return 0.0  # busy in an effect: keep its previous snapshot rather than wait
        started = time.monotonic()
        if held:
            await self._snap(node, workspace)
        else:
            async with workspace.gate:
                await self._snap(node, workspace)
        return (time.monotonic() - started) * 1000

    async def _snap(self, node: str, workspace: LiveWorkspace) -> None:
        if workspace.ended():
            self.workspaces.pop(node, None)
            return
        previous = self._indexes.get(node)
        snap, index = await workspace.snapshot(self.chunks, previous)
        self._indexes[node] = index
        self.workspaces[node] = WorkspaceRef(
            attempt=workspace.attempt, snapshot=snap.id, journal_index=workspace.journal_length()
        )


# ---- reading and verifying -------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointReport:
    """One checkpoint as verified: its manifest, or the first problem found."""

    key: str
    manifest: Manifest | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def list_checkpoints(objects: ObjectStore, run_id: str) -> list[str]:
    return objects.list(f"runs/{run_id}/checkpoints/")


def runs_in(objects: ObjectStore) -> dict[str, list[str]]:
    """The runs an object store holds checkpoints of: run id -> manifest keys, oldest
    first (from the listing alone; nothing read or verified)."""
    found: dict[str, list[str]] = {}
    for key in objects.list("runs/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "checkpoints" and parts[3].endswith(".json"):
            run_id = parts[1]
            found.setdefault(run_id, []).append(key)
    return {run_id: sorted(keys) for run_id, keys in sorted(found.items())}


def signature_problem(signed: SignedManifest, run_id: str, signers: Collection[str]) -> str:
    """Why a manifest is not the run's, signed by one of ``signers`` ("" if it is)."""
    manifest = signed.manifest
    if manifest.run_id != run_id:
        return f"belongs to run {manifest.run_id}"
    if manifest.signer not in signers:
        return "signed by a key not pinned for the run"
    if not verify(manifest.signer, manifest.canonical(), signed.signature):
        return "the signature does not verify"
    return ""


def read_manifest(objects: ObjectStore, key: str) -> SignedManifest:
    try:
        return SignedManifest.model_validate_json(objects.get(key))
    except ValidationError as exc:
        raise CheckpointError(
            f"checkpoint {key} is not a valid manifest: {exc.errors()[0]['msg']}"
        ) from None


def latest_manifest(
    objects: ObjectStore, run_id: str, max_seq: int, signers: Collection[str]
) -> Manifest | None:
    """The newest checkpoint of the run at or before ``max_seq`` whose manifest is whole
    and signed by one of ``signers`` (the run's pinned keys); older ones are fallbacks."""
    for key in reversed(list_checkpoints(objects, run_id)):
        try:
            signed = read_manifest(objects, key)
        except (CheckpointError, StorageError):
            continue
        manifest = signed.manifest
        if manifest.run_id != run_id or manifest.seq > max_seq:
            continue
        if manifest.signer not in signers:
            continue
        if verify(manifest.signer, manifest.canonical(), signed.signature):
            return manifest
    return None


def verify_checkpoints(
    objects: ObjectStore, chunks: ChunkStore, run_id: str, signers: Collection[str]
) -> list[CheckpointReport]:
    """Check every checkpoint of a run: signature by one of ``signers`` (the run's pinned
    keys), run, chain of manifests, the ledger segments chaining up to each head, and
    every workspace chunk's hash."""
    reports: list[CheckpointReport] = []
    previous: Manifest | None = None
    for key in list_checkpoints(objects, run_id):
        problem, manifest = _verify_one(objects, chunks, run_id, key, previous, signers)
        reports.append(CheckpointReport(key, manifest, problem))
        if manifest is not None:
            # Chain on what was recorded, so one bad checkpoint is reported once and does
            # not make every later one fail too.
            previous = manifest
    return reports


def against_ledger(
    run_id: str,
    reports: Sequence[CheckpointReport],
    rows: Sequence[StoredEvent],
    listed: Collection[str],
    signed_checkpoint: int | None,
) -> list[CheckpointReport]:
    """Cross-check a run's checkpoints with its ledger: a checkpoint newer than the ledger
    or disagreeing with it means the ledger lost or changed events; the newest manifest
    the ledger (or its signed head) names must be in the object store, else it was
    deleted (older ones may go to retention)."""
    last = len(rows) - 1
    named = {}
    for row in rows:
        if row.kind == "CheckpointTaken":
            event = decode(row.body)
            if not isinstance(event, CheckpointTaken):
                raise LedgerCorrupt(f"run {run_id}: event {row.seq} is not the checkpoint it says")
            named[event.manifest] = (row.seq, event.digest)
    out: list[CheckpointReport] = []
    for report in reports:
        m, key = report.manifest, report.key
        if report.ok and m is not None:
            problem = None
            if m.seq > last:
                problem = (
                    f"checkpoint {key} (cut at seq {m.seq}) is newer than the ledger, which "
                    f"ends at seq {last}: the ledger lost events"
                )
            elif rows[m.seq].hash != m.head_hash:
                problem = (
                    f"the ledger at seq {m.seq} differs from checkpoint {key}'s head: one of "
                    "them was rewritten"
                )
            elif key in named and named[key][1] != m.digest:
                problem = (
                    f"manifest {key} is not the one the ledger recorded at seq {named[key][0]}"
                )
            report = CheckpointReport(key, m, problem)
        out.append(report)
    # Older manifests may be dropped by retention (the next one then no longer chains);
    # the newest one the ledger recorded must be there.
    newest = max(named.items(), key=lambda item: item[1][0], default=None)
    if newest is not None:
        key, (seq, _) = newest
        if key not in listed:
            out.append(
                CheckpointReport(
                    key,
                    None,
                    f"manifest {key}, recorded in the ledger at seq {seq}, is missing from the "
                    "object store (deleted?)",
                )
            )
    if signed_checkpoint is not None:
        key = manifest_key(run_id, signed_checkpoint)
        if key not in listed and (newest is None or key != newest[0]):
            out.append(
                CheckpointReport(
                    key,
                    None,
                    f"manifest {key}, named by the run's signed head, is missing from the "
                    "object store (deleted?)",
                )
            )
    return out


def _verify_one(
    objects: ObjectStore,
    chunks: ChunkStore,
    run_id: str,
    key: str,
    previous: Manifest | None,
    signers: Collection[str],
) -> tuple[str | None, Manifest | None]:
    try:
        signed = read_manifest(objects, key)
    except (CheckpointError, StorageError) as exc:
        return str(exc), None
    manifest = signed.manifest
    if manifest.run_id != run_id:
        return f"manifest {key} belongs to run {manifest.run_id}, not {run_id}", manifest
    if manifest.signer not in signers:
        return (
            f"manifest {key} is signed by key {manifest.signer[:16]}…, which is not a key trusted "
            f"for run {run_id}",
            manifest,
        )
    if not verify(manifest.signer, manifest.canonical(), signed.signature):
        return f"manifest {key}: the signature does not verify", manifest
    expected_prev = (
        None if previous is None else PreviousRef(seq=previous.seq, digest=previous.digest)
    )
    if manifest.previous != expected_prev:
        return f"manifest {key} does not chain to the previous checkpoint", manifest
    try:
        rows = parse_segment(get_blob(objects, manifest.segment.digest))
    except (StorageError, ValueError, KeyError) as exc:
        return f"ledger segment {manifest.segment.digest} of {key}: {exc}", manifest
    head = GENESIS if previous is None else previous.head_hash
    expected_seq = manifest.segment.first
    for row in rows:
        if row.seq != expected_seq or chain_hash(head, row.body) != row.hash:
            where = f"ledger segment {manifest.segment.digest} of {key}"
            return f"{where} breaks the chain at seq {row.seq}", manifest
        head, expected_seq = row.hash, expected_seq + 1
    if expected_seq - 1 != manifest.seq or head != manifest.head_hash:
        return f"ledger segment of {key} does not end at the manifest's head", manifest
    for node, ref in sorted(manifest.workspaces.items()):
        try:
            snap = load_manifest(chunks, ref.snapshot)
            for entry in snap.entries:
                for chunk in entry.chunks:
                    chunks.get(chunk)
        except (SnapshotError, StorageError) as exc:
            return f"workspace snapshot of {node} in {key}: {exc}", manifest
    return None, manifest
