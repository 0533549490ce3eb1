"""Garbage collection of checkpoint storage: chunks and blobs no checkpoint refers to.

Checkpoints (:mod:`orchestrator.checkpoint`) are the roots, with the workspace snapshots
interrupted runs resume from (:func:`resume_points`). An object is referenced
when some checkpoint manifest ``runs/RUN/checkpoints/SEQ.json`` in the store (of any run)
names it: the manifest's ledger segment blob ``blobs/ab/DIGEST``, and for each workspace
it holds, the snapshot manifest chunk ``chunks/ab/ID`` and every chunk that snapshot's
entries name. Every other well-formed ``chunks/ab/DIGEST`` and ``blobs/ab/DIGEST`` object
is garbage; nothing else in the store is ever touched.

Deleting on incomplete knowledge could destroy a checkpoint that is meant to be kept, so
:func:`collect_garbage` deletes nothing at all (:class:`GcRefused`) when any manifest
cannot be read or parsed, or any snapshot manifest one of them names cannot be loaded.
Signatures are not checked: a manifest that parses keeps what it names, whoever signed
it. A chunk a snapshot names but the store lacks is counted as ``missing``.

Concurrent writers: the candidates are listed *before* the manifests are read, so objects
written during a collection are never deleted, and a checkpoint completed before its
manifest is read keeps what it names. What no ordering fixes is a checkpoint in progress
that reuses (deduplicates against) an object already listed as garbage, or whose manifest
lands after the manifests were read: collect only while nothing writes checkpoints to
the store (``orchestrator gc`` refuses while any run of its home is live; an object store
shared by several homes must be quiesced by hand).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.checkpoint import read_manifest
from orchestrator.errors import CheckpointError, GcRefused, RunBusy, SnapshotError, StorageError
from orchestrator.sandbox.snapshot.manifest import load_manifest
from orchestrator.sandbox.snapshot.store import CHUNK_KEY_PREFIX, ChunkStore
from orchestrator.storage.localdir import LocalDirStore
from orchestrator.storage.objects import ObjectStore

if TYPE_CHECKING:
    from orchestrator.runtime.engine import Runtime

__all__ = [
    "GcRefused",
    "GcReport",
    "collect_garbage",
    "live_runs",
    "require_idle",
    "resume_points",
]

BLOB_KEY_PREFIX = "blobs"
_MANIFEST_KEY = re.compile(r"runs/[^/]+/checkpoints/[^/]+")
_CONTENT_KEY = re.compile(r"(chunks|blobs)/([0-9a-f]{2})/([0-9a-f]{64})")
_WORKERS = 8


@dataclass
class GcReport:
    """What one collection found and removed (or, in a dry run, would remove)."""

    dry_run: bool
    manifests: int = 0
    """Checkpoint manifests read (the roots)."""
    snapshots: int = 0
    """Distinct workspace snapshots they name, each loaded."""
    kept_chunks: int = 0
    kept_blobs: int = 0
    deleted_chunks: int = 0
    """Unreferenced chunks removed (in a dry run: that would be removed)."""
    deleted_blobs: int = 0
    deleted_bytes: int | None = None
    """Their stored size, for a local store; None where sizes are not cheap to know."""
    missing: int = 0
    """Objects a manifest names that the store does not hold (those checkpoints are broken)."""
    ignored: int = 0
    """Keys under ``chunks/`` or ``blobs/`` that are not content addresses: left alone."""
    garbage: list[str] = field(default_factory=list)
    """The keys removed (or that would be), sorted."""

    @property
    def deleted(self) -> int:
        return self.deleted_chunks + self.deleted_blobs

    def summary(self) -> str:
        """One paragraph for people."""
        size = "" if self.deleted_bytes is None else f" ({_human(self.deleted_bytes)})"
        verb = "would delete" if self.dry_run else "deleted"
        text = (
            f"{self.manifests} checkpoint manifest(s), {self.snapshots} workspace snapshot(s); "
            f"{verb} {self.deleted_chunks} chunk(s) and {self.deleted_blobs} blob(s){size}; "
            f"kept {self.kept_chunks} chunk(s) and {self.kept_blobs} blob(s)"
        )
        if self.missing:
            text += f"; {self.missing} referenced object(s) are MISSING from the store"
        if self.ignored:
            text += f"; left alone {self.ignored} key(s) that are not content addresses"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "manifests": self.manifests,
            "snapshots": self.snapshots,
            "kept_chunks": self.kept_chunks,
            "kept_blobs": self.kept_blobs,
            "deleted_chunks": self.deleted_chunks,
            "deleted_blobs": self.deleted_blobs,
            "deleted_bytes": self.deleted_bytes,
            "missing": self.missing,
            "ignored": self.ignored,
            "garbage": self.garbage,
        }


def collect_garbage(
    objects: ObjectStore,
    chunks: ChunkStore,
    *,
    dry_run: bool = False,
    guard: Callable[[], None] | None = None,
    keep: Iterable[str] = (),
) -> GcReport:
    """Remove the chunks and blobs of ``objects`` that no checkpoint manifest refers to.

    ``chunks`` is the chunk store on ``objects`` (``ChunkStore(objects)``), used to
    load and verify snapshot manifests. Raises :class:`GcRefused`, having deleted
    nothing, if any checkpoint manifest or snapshot manifest cannot be read. ``keep``
    names more snapshots to keep (:func:`resume_points`). ``guard``, if given, is called
    once more right before the first deletion and may raise to stop the collection (the
    CLI re-checks there that no run has gone live meanwhile).
    """
    report = GcReport(dry_run=dry_run)
    # Candidates first: anything written after this listing is never deleted.
    candidates: dict[str, tuple[str, str]] = {}  # key -> (kind, digest)
    for prefix in (CHUNK_KEY_PREFIX, BLOB_KEY_PREFIX):
        for key in _list(objects, f"{prefix}/"):
            match = _CONTENT_KEY.fullmatch(key)
            if match is None or match.group(3)[:2] != match.group(2):
                report.ignored += 1
                continue
            candidates[key] = (match.group(1), match.group(3))

    referenced_blobs, snapshot_ids = _roots(objects, report)
    # a point whose snapshot is already gone cannot be resumed from: nothing to keep
    kept = [snap for snap in keep if chunks.has(snap)]
    snapshot_ids = list(dict.fromkeys([*snapshot_ids, *kept]))
    referenced_chunks = set(snapshot_ids)
    report.snapshots = len(snapshot_ids)
    for chunk_digests in _load_snapshots(chunks, snapshot_ids):
        referenced_chunks.update(chunk_digests)

    present_chunks: set[str] = set()
    present_blobs: set[str] = set()
    for key, (kind, digest) in candidates.items():
        is_chunk = kind == CHUNK_KEY_PREFIX
        refs, present = (
            (referenced_chunks, present_chunks) if is_chunk else (referenced_blobs, present_blobs)
        )
        if digest in refs:
            present.add(digest)
        else:
            report.garbage.append(key)
            if is_chunk:
                report.deleted_chunks += 1
            else:
                report.deleted_blobs += 1
    report.kept_chunks, report.kept_blobs = len(present_chunks), len(present_blobs)
    report.missing = len(referenced_chunks - present_chunks) + len(referenced_blobs - present_blobs)
    report.garbage.sort()
    report.deleted_bytes = _sizes(objects, report.garbage)

    if dry_run or not report.garbage:
        return report
    if guard is not None:
        guard()
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="gc") as pool:
        for _ in pool.map(objects.delete, report.garbage):
            pass
    return report


def _list(objects: ObjectStore, prefix: str) -> list[str]:
    try:
        return objects.list(prefix)
    except StorageError as exc:
        raise GcRefused(f"cannot list {prefix!r} in {objects.url}: {exc}") from exc


def _roots(objects: ObjectStore, report: GcReport) -> tuple[set[str], list[str]]:
    """Every manifest's segment blob digest, and the snapshot ids their workspaces name."""
    blobs: set[str] = set()
    snapshots: dict[str, None] = {}  # insertion-ordered set
    for key in _list(objects, "runs/"):
        if not _MANIFEST_KEY.fullmatch(key):
            continue  # not a checkpoint manifest (nothing else under runs/ is a root)
        try:
            manifest = read_manifest(objects, key).manifest
        except (CheckpointError, StorageError, ValueError) as exc:
            raise GcRefused(
                f"checkpoint manifest {key} cannot be read ({exc}); refusing to delete "
                "anything, since what it references is unknown — repair or remove it first"
            ) from exc
        report.manifests += 1
        blobs.add(manifest.segment.digest)
        for ref in manifest.workspaces.values():
            snapshots[ref.snapshot] = None
    return blobs, list(snapshots)


