"""Content-addressed workspace snapshots for checkpoints.

A snapshot walks a workspace without following symlinks, splits every regular file into
fixed 1 MiB chunks and stores each chunk once in a :class:`ChunkStore`, keyed by the
sha256 of its raw bytes and compressed with zstandard. The tree itself is a
:class:`Manifest` (entries sorted by path, canonical JSON) stored as one more chunk: its
digest is the snapshot id. Unchanged content is never stored twice, and a
:class:`SnapshotIndex` from the previous snapshot lets unchanged files (same size,
mtime, ctime, inode and device) skip being read at all.

:func:`restore` makes a directory hold exactly a snapshot's tree. The manifest is
validated whole before anything is written (relative normalized paths, parents that are
directories of the snapshot, symlinks that resolve inside the workspace, only files,
directories and symlinks) and every chunk is verified. Writing goes through directory
file descriptors with ``O_NOFOLLOW``, so nothing outside the workspace is ever touched,
even through symlinks already present in it. Modes are permission bits only; owners,
times and hard links are not recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import zstandard
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from orchestrator.codec import canonical_bytes
from orchestrator.errors import OrchestratorError
from orchestrator.storage.localdir import LocalDirStore
from orchestrator.storage.objects import CorruptObject, ObjectMissing, ObjectStore

__all__ = [
    "CHUNK_KEY_PREFIX",
    "CHUNK_SIZE",
    "ChunkStore",
    "CorruptChunk",
    "Entry",
    "IndexEntry",
    "Manifest",
    "RestoreResult",
    "Skipped",
    "Snapshot",
    "SnapshotError",
    "SnapshotIndex",
    "UnsafeSnapshot",
    "load_manifest",
    "restore",
    "snapshot",
    "validate_manifest",
]

CHUNK_SIZE = 1 << 20
"""Files are cut into chunks of this many bytes (the last one shorter)."""
MAX_OBJECT_SIZE = 1 << 30
"""A stored object claiming to decompress to more than this is treated as corrupt."""
RACY_WINDOW_NS = 2_000_000_000
"""A file modified this close to the start of a snapshot is re-read by the next one:
a later write within the same timestamp tick could leave size and times unchanged."""
ZSTD_LEVEL = 3
MAX_SYMLINK_HOPS = 40

_DIGEST = re.compile(r"[0-9a-f]{64}")
CHUNK_KEY_PREFIX = "chunks"
"""On an ObjectStore, chunk ``abcd...`` is the object ``chunks/ab/abcd...``."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SnapshotError(OrchestratorError):
    """A snapshot could not be taken, read or restored."""


class CorruptChunk(SnapshotError):
    """A stored chunk is missing or does not hash to its digest."""

    def __init__(self, digest: str, problem: str) -> None:
        self.digest = digest
        super().__init__(f"chunk {digest} {problem}")


class UnsafeSnapshot(SnapshotError):
    """A manifest that is malformed or could write outside the workspace on restore."""


# --------------------------------------------------------------------------- chunks


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise SnapshotError(f"{digest!r} is not a chunk digest")
    return digest


