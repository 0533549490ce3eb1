"""Reading and writing cgroup files, and walking cgroup directories."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import CgroupError
from orchestrator.sandbox.cgroups.explain import explain

__all__ = ["read_int", "read_kv", "read_pids", "read_value", "subdirs", "tree", "write_value"]


def write_value(path: Path, value: str, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot {what}: writing {value!r} to {path}: {explain(exc)}") from exc


def read_value(path: Path) -> str | None:
    """A cgroup file's content, or None when it does not exist (cgroup or file gone)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the cgroup is being removed
            return None
        raise CgroupError(f"cannot read {path}: {explain(exc)}") from exc


def read_kv(path: Path) -> dict[str, int] | None:
    text = read_value(path)
    if text is None:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def read_int(path: Path) -> int | None:
    text = read_value(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_pids(path: Path) -> list[int]:
    text = read_value(path)
    return [int(p) for p in text.split()] if text else []


def subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def tree(path: Path) -> Iterator[Path]:
    """``path`` and every cgroup below it, deepest first."""
    for child in subdirs(path):
        yield from tree(child)
    yield path
