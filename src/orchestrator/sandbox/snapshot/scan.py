"""Taking a snapshot: one walk of the workspace through directory fds, never following
symlinks, with files hashed and stored by a thread pool."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import SnapshotError
from orchestrator.sandbox.snapshot.manifest import (
    Entry,
    Manifest,
    link_problem,
    validate_manifest,
)
from orchestrator.sandbox.snapshot.store import ChunkStore, check_store_outside

__all__ = ["CHUNK_SIZE", "IndexEntry", "Skipped", "Snapshot", "SnapshotIndex", "snapshot"]

CHUNK_SIZE = 1 << 20
"""Files are cut into chunks of this many bytes (the last one shorter)."""
RACY_WINDOW_NS = 2_000_000_000
"""A file modified this close to the start of a snapshot is re-read by the next one:
a later write within the same timestamp tick could leave size and times unchanged."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Skipped(BaseModel):
    """A path a snapshot left out, and why."""

    path: str
    reason: str


class Snapshot(BaseModel):
    """What :func:`snapshot` took and what it cost."""

    id: str
    files: int
    dirs: int
    symlinks: int
    total_bytes: int = Field(description="bytes of file content in the snapshot")
    chunks: int = Field(description="distinct content chunks referenced")
    new_chunks: int = Field(description="chunks written by this snapshot (manifest included)")
    new_bytes: int = Field(description="compressed bytes written by this snapshot")
    read_bytes: int = Field(description="file bytes read and hashed")
    reused_files: int = Field(description="files taken from the previous index unread")
    skipped: tuple[Skipped, ...] = ()

    @property
    def skipped_special(self) -> int:
        """How many sockets, fifos and device files were left out."""
        return sum(1 for s in self.skipped if s.reason.startswith("special file"))


class IndexEntry(BaseModel):
    """What a file looked like when it was hashed, and its chunks."""

    model_config = ConfigDict(frozen=True)

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    chunks: tuple[str, ...]


class SnapshotIndex(BaseModel):
    """Per-workspace stat cache from one snapshot, handed to the next (JSON-serializable)."""

    snapshot_id: str
    files: dict[str, IndexEntry] = Field(default_factory=dict)