class ChunkStore:
    """Compressed chunks named by the sha256 of their raw bytes, in a directory or an
    :class:`~orchestrator.storage.objects.ObjectStore`.

    ``ChunkStore(path)`` keeps them in ``path/ab/abcdef...``: writes are atomic (temporary
    file in the same directory, then ``os.replace``) and ``durable=True`` adds fsyncs.
    ``ChunkStore.on(objects)`` keeps them under the keys ``chunks/ab/abcdef...`` of any
    object store (a local directory, S3), whose writes are atomic and durable. Either way
    a chunk already there is not written again, and every read is verified against its
    digest. Safe to share between threads.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        objects: ObjectStore | None = None,
        level: int = ZSTD_LEVEL,
        durable: bool = False,
    ) -> None:
        if (path is None) == (objects is None):
            raise TypeError("ChunkStore takes either a directory path or objects=ObjectStore")
        self.level = level
        self.objects = objects
        self._local = threading.local()
        # The local directory holding the store (the whole object store's root for a
        # LocalDirStore), or None for a remote one: it must not be inside a workspace.
        self.local_root: Path | None
        if objects is None:
            assert path is not None
            self._path: Path | None = Path(path)
            self.local_root = self._path
            self.durable = durable
            self.url = self._path.absolute().as_uri()
            self._path.mkdir(parents=True, exist_ok=True)
        else:
            local = objects.root if isinstance(objects, LocalDirStore) else None
            self._path = local / CHUNK_KEY_PREFIX if local is not None else None
            self.local_root = local
            self.durable = True
            self.url = f"{objects.url} ({CHUNK_KEY_PREFIX}/)"

    @classmethod
    def on(cls, objects: ObjectStore, *, level: int = ZSTD_LEVEL) -> ChunkStore:
        """A chunk store keeping its chunks in ``objects``, under ``chunks/ab/<digest>``."""
        return cls(objects=objects, level=level)

    def __repr__(self) -> str:
        return f"ChunkStore({self.url!r})"

    @property
    def path(self) -> Path:
        """The directory of the chunks; ``SnapshotError`` for a store that is not local."""
        if self._path is None:
            raise SnapshotError(f"the chunk store {self.url} is not a local directory")
        return self._path

    def file(self, digest: str) -> Path:
        """Where the chunk ``digest`` is (or would be) stored, for a local store."""
        return self.path / _check_digest(digest)[:2] / digest

    def key(self, digest: str) -> str:
        """The object key of the chunk ``digest`` (for a store on an ObjectStore)."""
        return f"{CHUNK_KEY_PREFIX}/{_check_digest(digest)[:2]}/{digest}"

    def has(self, digest: str) -> bool:
        if self.objects is not None:
            return self.objects.exists(self.key(digest))
        return os.path.exists(self.file(digest))

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its digest."""
        return self.put_new(data)[0]

    def put_new(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return its digest and the bytes written (0 if already stored)."""
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest):
            return digest, 0
        blob = self._codec().compress(data)
        if self.objects is not None:
            self.objects.put(self.key(digest), blob)
        else:
            self._write(self.file(digest), blob)
        return digest, len(blob)

    def get(self, digest: str) -> bytes:
        """The raw bytes of chunk ``digest``, verified against the digest."""
        blob = self._read(digest)
        try:
            if zstandard.frame_content_size(blob) > MAX_OBJECT_SIZE:
                raise CorruptChunk(digest, "claims an impossible size")
            data = self._decodec().decompress(blob, max_output_size=MAX_OBJECT_SIZE)
        except zstandard.ZstdError as exc:
            raise CorruptChunk(digest, f"is corrupt: does not decompress ({exc})") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptChunk(digest, "is corrupt: its content does not match its digest")
        return data

    def _read(self, digest: str) -> bytes:
        if self.objects is None:
            try:
                return self.file(digest).read_bytes()
            except FileNotFoundError:
                raise CorruptChunk(digest, "is missing from the store") from None
        try:
            return self.objects.get(self.key(digest))
        except ObjectMissing:
            raise CorruptChunk(digest, "is missing from the store") from None
        except CorruptObject as exc:
            raise CorruptChunk(digest, f"is corrupt: {exc}") from None

    def _codec(self) -> zstandard.ZstdCompressor:
        codec: zstandard.ZstdCompressor | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = zstandard.ZstdCompressor(level=self.level)
        return codec

    def _decodec(self) -> zstandard.ZstdDecompressor:
        codec: zstandard.ZstdDecompressor | None = getattr(self._local, "decodec", None)
        if codec is None:
            codec = self._local.decodec = zstandard.ZstdDecompressor()
        return codec

    def _write(self, final: Path, blob: bytes) -> None:
        tmp = final.parent / f".tmp-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o644)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, _CREATE_FLAGS, 0o644)
        try:
            with open(fd, "wb") as out:
                out.write(blob)
                if self.durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.durable:
            dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# --------------------------------------------------------------------------- models

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
EntryType = Literal["file", "dir", "symlink"]


class Entry(BaseModel):
    """One path of a snapshot (relative, ``/``-separated, no ``.``/``..``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    type: EntryType
    mode: int = Field(ge=0, le=0o777)
    size: int = Field(default=0, ge=0)
    chunks: tuple[Digest, ...] = ()
    target: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The entry as stored in the manifest (fields that do not apply left out)."""
        out: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode}
        if self.type == "file":
            out["size"] = self.size
            out["chunks"] = list(self.chunks)
        elif self.type == "symlink":
            out["target"] = self.target
        return out


class Manifest(BaseModel):
    """A snapshot's tree; its canonical JSON, stored as a chunk, has the snapshot id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    total_bytes: int = Field(ge=0)
    entries: tuple[Entry, ...]

    def canonical(self) -> bytes:
        return canonical_bytes(
            {
                "version": self.version,
                "total_bytes": self.total_bytes,
                "entries": [entry.as_json() for entry in self.entries],
            }
        )


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


class RestoreResult(BaseModel):
    """What :func:`restore` changed."""

    written: int = Field(description="files written")
    kept: int = Field(description="files left as they were (matched the index)")
    removed: int = Field(description="paths removed because the snapshot lacks them")


# --------------------------------------------------------------------------- validation


def _path_problem(path: str) -> str | None:
    if not path:
        return "is empty"
    if "\0" in path:
        return "contains NUL"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "contains '..'"
    if "" in parts or "." in parts:
        return "is not normalized"
    return None


def _link_problem(by_path: dict[str, Entry], link: Entry) -> str | None:
    """Why following ``link`` inside the snapshot's tree could leave the root, if it could.

    Resolution is physical, like the kernel's: symlinks met on the way are expanded
    (relative to their own directory) before a following ``..`` applies.
    """
    target = link.target
    if not target:
        return "has an empty target"
    if "\0" in target:
        return "has a target containing NUL"
    if target.startswith("/"):
        return f"points to absolute path {target!r}"
    here = link.path.split("/")[:-1]
    todo = list(reversed(target.split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return f"target {target!r} escapes the workspace"
            here.pop()
            continue
        here.append(part)
        hit = by_path.get("/".join(here))
        if hit is not None and hit.type == "symlink":
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return f"target {target!r} loops"
            here.pop()
            via = hit.target or ""
            if not via or via.startswith("/") or "\0" in via:
                return f"target {target!r} goes through unsafe symlink {hit.path!r}"
            todo.extend(reversed(via.split("/")))
    return None


def validate_manifest(manifest: Manifest) -> None:
    """Raise :class:`UnsafeSnapshot` naming the first entry that is unsafe to restore."""
    by_path: dict[str, Entry] = {}
    for entry in manifest.entries:
        problem = _path_problem(entry.path)
        if problem:
            raise UnsafeSnapshot(f"entry {entry.path!r}: path {problem}")
        if entry.path in by_path:
            raise UnsafeSnapshot(f"entry {entry.path!r} appears twice")
        by_path[entry.path] = entry
    for entry in manifest.entries:
        parent = entry.path.rpartition("/")[0]
        if parent and (p := by_path.get(parent)) is not None and p.type != "dir":
            raise UnsafeSnapshot(f"entry {entry.path!r}: parent {parent!r} is a {p.type}")
        if parent and parent not in by_path:
            raise UnsafeSnapshot(f"entry {entry.path!r}: parent {parent!r} is not in the snapshot")
        if entry.type == "symlink":
            problem = _link_problem(by_path, entry)
            if problem:
                raise UnsafeSnapshot(f"entry {entry.path!r}: symlink {problem}")
        elif entry.target is not None:
            raise UnsafeSnapshot(f"entry {entry.path!r}: a {entry.type} has no target")
        if entry.type != "file" and (entry.chunks or entry.size):
            raise UnsafeSnapshot(f"entry {entry.path!r}: a {entry.type} has no content")


def _parse_entry(raw: Any) -> Entry:
    name = raw.get("path") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and raw.get("type") not in ("file", "dir", "symlink"):
        raise UnsafeSnapshot(
            f"entry {name!r} has type {raw.get('type')!r}; only file, dir and symlink are allowed"
        )
    try:
        return Entry.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UnsafeSnapshot(f"entry {name!r} is malformed: {problems}") from None


def load_manifest(store: ChunkStore, snapshot_id: str) -> Manifest:
    """Read and validate the manifest of ``snapshot_id`` (see :func:`validate_manifest`)."""
    raw = store.get(snapshot_id)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SnapshotError(f"{snapshot_id} is not a snapshot manifest") from None
    if (
        not isinstance(doc, dict)
        or doc.get("version") != 1
        or set(doc)
        != {
            "version",
            "total_bytes",
            "entries",
        }
    ):
        raise SnapshotError(f"{snapshot_id} is not a version-1 snapshot manifest")
    raw_entries = doc["entries"]
    total = doc["total_bytes"]
    if not isinstance(raw_entries, list) or not isinstance(total, int) or total < 0:
        raise UnsafeSnapshot(f"manifest {snapshot_id} is malformed")
    entries = tuple(_parse_entry(raw) for raw in raw_entries)
    manifest = Manifest.model_construct(version=1, total_bytes=total, entries=entries)
    validate_manifest(manifest)
    return manifest


# --------------------------------------------------------------------------- snapshot


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
                if e.type == "symlink" and (problem := _link_problem(by_path, e))
            }
            if not bad:
                return
            for path, problem in bad.items():
                self.skip(path, f"symlink {problem}")
            self.entries = [e for e in self.entries if e.path not in bad]


def _store_outside(store: ChunkStore, root: Path) -> None:
    if store.local_root is None:
        return  # not on this machine's filesystem
    where, workspace = store.local_root.resolve(), Path(root).resolve()
    if where == workspace or workspace in where.parents:
        raise SnapshotError(f"the chunk store {where} must not be inside the workspace")


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
    _store_outside(store, root)
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


# --------------------------------------------------------------------------- restore


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
    _store_outside(store, root)
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
