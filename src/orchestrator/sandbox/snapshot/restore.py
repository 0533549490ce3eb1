"""Restoring a snapshot: the manifest validated and every chunk verified first, then the
directory synced to it through directory fds with ``O_NOFOLLOW``."""

from __future__ import annotations

import os
import secrets
import stat
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.errors import UnsafeSnapshot
from orchestrator.sandbox.snapshot.manifest import Entry, load_manifest
from orchestrator.sandbox.snapshot.scan import SnapshotIndex
from orchestrator.sandbox.snapshot.store import ChunkStore, check_store_outside

__all__ = ["RestoreResult", "restore"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreResult(BaseModel):
    """What :func:`restore` changed."""

    written: int = Field(description="files written")
    kept: int = Field(description="files left as they were (matched the index)")
    removed: int = Field(description="paths removed because the snapshot lacks them")


def _verify_chunks(store: ChunkStore, entries: list[Entry], pool: ThreadPoolExecutor) -> None:
    """Every chunk present and intact, and every file's chunks adding up to its size."""
    digests = sorted({d for e in entries for d in e.chunks})
    sizes = dict(zip(digests, pool.map(lambda d: len(store.get(d)), digests), strict=True))
    for entry in entries:
        held = sum(sizes[d] for d in entry.chunks)
        if held != entry.size:
            raise UnsafeSnapshot(
                f"entry {entry.path!r}: its chunks hold {held} bytes, not {entry.size}"
            )


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` (recursively), never following symlinks."""
    st = _lstat(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o700)
        for child in os.listdir(fd):
            _remove(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


class _Restore:
    def __init__(
        self,
        store: ChunkStore,
        entries: Iterable[Entry],
        index: SnapshotIndex | None,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.store = store
        self.pool = pool
        self.children: dict[str, dict[str, Entry]] = defaultdict(dict)
        for entry in entries:
            parent, _, name = entry.path.rpartition("/")
            self.children[parent][name] = entry
        self.index = index.files if index is not None else {}
        self.result = RestoreResult(written=0, kept=0, removed=0)

    def sync(self, dir_fd: int, rel: str) -> None:
        """Make the directory open at ``dir_fd`` hold exactly the snapshot's ``rel``."""
        wanted = self.children.get(rel, {})
        for name in os.listdir(dir_fd):
            if name not in wanted:
                _remove(dir_fd, name)
                self.result.removed += 1
        writes: list[Future[None]] = []
        try:
            self.sync_entries(dir_fd, wanted, writes)
        finally:
            wait(writes)  # workers use dir_fd: it must stay open until they are done
        for write in writes:
            write.result()

    def sync_entries(
        self, dir_fd: int, wanted: dict[str, Entry], writes: list[Future[None]]
    ) -> None:
        for name, entry in wanted.items():
            st = _lstat(dir_fd, name)
            if entry.type == "dir":
                self.sync_subdir(dir_fd, name, entry, st)
            elif entry.type == "symlink":
                if (
                    st is not None
                    and stat.S_ISLNK(st.st_mode)
                    and os.readlink(name, dir_fd=dir_fd) == entry.target
                ):
                    continue
                if st is not None:
                    _remove(dir_fd, name)
                os.symlink(entry.target or "", name, dir_fd=dir_fd)
            elif st is not None and self.unchanged(entry, st):
                self.result.kept += 1
            else:
                if st is not None and stat.S_ISDIR(st.st_mode):
                    _remove(dir_fd, name)
                writes.append(self.pool.submit(self.write_file, dir_fd, name, entry))
                self.result.written += 1

    def sync_subdir(self, dir_fd: int, name: str, entry: Entry, st: os.stat_result | None) -> None:
        if st is not None and not stat.S_ISDIR(st.st_mode):
            _remove(dir_fd, name)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o700)
            self.sync(fd, entry.path)
            os.fchmod(fd, entry.mode)
        finally:
            os.close(fd)

    def likely_kept(self, root: Path) -> set[str]:
        """Files that match the index now (and so need no chunk); re-checked when syncing."""
        kept = set()
        for parent in self.children.values():
            for entry in parent.values():
                if entry.type != "file" or entry.path not in self.index:
                    continue
                try:
                    st = os.lstat(root / entry.path)
                except OSError:
                    continue
                if self.unchanged(entry, st):
                    kept.add(entry.path)
        return kept

    def unchanged(self, entry: Entry, st: os.stat_result) -> bool:
        known = self.index.get(entry.path)
        return (
            known is not None
            and stat.S_ISREG(st.st_mode)
            and st.st_mode & 0o7777 == entry.mode
            and known.chunks == entry.chunks
            and (known.size, known.mtime_ns, known.ctime_ns, known.ino, known.dev)
            == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        )

    def write_file(self, dir_fd: int, name: str, entry: Entry) -> None:
        tmp = f".snapshot-tmp-{secrets.token_hex(8)}"
        fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            with open(fd, "wb", closefd=False) as out:
                for digest in entry.chunks:
                    out.write(self.store.get(digest))
            os.fchmod(fd, entry.mode)
            os.close(fd)
            fd = -1
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp, dir_fd=dir_fd)
            raise


def restore(
    snapshot_id: str,
    store: ChunkStore,
    root: Path,
    *,
    index: SnapshotIndex | None = None,
    workers: int | None = None,
) -> RestoreResult:
    """Make ``root`` hold exactly the tree of ``snapshot_id``: content, modes, symlinks.

    Paths the snapshot lacks are removed. The manifest is validated and every chunk
    verified before anything is written (:class:`UnsafeSnapshot`, :class:`CorruptChunk`).
    With ``index`` (from the snapshot or a later one of this workspace), files that still
    match it and have the right chunks and mode are left in place.
    """
    check_store_outside(store, root)
    manifest = load_manifest(store, snapshot_id)
    root = Path(root)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
        job = _Restore(store, manifest.entries, index, pool)
        kept = job.likely_kept(root) if index is not None else set()
        _verify_chunks(store, [e for e in manifest.entries if e.path not in kept], pool)
        root.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            job.sync(root_fd, "")
        finally:
            os.close(root_fd)
    return job.result