def _read_full(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.read(fd, n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "unknown type"


@dataclass(frozen=True, slots=True)
class _Read:
    chunks: tuple[str, ...]
    size: int
    new_chunks: int
    new_bytes: int
    st: os.stat_result
    stable: bool


class _Scan:
    """One snapshot's walk: directory fds, never following symlinks, files hashed in a pool."""

    def __init__(
        self, store: ChunkStore, previous: SnapshotIndex | None, workers: int, racy_after: int
    ) -> None:
        self.store = store
        self.previous = previous.files if previous is not None else {}
        self.racy_after = racy_after
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot")
        self.slots = threading.BoundedSemaphore(workers * 4)
        self.entries: list[Entry] = []
        self.index: dict[str, IndexEntry] = {}
        self.pending: list[tuple[str, Future[_Read | None]]] = []
        self.skipped: list[Skipped] = []
        self.reused = 0

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(Skipped(path=_printable(path), reason=reason))

    def walk(self, root: Path) -> None:
        stack: list[tuple[int, str, list[tuple[str, str]]]] = []
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            stack.append((root_fd, "", []))
            stack[-1][2].extend(self.list_dir(root_fd, ""))
            while stack:
                fd, _, subdirs = stack[-1]
                if not subdirs:
                    os.close(fd)
                    stack.pop()
                    continue
                name, rel = subdirs.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except PermissionError:
                    self.skip(rel, "unreadable directory (permission denied)")
                    continue
                except OSError:
                    continue  # vanished or replaced while we walked
                stack.append((child, rel + "/", []))
                mode = os.fstat(child).st_mode & 0o777
                self.entries.append(Entry.model_construct(path=rel, type="dir", mode=mode))
                stack[-1][2].extend(self.list_dir(child, rel + "/"))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def list_dir(self, fd: int, prefix: str) -> list[tuple[str, str]]:
        """Record the files and symlinks of one directory; return its subdirectories."""
        subdirs: list[tuple[str, str]] = []
        with os.scandir(fd) as listing:
            for item in listing:
                rel = prefix + item.name
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    self.skip(rel, "name is not valid UTF-8")
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((item.name, rel))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(fd, item.name, rel, st)
                elif stat.S_ISLNK(st.st_mode):
                    self.add_link(fd, item.name, rel, st)
                else:
                    self.skip(rel, f"special file ({_kind(st.st_mode)})")
        subdirs.reverse()  # popped from the end: visit in listing order
        return subdirs

    def add_link(self, fd: int, name: str, rel: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=fd)
        except OSError:
            return
        try:
            target.encode("utf-8")
        except UnicodeEncodeError:
            self.skip(rel, "symlink target is not valid UTF-8")
            return
        self.entries.append(
            Entry.model_construct(path=rel, type="symlink", mode=st.st_mode & 0o777, target=target)
        )

    def add_file(self, fd: int, name: str, rel: str, st: os.stat_result) -> None:
        prev = self.previous.get(rel)
        if (
            prev is not None
            and prev.size == st.st_size
            and prev.mtime_ns == st.st_mtime_ns
            and prev.ctime_ns == st.st_ctime_ns
            and prev.ino == st.st_ino
            and prev.dev == st.st_dev
            and all(self.store.has(d) for d in prev.chunks)
        ):
            self.reused += 1
            self.index[rel] = prev
            self.entries.append(
                Entry.model_construct(
                    path=rel,
                    type="file",
                    mode=st.st_mode & 0o777,
                    size=prev.size,
                    chunks=prev.chunks,
                )
            )
            return
        try:
            file_fd = os.open(name, _READ_FLAGS, dir_fd=fd)
        except PermissionError:
            self.skip(rel, "unreadable file (permission denied)")
            return
        except OSError:
            return  # vanished or replaced by a symlink while we walked
        self.slots.acquire()
        try:
            self.pending.append((rel, self.pool.submit(self.read, file_fd)))
        except BaseException:
            self.slots.release()
            os.close(file_fd)
            raise

    def read(self, fd: int) -> _Read | None:
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return None
            chunks: list[str] = []
            size = new_chunks = new_bytes = 0
            while data := _read_full(fd, CHUNK_SIZE):
                digest, written = self.store.put_new(data)
                chunks.append(digest)
                size += len(data)
                new_chunks += written > 0
                new_bytes += written
                if len(data) < CHUNK_SIZE:
                    break
            after = os.fstat(fd)
            stable = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
                after.st_size,
                after.st_mtime_ns,
                after.st_ctime_ns,
            ) and size == after.st_size
            return _Read(tuple(chunks), size, new_chunks, new_bytes, before, stable)
        finally:
            os.close(fd)
            self.slots.release()

    def collect(self) -> tuple[int, int, int]:
        """Wait for the reads; return (new chunks, new bytes, bytes read)."""
        self.pool.shutdown(wait=True)
        new_chunks = new_bytes = read_bytes = 0
        for rel, future in self.pending:
            try:
                got = future.result()
            except OSError as exc:
                raise SnapshotError(f"cannot read {_printable(rel)!r}: {exc}") from exc
            if got is None:
                self.skip(rel, "special file (replaced while reading)")
                continue
            st = got.st
            self.entries.append(
                Entry.model_construct(
                    path=rel, type="file", mode=st.st_mode & 0o777, size=got.size, chunks=got.chunks
                )
            )
            if got.stable and st.st_mtime_ns < self.racy_after:
                self.index[rel] = IndexEntry.model_construct(
                    size=got.size,
                    mtime_ns=st.st_mtime_ns,
                    ctime_ns=st.st_ctime_ns,
                    ino=st.st_ino,
                    dev=st.st_dev,
                    chunks=got.chunks,
                )
            new_chunks += got.new_chunks
            new_bytes += got.new_bytes
            read_bytes += got.size
        return new_chunks, new_bytes, read_bytes

    def drop_unsafe_links(self) -> None:
        """Leave out symlinks that restore would refuse (absolute or escaping the root)."""
        while True:
            by_path = {e.path: e for e in self.entries}
            bad = {
                e.path: problem
                for e in self.entries
                if e.type == "symlink" and (problem := link_problem(by_path, e))
            }
            if not bad:
                return
            for path, problem in bad.items():
                self.skip(path, f"symlink {problem}")
            self.entries = [e for e in self.entries if e.path not in bad]


def snapshot(
    root: Path,
    store: ChunkStore,
    previous: SnapshotIndex | None = None,
    *,
    workers: int | None = None,
) -> tuple[Snapshot, SnapshotIndex]:
    """Snapshot the tree under ``root`` into ``store``.

    ``previous`` is the index returned by the last snapshot of the same workspace: files
    whose size, times, inode and device match it are not read again. Symlinks are recorded
    (never followed); sockets, fifos, devices, unreadable paths and symlinks pointing
    outside ``root`` are left out and listed in ``Snapshot.skipped``. Returns the
    snapshot and the index to pass next time.
    """
    check_store_outside(store, root)
    racy_after = time.time_ns() - RACY_WINDOW_NS
    scan = _Scan(store, previous, workers or min(8, os.cpu_count() or 1), racy_after)
    try:
        scan.walk(Path(root))
    except BaseException:
        scan.pool.shutdown(wait=True)  # let queued reads run: they own their fds
        raise
    new_chunks, new_bytes, read_bytes = scan.collect()
    scan.drop_unsafe_links()
    entries = tuple(sorted(scan.entries, key=lambda e: e.path))
    total = sum(e.size for e in entries)
    manifest = Manifest.model_construct(version=1, total_bytes=total, entries=entries)
    validate_manifest(manifest)
    snapshot_id, written = store.put_new(manifest.canonical())
    counts = Counter(entry.type for entry in entries)
    result = Snapshot(
        id=snapshot_id,
        files=counts["file"],
        dirs=counts["dir"],
        symlinks=counts["symlink"],
        total_bytes=total,
        chunks=len({d for e in entries for d in e.chunks}),
        new_chunks=new_chunks + (written > 0),
        new_bytes=new_bytes + written,
        read_bytes=read_bytes,
        reused_files=scan.reused,
        skipped=tuple(sorted(scan.skipped, key=lambda s: s.path)),
    )
    return result, SnapshotIndex.model_construct(snapshot_id=snapshot_id, files=scan.index)
