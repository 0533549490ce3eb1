"""Copy-on-write workspaces: an overlayfs mount per sandbox over one shared lower tree.

``OverlayWorkspace(lower, base)`` lays out ``base/upper`` (the sandbox's writes),
``base/work`` (overlayfs scratch) and ``base/merged`` (what the sandbox sees), and mounts
``lowerdir=lower,upperdir=upper,workdir=work`` on ``merged``. Writes and deletions in
``merged`` land in ``upper`` (deletions as whiteouts); ``lower`` is never modified, so
any number of workspaces share it and each costs only its own small upper directory.

Mounting goes straight through ``mount(2)``/``umount2(2)`` via ctypes (no process spawn).
When overlayfs cannot be used (not root, no overlay support, an upper filesystem overlayfs
refuses) the workspace falls back to a plain copy of ``lower`` into ``merged`` and says so
in :attr:`OverlayWorkspace.mode` and :attr:`OverlayWorkspace.fallback_reason`.

:func:`sweep_mounts` unmounts overlays that a crashed orchestrator left under a prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from orchestrator.errors import WorkspaceError
from orchestrator.sandbox.hidden import copy_ignore, hide_in_upper, inside

__all__ = ["OverlayWorkspace", "WorkspaceError", "overlay_mounts", "sweep_mounts"]

log = logging.getLogger(__name__)

Mode = Literal["overlay", "copy"]
MNT_DETACH = 2
MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(rb"\\([0-7]{3})")
_PAGE = 4096  # mount(2) option data is copied into one page


class _Libc:
    """mount(2) and umount2(2) through ctypes, loaded on first use."""

    _lib: ctypes.CDLL | None = None

    @classmethod
    def lib(cls) -> ctypes.CDLL:
        if cls._lib is None:
            try:
                lib = ctypes.CDLL("libc.so.6", use_errno=True)
            except OSError:
                lib = ctypes.CDLL(None, use_errno=True)
            lib.mount.argtypes = [
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_ulong,
                ctypes.c_char_p,
            ]
            lib.mount.restype = ctypes.c_int
            lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
            lib.umount2.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


def _mount_overlay(options: bytes, target: Path) -> None:
    if _Libc.lib().mount(b"overlay", os.fsencode(target), b"overlay", 0, options) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def _umount(target: Path, flags: int = 0) -> None:
    if _Libc.lib().umount2(os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def _escape(path: Path) -> bytes:
    """A path as an overlayfs option value: ``\\``, ``,`` and ``:`` backslash-escaped."""
    raw = os.fsencode(path)
    for char in (b"\\", b",", b":"):
        raw = raw.replace(char, b"\\" + char)
    return raw


def _explain(exc: OSError) -> str:
    code = exc.errno
    if code == errno.EPERM:
        return f"not permitted (mounting needs root / CAP_SYS_ADMIN; uid {os.geteuid()})"
    if code == errno.ENODEV:
        return "overlayfs is not supported by this kernel (modprobe overlay?)"
    if code == errno.EINVAL:
        return (
            "the kernel refused the overlay (upper/work on a filesystem overlayfs cannot "
            "use, e.g. another overlay or NFS; upper and work on different filesystems; or "
            "a lower directory that is itself an upper of a live overlay) — see dmesg"
        )
    if code == errno.EBUSY:
        return "busy (a process still has files open or its working directory inside)"
    if code == errno.ENOENT:
        return "no such directory"
    return exc.strerror or str(exc)


def _unescape(field: str) -> str:
    raw = os.fsencode(field)
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def overlay_mounts(mountinfo: Path = MOUNTINFO) -> list[Path]:
    """Mount points of every overlay mount in this process's mount namespace."""
    points = []
    for line in mountinfo.read_text(errors="surrogateescape").splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) >= 5 and right.split(" ", 1)[0] == "overlay":
            points.append(Path(_unescape(fields[4])))
    return points


def _is_mounted(point: Path) -> bool:
    return os.path.ismount(point)


def _unmount(point: Path) -> None:
    """Unmount ``point``; lazily (``MNT_DETACH``) when it is busy."""
    try:
        _umount(point)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            try:
                _umount(point, MNT_DETACH)
            except OSError as again:
                raise WorkspaceError(f"cannot unmount {point}: {_explain(again)}") from again
            log.warning("workspace %s was busy; detached it lazily", point)
        elif exc.errno in (errno.EINVAL, errno.ENOENT) and not _is_mounted(point):
            return  # not (or no longer) a mount point
        else:
            raise WorkspaceError(f"cannot unmount {point}: {_explain(exc)}") from exc


