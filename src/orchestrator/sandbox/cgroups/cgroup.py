"""One sandbox's cgroup: joining it, killing what runs in it, its usage and breaches,
and removing it."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from orchestrator.errors import CgroupError
from orchestrator.sandbox.cgroups.discovery import UNIFIED
from orchestrator.sandbox.cgroups.explain import explain
from orchestrator.sandbox.cgroups.files import read_int, read_kv, read_pids, tree, write_value
from orchestrator.sandbox.cgroups.owner import is_owner_name
from orchestrator.sandbox.limits import Limits

__all__ = ["Breach", "Cgroup", "Usage", "is_live", "mark_live"]

Breach = Literal["memory", "pids"]

KILL_TIMEOUT_S = 5.0

# Cgroup directories created by this process and not yet removed: sweep_stale never
# touches them, even when called with a prefix that matches.
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()


def mark_live(paths: Iterable[Path]) -> None:
    """Record cgroup directories just made by this process (until :meth:`Cgroup.remove`)."""
    with _LIVE_LOCK:
        _LIVE.update(paths)


def is_live(paths: Iterable[Path]) -> bool:
    """Whether any of ``paths`` is a cgroup this process made and has not removed."""
    with _LIVE_LOCK:
        return any(p in _LIVE for p in paths)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a cgroup used so far: CPU seconds, and peak memory in bytes when the kernel
    records it (v1 ``memory.max_usage_in_bytes``, v2 ``memory.peak``)."""

    cpu_s: float
    memory_peak_bytes: int | None


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
            write_value(path / "cgroup.procs", str(pid), f"move pid {pid} into cgroup {self.name}")

    def pids(self) -> list[int]:
        """Processes in this cgroup and any cgroup below it, in any of its hierarchies."""
        found: dict[int, None] = {}
        for path in self.paths:
            for sub in tree(path):
                found.update(dict.fromkeys(read_pids(sub / "cgroup.procs")))
        return list(found)

    def kill_all(self, timeout: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process in the cgroup (and below) until none is left; on v2
        ``cgroup.kill`` first. Raises :class:`CgroupError` if some survive ``timeout``."""
        if self.version == 2:
            kill = self._dirs[UNIFIED] / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(CgroupError):
                    write_value(kill, "1", f"kill cgroup {self.name}")
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
            ns = read_int(cpuacct / "cpuacct.usage") if cpuacct is not None else None
            cpu_s = ns / 1e9 if ns is not None else 0.0
            memory = self._dir("memory")
            peak = read_int(memory / "memory.max_usage_in_bytes") if memory else None
        else:
            unified = self._dirs[UNIFIED]
            stat = read_kv(unified / "cpu.stat") or {}
            cpu_s = stat.get("usage_usec", 0) / 1e6
            peak = read_int(unified / "memory.peak")
        return Usage(cpu_s=cpu_s, memory_peak_bytes=peak)

    def breach(self) -> Breach | None:
        """``"memory"`` if the kernel OOM-killed something here, ``"pids"`` if a fork
        failed on the process limit, else None. After :meth:`remove`, the final verdict."""
        if self._final is not None:
            return self._final[1]
        if self._memory_breached():
            return "memory"
        pids = self._dir("pids")
        events = read_kv(pids / "pids.events") if pids is not None else None
        if events and events.get("max", 0) > 0:
            return "pids"
        return None

    def _memory_breached(self) -> bool:
        memory = self._dir("memory")
        if memory is None:
            return False
        if self.version == 2:
            events = read_kv(memory / "memory.events") or {}
            return events.get("oom_kill", 0) > 0
        control = read_kv(memory / "memory.oom_control") or {}
        if "oom_kill" in control:  # kernels since 4.13
            return control["oom_kill"] > 0
        return (read_int(memory / "memory.failcnt") or 0) > 0  # older: the limit was hit

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
            for sub in tree(path):
                _rmdir(sub, deadline)
            if is_owner_name(path.parent.name):  # the owner's directory, once empty
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
                raise CgroupError(f"cannot remove cgroup {path}: {explain(exc)}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
