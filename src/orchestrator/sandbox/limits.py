"""Per-sandbox resource limits through cgroups: memory, process count and CPU share.

Layout. Every sandbox gets one cgroup, placed under an ``orchestrator/`` parent and a
per-owner directory naming the orchestrator process that made it::

    <hierarchy>/<this process's cgroup>/orchestrator/o<pid>-<starttime>/<name>

* cgroup v1 (separate hierarchies): one such directory in each of ``memory``, ``pids``,
  ``cpu`` and, when mounted, ``cpuacct`` (co-mounted controllers share one directory).
* cgroup v2 (unified hierarchy, ``cgroup.controllers`` present): one directory carrying
  ``memory.max``, ``pids.max`` and ``cpu.max``; the controllers are switched on in the
  ``cgroup.subtree_control`` of every ancestor up from the mount.

Nesting under this process's own cgroup keeps sandboxes inside whatever limits and
accounting the orchestrator itself runs under (a systemd unit, a container) instead of
escaping to the root. Pass ``parent=`` to put them elsewhere (needed on cgroup v2 when the
orchestrator is not in the root cgroup: the "no internal processes" rule forbids enabling
controllers below a cgroup that has member processes).

The owner directory is what makes :func:`sweep_stale` safe: after a crash it removes only
cgroups whose owning orchestrator process is gone (killing whatever still runs in them),
never those of another orchestrator that is alive on the same machine.

Joining happens in the child between fork and exec (:attr:`Cgroup.preexec`), so the limits
hold for everything the sandboxed process starts, from its first instruction.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import OrchestratorError

__all__ = [
    "Breach",
    "Cgroup",
    "CgroupError",
    "CgroupLimiter",
    "Limits",
    "Usage",
    "cgroups_available",
    "sweep_stale",
]

Breach = Literal["memory", "pids"]

PARENT_NAME = "orchestrator"
V1_REQUIRED = ("memory", "pids", "cpu")
V1_OPTIONAL = ("cpuacct",)
V2_CONTROLLERS = ("memory", "pids", "cpu")
UNIFIED = "unified"  # key of the single directory on cgroup v2
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor for cfs quota
KILL_TIMEOUT_S = 5.0
DEFAULT_DISK_MB = 10 << 10  # 10 GiB

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_OWNER = re.compile(r"o(\d+)-(\d+)\Z")
_OCTAL = re.compile(rb"\\([0-7]{3})")

# Cgroup directories created by this process and not yet removed: sweep_stale never
# touches them, even when called with a prefix that matches.
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()


class CgroupError(OrchestratorError):
    """A cgroup could not be found, created, configured, joined, emptied or removed."""


class Limits(BaseModel):
    """What one sandbox may use. ``None`` means unlimited.

    ``cpu_share`` is a fraction of one CPU (cfs quota / period; 2.0 is two full CPUs).
    ``timeout_s`` is wall-clock and enforced by callers; it is only carried here.
    ``disk_mb`` bounds what a node attempt writes (its workspace's writable layer, see
    :mod:`orchestrator.sandbox.disk`, and the sandbox's ``/tmp``). The default, 10 GiB,
    holds a large checkout's build outputs and dependency trees (a big ``node_modules``
    is 1-2 GB) many times over, yet stops a runaway writer long before it fills a
    host's disk; the image is sparse, so an attempt pays only for what it writes.
    """

    model_config = ConfigDict(frozen=True)

    memory_mb: int | None = Field(default=1024, gt=0)
    pids: int | None = Field(default=256, gt=0)
    cpu_share: float | None = Field(default=1.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    disk_mb: int | None = Field(default=DEFAULT_DISK_MB, gt=0)

    def describe(self) -> dict[str, object]:
        """As canonical data for a plan's digest; the default ``disk_mb`` is left out so
        that plans written before it existed keep their digests."""
        data = self.model_dump()
        if data["disk_mb"] == DEFAULT_DISK_MB:
            del data["disk_mb"]
        return data


@dataclass(frozen=True, slots=True)
class Usage:
    """What a cgroup used so far: CPU seconds, and peak memory in bytes when the kernel
    records it (v1 ``memory.max_usage_in_bytes``, v2 ``memory.peak``)."""

    cpu_s: float
    memory_peak_bytes: int | None


# --------------------------------------------------------------------------- helpers


def _explain(exc: OSError) -> str:
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied (running as uid {os.geteuid()}; cgroups need root "
            "or a subtree delegated to this user)"
        )
    if code == errno.EROFS:
        return "the cgroup filesystem is mounted read-only (an unprivileged container?)"
    if code == errno.ENOENT:
        return "no such file (controller not mounted, or the cgroup was removed)"
    if code == errno.EBUSY:
        return "busy (the cgroup still has processes or child cgroups)"
    if code == errno.EINVAL:
        return "the kernel rejected the value"
    if code == errno.ESRCH:
        return "no such process"
    if code == errno.ENOSPC:
        return "no space (v2: no controllers enabled for this cgroup, or a limit on cgroups)"
    return exc.strerror or str(exc)


def _write(path: Path, value: str, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot {what}: writing {value!r} to {path}: {_explain(exc)}") from exc


def _read(path: Path) -> str | None:
    """A cgroup file's content, or None when it does not exist (cgroup or file gone)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the cgroup is being removed
            return None
        raise CgroupError(f"cannot read {path}: {_explain(exc)}") from exc


