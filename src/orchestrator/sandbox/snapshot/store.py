"""The chunk store: zstandard-compressed chunks named by the sha256 of their raw bytes."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import CorruptChunk, CorruptObject, ObjectMissing, SnapshotError
from orchestrator.storage.localdir import LocalDirStore
from orchestrator.storage.objects import ObjectStore

if TYPE_CHECKING:
    import zstandard  # imported by the first chunk (de)compressed, not with the module

__all__ = ["CHUNK_KEY_PREFIX", "ChunkStore", "check_store_outside"]

CHUNK_KEY_PREFIX = "chunks"
"""On an ObjectStore, chunk ``abcd...`` is the object ``chunks/ab/abcd...``."""
MAX_OBJECT_SIZE = 1 << 30
"""A stored object claiming to decompress to more than this is treated as corrupt."""
ZSTD_LEVEL = 3

_DIGEST = re.compile(r"[0-9a-f]{64}")


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise SnapshotError(f"{digest!r} is not a chunk digest")
    return digest


class ChunkStore:
    """Compressed chunks named by the sha256 of their raw bytes, kept under the keys
    ``chunks/ab/abcdef...`` of an :class:`~orchestrator.storage.objects.ObjectStore`
    (a local directory, S3), whose writes are atomic and durable.

    A chunk already there is not written again, and every read is verified against its
    digest. Safe to share between threads.
    """

    def __init__(self, objects: ObjectStore, *, level: int = ZSTD_LEVEL) -> None:
        self.objects = objects
        self.level = level
        self.url = f"{objects.url} ({CHUNK_KEY_PREFIX}/)"
        # The local directory holding the whole object store, or None for a remote one:
        # it must not be inside a workspace.
        self.local_root: Path | None = objects.root if isinstance(objects, LocalDirStore) else None
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ChunkStore({self.url!r})"

    def key(self, digest: str) -> str:
        """The object key of the chunk ``digest``."""
        return f"{CHUNK_KEY_PREFIX}/{_check_digest(digest)[:2]}/{digest}"

    def has(self, digest: str) -> bool:
        return self.objects.exists(self.key(digest))

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its digest."""
        return self.put_new(data)[0]

    def put_new(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return its digest and the bytes written (0 if already stored)."""
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest):
            return digest, 0
        blob = self._codec().compress(data)
        self.objects.put(self.key(digest), blob)
        return digest, len(blob)

    def get(self, digest: str) -> bytes:
        """The raw bytes of chunk ``digest``, verified against the digest."""
        import zstandard

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
        try:
            return self.objects.get(self.key(digest))
        except ObjectMissing:
            raise CorruptChunk(digest, "is missing from the store") from None
        except CorruptObject as exc:
            raise CorruptChunk(digest, f"is corrupt: {exc}") from None

    def _codec(self) -> zstandard.ZstdCompressor:
        import zstandard

        codec: zstandard.ZstdCompressor | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = zstandard.ZstdCompressor(level=self.level)
        return codec

    def _decodec(self) -> zstandard.ZstdDecompressor:
        import zstandard

        codec: zstandard.ZstdDecompressor | None = getattr(self._local, "decodec", None)
        if codec is None:
            codec = self._local.decodec = zstandard.ZstdDecompressor()
        return codec


def check_store_outside(store: ChunkStore, root: Path) -> None:
    """Refuse (:class:`SnapshotError`) a workspace ``root`` that holds the store itself."""
    if store.local_root is None:
        return  # not on this machine's filesystem
    where, workspace = store.local_root.resolve(), Path(root).resolve()
    if where == workspace or workspace in where.parents:
        raise SnapshotError(f"the chunk store {where} must not be inside the workspace")
