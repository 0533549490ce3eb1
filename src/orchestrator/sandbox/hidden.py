"""Paths a sandbox must never see, even when they lie inside its workspace.

The orchestrator's home (ledger, objects, locks) and the key directory may sit inside a
repository a node works on: ``--input repo=.`` overlays the directory that holds
``./.orchestrator``. An overlay workspace hides them with a whiteout in its upper layer,
so they are absent from the merged view, from what the sandbox sees, and from every
snapshot of it; a copied workspace leaves them out of the copy. Both compare directories
by identity (device and inode), so a second path to a protected tree (a bind mount, a
symlink resolved by the copy) is caught as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

__all__ = ["copy_ignore", "hide_in_upper", "inside"]


def inside(lower: Path, protected: Iterable[Path]) -> list[PurePosixPath]:
    """The protected paths that lie inside ``lower``, relative to it (symlinks resolved)."""
    base = lower.resolve()
    found = []
    for path in protected:
        resolved = path.resolve()
        if resolved != base and base in resolved.parents:
            found.append(PurePosixPath(resolved.relative_to(base)))
    return found


def hide_in_upper(lower: Path, upper: Path, hidden: Iterable[PurePosixPath]) -> None:
    """Put an overlayfs whiteout at each ``hidden`` path of ``upper``: the entry of
    ``lower`` at that path is absent from the merged view. Whatever ``upper`` held there
    (a node's writes to that name) is dropped first; missing parents are made like
    ``lower``'s, so the merged directories keep their owner and mode."""
    for rel in hidden:
        target = upper / rel
        for depth in range(1, len(rel.parts)):
            part = PurePosixPath(*rel.parts[:depth])
            _mkdir_like(lower / part, upper / part)
        if target.is_symlink() or target.exists():
            if _is_whiteout(target):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def copy_ignore(protected: Iterable[Path]) -> Callable[[str, list[str]], set[str]]:
    """An ``ignore`` for :func:`shutil.copytree` that leaves out the protected trees."""
    identities = set()
    for path in protected:
        with contextlib.suppress(OSError):
            info = path.stat()
            identities.add((info.st_dev, info.st_ino))

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set()
        for name in names:
            try:
                info = os.stat(os.path.join(directory, name), follow_symlinks=False)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in identities:
                skipped.add(name)
        return skipped

    return ignore


def _mkdir_like(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        return
    if target.is_symlink() or target.exists():
        target.unlink()
    target.mkdir()
    with contextlib.suppress(OSError):
        info = source.stat()
        os.chown(target, info.st_uid, info.st_gid)
        os.chmod(target, stat.S_IMODE(info.st_mode))


def _is_whiteout(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)