def _read_kv(path: Path) -> dict[str, int] | None:
    text = _read(path)
    if text is None:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_pids(path: Path) -> list[int]:
    text = _read(path)
    return [int(p) for p in text.split()] if text else []


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _tree(path: Path) -> Iterator[Path]:
    """``path`` and every cgroup below it, deepest first."""
    for child in _subdirs(path):
        yield from _tree(child)
    yield path


def starttime(pid: int) -> int | None:
    """A process's start time in clock ticks since boot; None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5); the list starts at field 3
    except (IndexError, ValueError):
        return None


def _owner_alive(name: str) -> bool:
    match = _OWNER.match(name)
    if match is None:
        return True  # not ours to judge: never sweep it
    return starttime(int(match.group(1))) == int(match.group(2))


def _make_preexec(procs_files: tuple[bytes, ...]) -> Callable[[], None]:
    """The hook run in the child between fork and exec: write its pid to each
    ``cgroup.procs``. Only os.getpid/open/write/close on paths computed beforehand."""

    def preexec() -> None:
        pid = b"%d" % os.getpid()
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    return preexec


# ------------------------------------------------------------------------- discovery


@dataclass(frozen=True, slots=True)
class _Mount:
    fstype: str
    root: str
    point: Path
    superopts: frozenset[str]


def _unescape(field: str) -> str:
    raw = os.fsencode(field)
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def _cgroup_mounts(mountinfo: Path) -> list[_Mount]:
    try:
        text = mountinfo.read_text(errors="surrogateescape")
    except OSError as exc:
        raise CgroupError(f"cannot read {mountinfo}: {_explain(exc)}") from exc
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lfields, rfields = left.split(), right.split()
        if len(lfields) < 5 or not rfields or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        superopts = frozenset(rfields[2].split(",")) if len(rfields) > 2 else frozenset()
        mounts.append(
            _Mount(rfields[0], _unescape(lfields[3]), Path(_unescape(lfields[4])), superopts)
        )
    return mounts


def _membership(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` on v2."""
    try:
        text = proc_cgroup.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {proc_cgroup}: {_explain(exc)}") from exc
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def _visible(own: str, mount_root: str) -> str:
    """``own`` relative to a mount whose root is ``mount_root`` ("/" if not below it)."""
    if mount_root in ("", "/"):
        return own
    if own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
        return own[len(mount_root.rstrip("/")) :] or "/"
    return "/"


@dataclass(frozen=True, slots=True)
class _Layout:
    version: Literal[1, 2]
    parents: dict[str, Path]  # controller (v2: UNIFIED) -> the orchestrator/ directory
    v2_mount: Path | None


def _discover(parent: str | None, mountinfo: Path, proc_cgroup: Path) -> _Layout:
    mounts = _cgroup_mounts(mountinfo)
    member = _membership(proc_cgroup)

    def place(mount: _Mount, own: str) -> Path:
        rel = parent if parent is not None else f"{_visible(own, mount.root)}/{PARENT_NAME}"
        return mount.point.joinpath(*[p for p in rel.split("/") if p])

    v1: dict[str, _Mount] = {}
    for mount in mounts:
        if mount.fstype == "cgroup":
            for controller in mount.superopts & {*V1_REQUIRED, *V1_OPTIONAL}:
                v1.setdefault(controller, mount)
    if any(c in v1 for c in V1_REQUIRED):
        missing = [c for c in V1_REQUIRED if c not in v1]
        if missing:
            raise CgroupError(
                f"cgroup v1 controller(s) {', '.join(missing)} are not mounted "
                f"(found {', '.join(sorted(v1))}); sandbox limits need memory, pids and cpu"
            )
        parents = {c: place(m, member.get(c, "/")) for c, m in v1.items()}
        return _Layout(1, parents, None)

    unified = [m for m in mounts if m.fstype == "cgroup2"]
    if not unified:
        raise CgroupError("no cgroup filesystem is mounted (neither v1 controllers nor cgroup2)")
    mount = next((m for m in unified if m.point == Path("/sys/fs/cgroup")), unified[0])
    available = (_read(mount.point / "cgroup.controllers") or "").split()
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupError(
            f"cgroup v2 at {mount.point} lacks controller(s) {', '.join(missing)} "
            f"(available: {' '.join(available) or 'none'})"
        )
    return _Layout(2, {UNIFIED: place(mount, member.get("", "/"))}, mount.point)


