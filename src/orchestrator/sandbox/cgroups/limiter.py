"""Making sandbox cgroups with :class:`~orchestrator.sandbox.limits.Limits` applied, and
sweeping those a crashed orchestrator left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Literal

from orchestrator.errors import CgroupError
from orchestrator.sandbox.cgroups.cgroup import Cgroup, is_live, mark_live
from orchestrator.sandbox.cgroups.discovery import V1_REQUIRED, V2_CONTROLLERS, discover
from orchestrator.sandbox.cgroups.explain import explain
from orchestrator.sandbox.cgroups.files import read_value, subdirs, write_value
from orchestrator.sandbox.cgroups.owner import owner_alive, owner_name
from orchestrator.sandbox.limits import Limits

__all__ = ["CgroupLimiter", "cgroups_available", "sweep_stale"]

CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor for cfs quota

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class CgroupLimiter:
    """Makes sandbox cgroups with :class:`Limits` applied.

    ``parent`` is a cgroup path relative to the hierarchy's visible root (e.g.
    ``"/orchestrator"``); by default ``orchestrator/`` under this process's own cgroup.
    Raises :class:`CgroupError` when no usable cgroup hierarchy is mounted.
    """

    def __init__(
        self,
        *,
        parent: str | None = None,
        mountinfo: Path = Path("/proc/self/mountinfo"),
        proc_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> None:
        self._layout = discover(parent, mountinfo, proc_cgroup)
        self.owner = owner_name()
        self._ready = False
        self._lock = threading.Lock()

    @property
    def version(self) -> Literal[1, 2]:
        return self._layout.version

    @property
    def parents(self) -> dict[str, Path]:
        """The ``orchestrator/`` directory per v1 controller (v2: under ``"unified"``)."""
        return dict(self._layout.parents)

    def _owner_dirs(self) -> dict[str, Path]:
        return {c: p / self.owner for c, p in self._layout.parents.items()}

    def _prepare(self) -> None:
        """Create ``orchestrator/<owner>/`` (and on v2 enable the controllers above it)."""
        with self._lock:
            if self._ready:
                return
            for controller, owner_dir in self._owner_dirs().items():
                if self._layout.version == 2:
                    self._enable_v2(owner_dir)
                else:
                    try:
                        owner_dir.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise CgroupError(
                            f"cannot create the {controller} cgroup parent {owner_dir}: "
                            f"{explain(exc)}"
                        ) from exc
            self._ready = True

    def _enable_v2(self, owner_dir: Path) -> None:
        mount = self._layout.v2_mount
        assert mount is not None
        parts = owner_dir.relative_to(mount).parts
        chain = [mount.joinpath(*parts[:i]) for i in range(len(parts) + 1)]
        wanted = set(V2_CONTROLLERS)
        for directory in chain:
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {directory}: {explain(exc)}") from exc
            enabled = set((read_value(directory / "cgroup.subtree_control") or "").split())
            missing = sorted(wanted - enabled)
            if not missing:
                continue
            value = " ".join(f"+{c}" for c in missing)
            try:
                write_value(directory / "cgroup.subtree_control", value, "enable controllers")
            except CgroupError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
                    raise CgroupError(
                        f"cgroup v2 cannot enable {value} below {directory}: it has member "
                        "processes (the 'no internal processes' rule). Run the orchestrator "
                        "in a leaf cgroup and pass CgroupLimiter(parent=...) pointing at an "
                        "empty, delegated subtree"
                    ) from cause
                raise

    def create(self, name: str, limits: Limits | None = None) -> Cgroup:
        """Make the cgroup ``name`` and apply ``limits`` (default :class:`Limits`)."""
        if not _NAME.match(name):
            raise CgroupError(
                f"bad cgroup name {name!r}: use letters, digits, '.', '_' and '-' "
                "(at most 128, not starting with a punctuation mark)"
            )
        limits = limits if limits is not None else Limits()
        self._prepare()
        dirs = {c: d / name for c, d in self._owner_dirs().items()}
        made: list[Path] = []
        try:
            for directory in dict.fromkeys(dirs.values()):
                self._mkdir(directory)
                made.append(directory)
            cgroup = Cgroup(name, self._layout.version, dirs, limits)
            self._apply(cgroup, limits)
        except BaseException:
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise
        mark_live(cgroup.paths)
        return cgroup

    def _mkdir(self, directory: Path) -> None:
        for attempt in range(2):
            try:
                directory.mkdir()
                return
            except FileExistsError:
                raise CgroupError(
                    f"cgroup {directory.name} already exists at {directory} "
                    "(names must be unique; sweep_stale() removes a crashed run's leftovers)"
                ) from None
            except FileNotFoundError as exc:
                if attempt:  # the owner directory was removed (close()): make it again
                    raise CgroupError(f"cannot create cgroup {directory}: {explain(exc)}") from exc
                with self._lock:
                    self._ready = False
                self._prepare()
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {directory}: {explain(exc)}") from exc

    def _apply(self, cgroup: Cgroup, limits: Limits) -> None:
        what = f"set limits on cgroup {cgroup.name}"
        if cgroup.version == 2:
            unified = cgroup.paths[0]
            if limits.memory_mb is not None:
                write_value(unified / "memory.max", str(limits.memory_mb << 20), what)
                if (unified / "memory.swap.max").exists():
                    write_value(unified / "memory.swap.max", "0", what)
            if limits.pids is not None:
                write_value(unified / "pids.max", str(limits.pids), what)
            if limits.cpu_share is not None:
                write_value(
                    unified / "cpu.max", f"{_quota(limits.cpu_share)} {CFS_PERIOD_US}", what
                )
            return
        memory, pids, cpu = (cgroup.dirs[c] for c in V1_REQUIRED)
        if limits.memory_mb is not None:
            limit = str(limits.memory_mb << 20)
            write_value(memory / "memory.limit_in_bytes", limit, what)
            if (memory / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                write_value(memory / "memory.memsw.limit_in_bytes", limit, what)
        if limits.pids is not None:
            write_value(pids / "pids.max", str(limits.pids), what)
        if limits.cpu_share is not None:
            write_value(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US), what)
            write_value(cpu / "cpu.cfs_quota_us", str(_quota(limits.cpu_share)), what)

    def sweep_stale(self, prefix: str = "") -> list[str]:
        """Remove cgroups named ``prefix...`` whose owning orchestrator process is gone,
        killing what still runs in them; also drop dead owners' empty directories.
        Cgroups of live orchestrators (this one included) are left alone. Returns the
        names removed."""
        removed: list[str] = []
        parents = self._layout.parents
        owners = {p.name for parent in parents.values() for p in subdirs(parent)}
        for owner in sorted(owners):
            if owner == self.owner or owner_alive(owner):
                continue
            names = {p.name for parent in parents.values() for p in subdirs(parent / owner)}
            for name in sorted(n for n in names if n.startswith(prefix)):
                dirs = {c: parent / owner / name for c, parent in parents.items()}
                if is_live(dirs.values()):
                    continue
                Cgroup(name, self._layout.version, dirs, Limits()).remove()
                removed.append(name)
            for parent in parents.values():
                with contextlib.suppress(OSError):
                    os.rmdir(parent / owner)  # only succeeds once empty
        return removed

    def close(self) -> None:
        """Remove this orchestrator's owner directories if no cgroup is left in them."""
        with self._lock:
            for owner_dir in dict.fromkeys(self._owner_dirs().values()):
                with contextlib.suppress(OSError):
                    os.rmdir(owner_dir)
            self._ready = False


def _quota(share: float) -> int:
    return max(MIN_QUOTA_US, round(share * CFS_PERIOD_US))


def cgroups_available(*, parent: str | None = None) -> tuple[bool, str]:
    """Whether sandbox cgroups work here, by really creating and removing one; the
    reason when not."""
    try:
        limiter = CgroupLimiter(parent=parent)
    except CgroupError as exc:
        return False, str(exc)
    try:
        cgroup = limiter.create(f"probe-{secrets.token_hex(4)}", Limits())
        cgroup.remove()
    except CgroupError as exc:
        if os.geteuid() != 0:
            return False, f"not running as root: {exc}"
        return False, str(exc)
    finally:
        limiter.close()
    where = ", ".join(str(p) for p in dict.fromkeys(limiter.parents.values()))
    return True, f"cgroup v{limiter.version} under {where}"


def sweep_stale(prefix: str = "", *, parent: str | None = None) -> list[str]:
    """:meth:`CgroupLimiter.sweep_stale` with a default limiter; nothing to do (``[]``)
    when cgroups are not usable here."""
    try:
        limiter = CgroupLimiter(parent=parent)
    except CgroupError:
        return []
    return limiter.sweep_stale(prefix)
