"""Object storage for durable checkpoints: the protocol, key rules, blobs, and opening a URL.

An :class:`ObjectStore` maps keys to immutable byte strings. Two backends implement it:
a local directory (:mod:`orchestrator.storage.localdir`, the embedded default under
``./.orchestrator/objects``) and S3 or any S3-compatible server
(:mod:`orchestrator.storage.s3`). A ``put`` is atomic: a reader sees either the whole
old object, the whole new one, or (for a new key) nothing, never a partial write.

Keys are ``/``-separated relative paths whose segments use only ``[A-Za-z0-9._-]``:
no empty segment, no ``.`` or ``..``, no leading ``/``. They are checked on every call
(:func:`check_key`), since keys are built from snapshots and manifests that are never
trusted. :func:`put_blob` and :func:`get_blob` add content addressing on top: data is
stored at ``blobs/ab/<sha256>`` and verified against its digest when read back.

Errors::

    OrchestratorError
    └── StorageError        a store could not be reached or did not do what was asked
        ├── ObjectMissing   no object under the key
        └── CorruptObject   an object's content does not match its digest
"""

from __future__ import annotations

import builtins
import hashlib
import re
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from orchestrator.errors import (
    ConfigError,
    CorruptObject,
    ObjectMissing,
    StorageError,
)
from orchestrator.extras import require

__all__ = [
    "DEFAULT_LOCAL_ROOT",
    "ObjectStore",
    "StorageError",
    "ObjectMissing",
    "CorruptObject",
    "check_key",
    "check_prefix",
    "blob_key",
    "put_blob",
    "get_blob",
    "open_object_store",
]

DEFAULT_LOCAL_ROOT = Path(".orchestrator/objects")
"""Where the embedded default store keeps its objects (relative to the working directory)."""
MAX_KEY_LENGTH = 1024
"""S3's limit on a key, applied to every backend (the store's own prefix not counted)."""
MAX_SEGMENT_LENGTH = 255
"""A file name's limit on most local filesystems, applied to every backend."""

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PARTIAL_SEGMENT = re.compile(r"[A-Za-z0-9._-]*")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- keys


def _segment_problem(segment: str) -> str | None:
    if not segment:
        return "has an empty segment"
    if segment in (".", ".."):
        return f"has a {segment!r} segment"
    if len(segment) > MAX_SEGMENT_LENGTH:
        return f"has a segment longer than {MAX_SEGMENT_LENGTH} characters"
    if not _SEGMENT.fullmatch(segment):
        return "may only use A-Z a-z 0-9 . _ - in its segments"
    return None


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``ValueError`` saying why."""
    if not isinstance(key, str):
        raise ValueError(f"object key {key!r} is not a string")
    problem: str | None = None
    if not key:
        problem = "is empty"
    elif key.startswith("/"):
        problem = "is absolute (starts with '/')"
    elif len(key) > MAX_KEY_LENGTH:
        problem = f"is longer than {MAX_KEY_LENGTH} characters"
    else:
        problem = next(filter(None, map(_segment_problem, key.split("/"))), None)
    if problem:
        raise ValueError(f"object key {key!r} {problem}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if keys could start with it (``""`` lists everything), else raise.

    A prefix is a string prefix, as in S3: ``"blobs/a"`` matches ``blobs/ab/...``. Its
    part up to the last ``/`` must itself be a valid key.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"object key prefix {prefix!r} is not a string")
    head, slash, tail = prefix.rpartition("/")
    try:
        if slash:
            check_key(head)
    except ValueError as exc:
        raise ValueError(f"object key prefix {prefix!r}: {exc}") from None
    if not _PARTIAL_SEGMENT.fullmatch(tail) or len(prefix) > MAX_KEY_LENGTH:
        raise ValueError(
            f"object key prefix {prefix!r} may only use A-Z a-z 0-9 . _ - in its segments"
        )
    return prefix


# --------------------------------------------------------------------------- protocol


class ObjectStore(Protocol):
    """Keys to immutable byte strings, in a local directory or an S3 bucket.

    Implementations are safe to share between threads. Every key argument is checked with
    :func:`check_key` (``ValueError`` for a bad one).
    """

    url: str
    """Where the store is, as a URL :func:`open_object_store` accepts (never credentials)."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there, atomically."""
        ...

    def get(self, key: str) -> bytes:
        """The object under ``key``; :class:`ObjectMissing` if there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> builtins.list[str]:
        """The keys starting with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; nothing happens if there is none."""
        ...

    def check(self) -> None:
        """Raise :class:`StorageError`, saying why, unless the store can be used now:
        reachable, the bucket or directory there, the credentials accepted. One call,
        bounded by the store's timeouts."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- blobs