# ---------------------------------------------------------------------------- cgroup


class Cgroup:
    """One sandbox's cgroup (one directory per v1 hierarchy, or one v2 directory)."""

    def __init__(
        self, name: str, version: Literal[1, 2], dirs: Mapping[str, Path], limits: Limits
    ) -> None:
        self.name = name
        self.version: Literal[1, 2] = version
        self.limits = limits
        self._dirs = dict(dirs)
        self._removed = False
        self._final: tuple[Usage, Breach | None] | None = None
        procs = tuple(os.fsencode(d / "cgroup.procs") for d in self.paths)
        self.preexec: Callable[[], None] = _make_preexec(procs)
        """For ``subprocess.Popen``/``asyncio.create_subprocess_exec(preexec_fn=...)``:
        moves the child into this cgroup before it executes anything."""

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, v{self.version}, {[str(p) for p in self.paths]})"

    @property
    def paths(self) -> tuple[Path, ...]:
        """The distinct directories of this cgroup (co-mounted controllers share one)."""
        return tuple(dict.fromkeys(self._dirs.values()))

    @property
    def dirs(self) -> dict[str, Path]:
        """The directory per v1 controller (v2: under ``"unified"``)."""
        return dict(self._dirs)

    def _dir(self, controller: str) -> Path | None:
        return self._dirs.get(UNIFIED if self.version == 2 else controller)

    # -- membership

    def add(self, pid: int) -> None:
        """Move a running process (all its threads) into this cgroup. Children it has
        already started stay where they are: prefer :attr:`preexec`, which has no race."""
        if pid == os.getpid():
            raise CgroupError("refusing to move the orchestrator itself into a sandbox cgroup")
        for path in self.paths:
            _write(path / "cgroup.procs", str(pid), f"move pid {pid} into cgroup {self.name}")

    def pids(self) -> list[int]:
        """Processes in this cgroup and any cgroup below it, in any of its hierarchies."""
        found: dict[int, None] = {}
        for path in self.paths:
            for sub in _tree(path):
                found.update(dict.fromkeys(_read_pids(sub / "cgroup.procs")))
        return list(found)

    def kill_all(self, timeout: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process in the cgroup (and below) until none is left; on v2
        ``cgroup.kill`` first. Raises :class:`CgroupError` if some survive ``timeout``."""
        if self.version == 2:
            kill = self._dirs[UNIFIED] / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(CgroupError):
                    _write(kill, "1", f"kill cgroup {self.name}")
        me = os.getpid()
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            victims = [p for p in self.pids() if p != me]
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"{len(victims)} process(es) in cgroup {self.name} survived SIGKILL for "
                    f"{timeout:g}s (uninterruptible sleep?): {victims[:10]}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- accounting

    def usage(self) -> Usage:
        """CPU seconds used and peak memory. After :meth:`remove`, the final values."""
        if self._final is not None:
            return self._final[0]
        if self.version == 1:
            cpuacct = self._dir("cpuacct")
            ns = _read_int(cpuacct / "cpuacct.usage") if cpuacct is not None else None
            cpu_s = ns / 1e9 if ns is not None else 0.0
            memory = self._dir("memory")
            peak = _read_int(memory / "memory.max_usage_in_bytes") if memory else None
        else:
            unified = self._dirs[UNIFIED]
            stat = _read_kv(unified / "cpu.stat") or {}
            cpu_s = stat.get("usage_usec", 0) / 1e6
            peak = _read_int(unified / "memory.peak")
        return Usage(cpu_s=cpu_s, memory_peak_bytes=peak)

    def breach(self) -> Breach | None:
        """``"memory"`` if the kernel OOM-killed something here, ``"pids"`` if a fork
        failed on the process limit, else None. After :meth:`remove`, the final verdict."""
        if self._final is not None:
            return self._final[1]
        if self._memory_breached():
            return "memory"
        pids = self._dir("pids")
        events = _read_kv(pids / "pids.events") if pids is not None else None
        if events and events.get("max", 0) > 0:
            return "pids"
        return None

    def _memory_breached(self) -> bool:
        memory = self._dir("memory")
        if memory is None:
            return False
        if self.version == 2:
            events = _read_kv(memory / "memory.events") or {}
            return events.get("oom_kill", 0) > 0
        control = _read_kv(memory / "memory.oom_control") or {}
        if "oom_kill" in control:  # kernels since 4.13
            return control["oom_kill"] > 0
        return (_read_int(memory / "memory.failcnt") or 0) > 0  # older: the limit was hit

    # -- teardown

    def remove(self, timeout: float = KILL_TIMEOUT_S) -> None:
        """Kill everything inside, then remove the directories. Idempotent; a cgroup
        already gone is fine. Usage and breach stay readable afterwards."""
        if self._removed:
            return
        self.kill_all(timeout)
        with contextlib.suppress(CgroupError):
            self._final = (self.usage(), self.breach())
        deadline = time.monotonic() + timeout
        for path in self.paths:
            for sub in _tree(path):
                _rmdir(sub, deadline)
            if _OWNER.match(path.parent.name):  # the owner's directory, once empty
                with contextlib.suppress(OSError):
                    os.rmdir(path.parent)
        self._removed = True
        with _LIVE_LOCK:
            _LIVE.difference_update(self.paths)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def _rmdir(path: Path, deadline: float) -> None:
    delay = 0.0005
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # Right after the last process dies the kernel may still report busy.
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {_explain(exc)}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------- limiter


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
        self._layout = _discover(parent, mountinfo, proc_cgroup)
        pid = os.getpid()
        self.owner = f"o{pid}-{starttime(pid) or 0}"
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
                            f"{_explain(exc)}"
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
                raise CgroupError(f"cannot create cgroup {directory}: {_explain(exc)}") from exc
            enabled = set((_read(directory / "cgroup.subtree_control") or "").split())
            missing = sorted(wanted - enabled)
            if not missing:
                continue
            value = " ".join(f"+{c}" for c in missing)
            try:
                _write(directory / "cgroup.subtree_control", value, "enable controllers")
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
        with _LIVE_LOCK:
            _LIVE.update(cgroup.paths)
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
                    raise CgroupError(f"cannot create cgroup {directory}: {_explain(exc)}") from exc
                with self._lock:
                    self._ready = False
                self._prepare()
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {directory}: {_explain(exc)}") from exc

    def _apply(self, cgroup: Cgroup, limits: Limits) -> None:
        what = f"set limits on cgroup {cgroup.name}"
        if cgroup.version == 2:
            unified = cgroup.paths[0]
            if limits.memory_mb is not None:
                _write(unified / "memory.max", str(limits.memory_mb << 20), what)
                if (unified / "memory.swap.max").exists():
                    _write(unified / "memory.swap.max", "0", what)
            if limits.pids is not None:
                _write(unified / "pids.max", str(limits.pids), what)
            if limits.cpu_share is not None:
                _write(unified / "cpu.max", f"{_quota(limits.cpu_share)} {CFS_PERIOD_US}", what)
            return
        memory, pids, cpu = (cgroup._dirs[c] for c in V1_REQUIRED)
        if limits.memory_mb is not None:
            limit = str(limits.memory_mb << 20)
            _write(memory / "memory.limit_in_bytes", limit, what)
            if (memory / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                _write(memory / "memory.memsw.limit_in_bytes", limit, what)
        if limits.pids is not None:
            _write(pids / "pids.max", str(limits.pids), what)
        if limits.cpu_share is not None:
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US), what)
            _write(cpu / "cpu.cfs_quota_us", str(_quota(limits.cpu_share)), what)

    def sweep_stale(self, prefix: str = "") -> list[str]:
        """Remove cgroups named ``prefix...`` whose owning orchestrator process is gone,
        killing what still runs in them; also drop dead owners' empty directories.
        Cgroups of live orchestrators (this one included) are left alone. Returns the
        names removed."""
        removed: list[str] = []
        parents = self._layout.parents
        owners = {p.name for parent in parents.values() for p in _subdirs(parent)}
        for owner in sorted(owners):
            if owner == self.owner or _owner_alive(owner):
                continue
            names = {p.name for parent in parents.values() for p in _subdirs(parent / owner)}
            for name in sorted(n for n in names if n.startswith(prefix)):
                dirs = {c: parent / owner / name for c, parent in parents.items()}
                with _LIVE_LOCK:
                    if any(d in _LIVE for d in dirs.values()):
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


# ------------------------------------------------------------------------ module API


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
