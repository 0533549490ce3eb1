"""A snapshot's tree: its entries, the canonical manifest (whose chunk digest is the
snapshot id), and the checks that make a manifest safe to restore."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from orchestrator.codec import canonical_bytes
from orchestrator.errors import SnapshotError, UnsafeSnapshot
from orchestrator.sandbox.snapshot.store import ChunkStore

__all__ = ["Entry", "Manifest", "link_problem", "load_manifest", "validate_manifest"]

MAX_SYMLINK_HOPS = 40

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


def link_problem(by_path: dict[str, Entry], link: Entry) -> str | None:
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
            problem = link_problem(by_path, entry)
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