def blob_key(digest: str) -> str:
    """The key of the content-addressed blob ``digest`` (a sha256 in lowercase hex)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest (64 lowercase hex digits)")
    return f"blobs/{digest[:2]}/{digest}"


def put_blob(store: ObjectStore, data: bytes) -> str:
    """Store ``data`` at ``blobs/ab/<sha256>`` unless it is already there; return the digest."""
    digest = hashlib.sha256(data).hexdigest()
    key = blob_key(digest)
    if not store.exists(key):
        store.put(key, data)
    return digest


def get_blob(store: ObjectStore, digest: str) -> bytes:
    """The blob ``digest``, verified: :class:`CorruptObject` if it does not hash to it."""
    key = blob_key(digest)
    data = store.get(key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CorruptObject(key, store.url, f"its content hashes to {actual}")
    return data


# --------------------------------------------------------------------------- opening


def open_object_store(url: str) -> ObjectStore:
    """Open an object store from a URL.

    * ``/abs/path``, ``relative/path`` or ``file:///abs/path``: a local directory
      (created if needed; write ``./a:b`` for a relative path with a colon);
    * ``s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1``: S3 or an
      S3-compatible server. Credentials come from boto3's usual chain (environment,
      shared files, instance roles), never from the URL. Other options:
      ``addressing=path|virtual``, ``connect_timeout``, ``read_timeout`` (seconds) and
      ``max_attempts``.

    Raises :class:`~orchestrator.errors.ConfigError` for a URL it cannot use.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("object store URL is empty")
    if not _SCHEME.match(url):
        if "\0" in url:
            raise ConfigError("object store path contains NUL")
        from orchestrator.storage.localdir import LocalDirStore

        return LocalDirStore(Path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _open_file(url, parts.netloc, parts.path, parts.query, parts.fragment)
    if scheme == "s3":
        return _open_s3(url)
    raise ConfigError(
        f"cannot open object store {_redact(url)!r}: unsupported scheme {scheme!r} "
        "(use a directory path, file:///ABS/PATH or s3://BUCKET/PREFIX)"
    )


def _open_file(url: str, netloc: str, path: str, query: str, fragment: str) -> ObjectStore:
    if netloc not in ("", "localhost"):
        raise ConfigError(
            f"object store URL {url!r} names host {netloc!r}: a file URL is local, "
            "write file:///ABS/PATH"
        )
    if query or fragment:
        raise ConfigError(f"object store URL {url!r}: a file URL takes no options")
    local = unquote(path)
    if not local.startswith("/"):
        raise ConfigError(f"object store URL {url!r}: the path must be absolute")
    if "\0" in local:
        raise ConfigError(f"object store URL {url!r}: the path contains NUL")
    from orchestrator.storage.localdir import LocalDirStore

    return LocalDirStore(Path(local))


def _redact(url: str) -> str:
    """``url`` without any user information (which could be a credential)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


_S3_OPTIONS = {
    "endpoint",
    "region",
    "addressing",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
}


def _open_s3(url: str) -> ObjectStore:
    safe = _redact(url)
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError(
            f"object store URL {safe!r} carries credentials: leave them out and provide "
            "them the usual AWS way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, "
            "or an instance role)"
        )
    if parts.fragment:
        raise ConfigError(f"object store URL {safe!r} has a fragment ('#...')")
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"object store URL {safe!r} names no bucket: write s3://BUCKET/PREFIX")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError as exc:
            raise ConfigError(f"object store URL {safe!r}: bad prefix: {exc}") from None
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in _S3_OPTIONS:
            known = ", ".join(sorted(_S3_OPTIONS))
            raise ConfigError(
                f"object store URL {safe!r}: unknown option {name!r} (known: {known})"
            )
        if name in options:
            raise ConfigError(f"object store URL {safe!r}: option {name!r} given twice")
        options[name] = value
    if parts.query and not options:
        raise ConfigError(f"object store URL {safe!r}: cannot read options {parts.query!r}")

    require("boto3", f"the S3 object store {safe!r}")
    from orchestrator.storage.s3 import S3Settings, S3Store

    return S3Store(bucket, prefix, S3Settings.from_options(options, safe))
