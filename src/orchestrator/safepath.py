"""Paths from plans, snapshots or users are never trusted: resolve them inside a root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A path that would leave its root (absolute, ``..``, or through a symlink)."""


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing anything that would land outside ``root``."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or "\0" in relative:
        raise UnsafePath(f"path {relative!r} must be relative and stay inside the workspace")
    base = root.resolve()
    target = (base / pure).resolve()
    if target != base and base not in target.parents:
        raise UnsafePath(f"path {relative!r} escapes the workspace (through a symlink)")
    return target