def _load_snapshots(chunks: ChunkStore, snapshot_ids: list[str]) -> list[set[str]]:
    def load(snapshot_id: str) -> set[str] | Exception:
        try:
            snap = load_manifest(chunks, snapshot_id)
        except (SnapshotError, StorageError, ValueError) as exc:
            return exc
        return {digest for entry in snap.entries for digest in entry.chunks}

    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="gc") as pool:
        loaded = list(pool.map(load, snapshot_ids))
    for snapshot_id, got in zip(snapshot_ids, loaded, strict=True):
        if isinstance(got, Exception):
            raise GcRefused(
                f"workspace snapshot {snapshot_id} named by a checkpoint cannot be loaded "
                f"({got}); refusing to delete anything, since the chunks it references are "
                "unknown"
            ) from got
    return [got for got in loaded if not isinstance(got, Exception)]


def _sizes(objects: ObjectStore, keys: list[str]) -> int | None:
    """The stored bytes of ``keys`` for a local directory store; None for any other."""
    if not isinstance(objects, LocalDirStore):
        return None
    total = 0
    for key in keys:
        with contextlib.suppress(OSError):  # already gone
            total += os.lstat(objects.path_of(key)).st_size
    return total


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


# ---- the store must be idle ------------------------------------------------------------


def live_runs(runtime: Runtime) -> list[tuple[str, int | None]]:
    """Runs of the runtime's home that may be writing checkpoints: those the ledger says
    are running or pausing, and any run whose lock a live process holds (including one
    that has locked its run but not yet recorded it). Each with its owner's pid."""
    live: dict[str, int | None] = {}
    for run in runtime.runs():
        pid = runtime.owner(run.run_id)
        if pid is not None or run.status in ("running", "pausing"):
            live[run.run_id] = pid
    locks = runtime.home / "locks"
    if locks.is_dir():
        for path in locks.glob("*.lock"):
            pid = runtime.owner(path.stem)
            if pid is not None:
                live[path.stem] = pid
    return sorted(live.items())


def resume_points(runtime: Runtime) -> list[str]:
    """The workspace snapshots interrupted runs resume their in-flight attempts from
    (``WorkspaceSaved`` points live only in the ledger, not in checkpoint manifests)."""
    points: list[str] = []
    for run in runtime.runs():
        if run.status != "interrupted":
            continue  # ended, parked or aborted runs have nothing in flight
        for ns in runtime.state(run.run_id).in_flight():
            if ns.saved[1] is not None:
                points.append(ns.saved[1])
    return points


def require_idle(runtime: Runtime) -> None:
    """Raise :class:`~orchestrator.errors.RunBusy` if any run of the home is live."""
    live = live_runs(runtime)
    if live:
        names = ", ".join(f"{run} (pid {pid if pid is not None else '?'})" for run, pid in live)
        raise RunBusy(
            f"refusing to collect garbage while {len(live)} run(s) are live and may be "
            f"writing checkpoints: {names}; wait for them to finish or pause them "
            "(`orchestrator pause RUN`), then run `orchestrator gc` again"
        )
