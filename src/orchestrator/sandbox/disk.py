"""Disk limits: an attempt's writable layer on a filesystem image of bounded size.

An attempt directory ``base`` holds ``disk.img``, a sparse ext4 image, loop-mounted at
``base/disk``; everything the sandbox can write lives below that mount (the workspace, or
an overlay's upper and work directories), so the kernel stops a writer with ``ENOSPC``
once the image is full, and :meth:`Disk.breached` tells that the attempt wrote more than
its ``Limits.disk_mb``.

Why an image file and not a tmpfs or quotas: the image is on disk next to the run's other
state, so what an attempt wrote survives a SIGKILL of the orchestrator *and* a reboot (a
remount replays ext4's journal); a tmpfs survives the former only and would spend memory
the sandbox's cgroup is charged for; project quotas need a filesystem mounted with
``prjquota``, which the home's usually is not. The image is sparse and made without
online-resize reserve: an empty one takes ~250 KB of the host's disk and ~10 ms to make;
it grows as the node writes and goes when the attempt directory is removed.

The image is a little larger than the limit (ext4's own journal and inode tables come out
of it, and the overshoot lets :meth:`Disk.breached` see a writer go past the limit before
the filesystem is full). Without a limit (``disk_mb=None``), or where loop mounts are not
permitted (not root), ``base/disk`` is a plain directory and nothing is enforced.

:func:`remove_tree` is the only safe way to delete a tree that may hold such mounts:
``shutil.rmtree`` would walk into a mounted image and delete the work inside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Self

from orchestrator.errors import DiskError, WorkspaceError
from orchestrator.sandbox.workspace import MOUNTINFO, _unescape, _unmount

__all__ = ["Disk", "DiskError", "image_mb", "mounts_under", "remove_tree"]

log = logging.getLogger(__name__)

IMAGE = "disk.img"
ROOT = "disk"
MKFS_TIMEOUT_S = 60.0
MOUNT_TIMEOUT_S = 60.0
# Sparse, no reserved blocks, no online-resize reserve (4 MB per GB otherwise written up
# front), inode tables and journal zeroed lazily by the kernel: ~10 ms, ~250 KB.
MKFS = (
    "mkfs.ext4",
    "-q",
    "-F",
    "-b",
    "4096",
    "-m",
    "0",
    "-O",
    "^resize_inode",
    "-E",
    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
)


def image_mb(limit_mb: int) -> int:
    """The image's size for a limit: ext4's overhead (a journal of 4-64 MB, inode tables
    ~2%) plus room to see a writer pass the limit before the filesystem is full."""
    return limit_mb + limit_mb // 16 + 16


class Disk:
    """``base/disk``: a mount of ``base/disk.img`` limited to ``limit_mb``, or a plain
    directory when ``limit_mb`` is None. :meth:`mount` makes or reuses the image."""

    def __init__(self, base: Path, limit_mb: int | None) -> None:
        self.base = base.absolute()
        self.limit_mb = limit_mb
        self.enforced = False
        """Whether the limit holds (the image is mounted at :attr:`root`)."""

    def __repr__(self) -> str:
        state = f"{self.limit_mb} MB" if self.enforced else "unlimited"
        return f"Disk({str(self.root)!r}, {state})"

    @property
    def image(self) -> Path:
        return self.base / IMAGE

    @property
    def root(self) -> Path:
        """Where the writable filesystem is: put everything the sandbox writes below it."""
        return self.base / ROOT

    def mount(self) -> Self:
        """Mount the image at :attr:`root`, making it first if there is none; a mount a
        killed orchestrator left is kept as it is. Blocks (mkfs, mount): call off the loop."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiskError(f"cannot create {self.root}: {exc}") from exc
        if self.limit_mb is None:
            return self
        if os.geteuid() != 0:
            log.warning("not root: the disk limit of %s is not enforced", self.root)
            return self
        if os.path.ismount(self.root):
            self.enforced = True
            return self
        if not self.image.exists():
            self._make()
        options = "loop,nosuid,nodev,noatime"
        argv = ["mount", "-t", "ext4", "-o", options, str(self.image), str(self.root)]
        self._run(argv, "mount", MOUNT_TIMEOUT_S)
        self.enforced = True
        return self

    def _make(self) -> None:
        partial = self.image.with_suffix(".partial")
        try:
            with open(partial, "wb") as f:
                f.truncate(image_mb(self.limit_mb or 0) << 20)
        except OSError as exc:
            raise DiskError(f"cannot create the disk image {partial}: {exc}") from exc
        self._run([*MKFS, str(partial)], "format", MKFS_TIMEOUT_S)
        partial.rename(self.image)  # a half-made image is never mounted

    def _run(self, argv: list[str], what: str, timeout: float) -> None:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DiskError(f"cannot {what} the disk image {self.image}: {exc}") from exc
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()[-400:]
            if os.geteuid() != 0:
                detail += f" (loop mounts need root; running as uid {os.geteuid()})"
            raise DiskError(f"cannot {what} the disk image {self.image}: {detail}")

    def used_bytes(self) -> int | None:
        """Bytes in use on the image, or None when nothing is enforced."""
        if not self.enforced:
            return None
        try:
            stat = os.statvfs(self.root)
        except OSError:
            return None
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def breached(self) -> bool:
        """Whether more than ``limit_mb`` has been written (or the image is full)."""
        used = self.used_bytes()
        return used is not None and self.limit_mb is not None and used > self.limit_mb << 20

    def unmount(self) -> None:
        """Unmount everything below :attr:`base` (lazily when busy); the image stays."""
        unmount_under(self.base)
        self.enforced = False

    def move(self, base: Path) -> None:
        """Rename the whole attempt directory to ``base`` (mounts inside move with it)."""
        try:
            self.base.rename(base)
        except OSError as exc:
            raise DiskError(f"cannot move {self.base} to {base}: {exc}") from exc
        self.base = base.absolute()


def mounts_under(prefix: Path, mountinfo: Path = MOUNTINFO) -> list[Path]:
    """Every mount point at or below ``prefix`` (any filesystem), deepest first."""
    prefix = prefix.absolute()
    with contextlib.suppress(OSError):
        prefix = prefix.resolve()
    points = []
    for line in mountinfo.read_text(errors="surrogateescape").splitlines():
        fields = line.split(" - ", 1)[0].split()
        if len(fields) >= 5:
            point = Path(_unescape(fields[4]))
            if point == prefix or prefix in point.parents:
                points.append(point)
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def unmount_under(prefix: Path) -> list[Path]:
    """Unmount every mount at or below ``prefix`` (overlays before the images under them,
    lazily when busy). Returns the mount points unmounted."""
    done: list[Path] = []
    for _ in range(64):  # stacked mounts on one point need one pass each
        points = mounts_under(prefix)
        if not points:
            return done
        for point in points:
            try:
                _unmount(point)
            except WorkspaceError as exc:
                raise DiskError(str(exc)) from exc
            done.append(point)
    raise DiskError(f"mounts under {prefix} keep reappearing")


def remove_tree(path: Path) -> list[Path]:
    """Delete ``path`` and everything below it, unmounting first whatever is mounted
    there; never deletes inside a mount. Returns the mount points unmounted."""
    unmounted = unmount_under(path)
    if mounts_under(path):
        raise DiskError(f"{path} still has mounts below it; refusing to delete it")
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise DiskError(f"cannot remove {path}: {exc}") from exc
    return unmounted