class OverlayWorkspace:
    """A copy-on-write view of ``lower`` at :attr:`merged`, with writes kept in :attr:`upper`.

    ``mode``: ``"auto"`` (overlay, else a plain copy), ``"overlay"`` (overlay or
    :class:`WorkspaceError`), ``"copy"`` (always copy). After :meth:`mount`, the attribute
    :attr:`mode` is what is actually in use and :attr:`fallback_reason` says why ``auto``
    fell back to copying, if it did. ``lower=None`` means an empty lower directory
    (``base/lower``). As a context manager it mounts on entry and unmounts on exit; the
    directories stay until :meth:`destroy`. ``hidden`` paths (the orchestrator's home,
    the key directory) are absent from the workspace when they lie inside ``lower``.
    """

    def __init__(
        self,
        lower: Path | None,
        base: Path,
        *,
        mode: Literal["auto", "overlay", "copy"] = "auto",
        hidden: Sequence[Path] = (),
    ) -> None:
        self.hidden = tuple(hidden)
        self.base = base.absolute()
        self.lower = lower.absolute() if lower is not None else self.base / "lower"
        self._own_lower = lower is None
        self._requested = mode
        self.mode: Mode = "copy" if mode == "copy" else "overlay"
        self.fallback_reason: str | None = None
        self.merged = self.base / "merged"
        self.work = self.base / "work"
        self.mounted = False

    def __repr__(self) -> str:
        state = "mounted" if self.mounted else "unmounted"
        return (
            f"OverlayWorkspace({str(self.lower)!r} -> {str(self.merged)!r}, {self.mode}, {state})"
        )

    @property
    def upper(self) -> Path:
        """Where this workspace's changes live: ``base/upper`` for an overlay (only what
        was written, with whiteouts for deletions); in copy mode the whole copied tree."""
        return self.base / "upper" if self.mode == "overlay" else self.merged

    def mount(self) -> Self:
        """Set up the directories and mount (or copy). A no-op when already mounted."""
        if self.mounted:
            return self
        if self._own_lower:
            self.lower.mkdir(parents=True, exist_ok=True)
        if not self.lower.is_dir():
            raise WorkspaceError(f"workspace lower directory {self.lower} is not a directory")
        if self._requested != "copy":
            try:
                self._mount_overlay()
                self.mode = "overlay"
                self.mounted = True
                return self
            except WorkspaceError as exc:
                if self._requested == "overlay":
                    raise
                self.fallback_reason = str(exc)
                for leftover in (self.base / "upper", self.work):  # made for the overlay
                    with contextlib.suppress(OSError):
                        leftover.rmdir()
                log.warning("overlayfs unavailable, copying the workspace instead: %s", exc)
        self._copy()
        self.mode = "copy"
        self.mounted = True
        return self

    def _mount_overlay(self) -> None:
        upper = self.base / "upper"
        try:
            for directory in (upper, self.work, self.merged):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create workspace directories in {self.base}: {exc}"
            ) from exc
        try:
            hide_in_upper(self.lower, upper, inside(self.lower, self.hidden))
        except OSError as exc:
            raise WorkspaceError(f"cannot hide protected paths in {upper}: {exc}") from exc
        options = (
            b"lowerdir="
            + _escape(self.lower)
            + b",upperdir="
            + _escape(upper)
            + b",workdir="
            + _escape(self.work)
        )
        if len(options) >= _PAGE:
            raise WorkspaceError(
                f"overlay options for {self.merged} exceed one page: paths too long"
            )
        try:
            try:
                # Metadata-only copy-up: giving the files to the sandbox's identity
                # (sandbox.identity) copies no data.
                _mount_overlay(options + b",metacopy=on", self.merged)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                _mount_overlay(options, self.merged)
        except (OSError, AttributeError) as exc:
            reason = _explain(exc) if isinstance(exc, OSError) else f"no mount(2) in libc: {exc}"
            raise WorkspaceError(f"cannot mount overlay on {self.merged}: {reason}") from exc

    def _copy(self) -> None:
        try:
            if self.merged.exists():
                if any(self.merged.iterdir()):
                    return  # remounting a copy: keep what the sandbox wrote
                self.merged.rmdir()
            self.base.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.lower, self.merged, symlinks=True, ignore=copy_ignore(self.hidden))
        except OSError as exc:
            raise WorkspaceError(f"cannot copy {self.lower} to {self.merged}: {exc}") from exc

    def unmount(self) -> None:
        """Unmount (lazily if busy). Copy mode: nothing to do. Idempotent."""
        if self.mode == "overlay" and (self.mounted or _is_mounted(self.merged)):
            _unmount(self.merged)
        self.mounted = False

    def destroy(self) -> None:
        """Unmount and delete ``base`` entirely (upper, work, merged, own empty lower)."""
        self.unmount()
        if self.mode == "overlay" and _is_mounted(self.merged):
            raise WorkspaceError(f"{self.merged} is still mounted; refusing to delete {self.base}")
        # overlayfs leaves work/work (mode 000) behind; rmtree copes as root.
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.base)

    def __enter__(self) -> Self:
        return self.mount()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()


def sweep_mounts(base_prefix: Path, mountinfo: Path = MOUNTINFO) -> list[Path]:
    """Unmount every overlay mounted at or below ``base_prefix`` (deepest first, lazily
    when busy): what a crashed orchestrator left. Returns the mount points unmounted."""
    prefix = base_prefix.absolute()
    with contextlib.suppress(OSError):
        prefix = base_prefix.resolve()
    done: list[Path] = []
    for _ in range(64):  # stacked mounts on one point need one pass each
        points = [p for p in overlay_mounts(mountinfo) if p == prefix or prefix in p.parents]
        if not points:
            return done
        for point in sorted(points, key=lambda p: len(p.parts), reverse=True):
            _unmount(point)
            done.append(point)
    raise WorkspaceError(f"overlay mounts under {prefix} keep reappearing")
