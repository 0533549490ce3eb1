"""Bounded teardown of a sandbox's processes, and the record of those that would not die.

Stopping a sandbox escalates, each step bounded: end of input to the agent
(``EOF_GRACE_S`` to exit), SIGTERM to its process group (``TERM_GRACE_S``), then SIGKILL
to everything in its cgroup and process group (``KILL_GRACE_S`` for the processes to go,
as much for the pipes to close). Removing the cgroup gets ``REMOVE_GRACE_S``, the
backend's own cleanup (``runsc delete``) ``CLEANUP_GRACE_S``. So closing a sandbox never
takes longer than ``TEARDOWN_GRACE_S``; a sandbox that behaves takes milliseconds.

What survives is given up on and *leaked*: a record under ``HOME/sandbox/leaked/ID.json``
names its pid, process group, cgroup directories and backend, and :func:`sweep_leaks`
(run by the pool's sweep, at every run's start and at pool close) kills and removes it
later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from orchestrator.errors import CgroupError
from orchestrator.sandbox.cgroups.cgroup import Cgroup
from orchestrator.sandbox.cgroups.owner import starttime
from orchestrator.sandbox.limits import Limits

log = logging.getLogger("orchestrator.sandbox")

EOF_GRACE_S = 2.0
TERM_GRACE_S = 2.0
KILL_GRACE_S = 5.0
REMOVE_GRACE_S = 10.0  # a v1 cgroup stays busy a while after its last task, under load
CLEANUP_GRACE_S = 30.0
TEARDOWN_GRACE_S = EOF_GRACE_S + TERM_GRACE_S + 2 * KILL_GRACE_S + REMOVE_GRACE_S + CLEANUP_GRACE_S
"""The most closing one sandbox waits, all steps together (normally: milliseconds)."""

T = TypeVar("T")


async def bounded(work: Awaitable[T], seconds: float, what: str) -> tuple[bool, T | None]:
    """``(True, result)`` if ``work`` finished within ``seconds`` without raising, else
    ``(False, None)``, the failure logged. For teardown steps that must not stall it."""
    try:
        async with asyncio.timeout(seconds):
            return True, await work
    except TimeoutError:
        log.warning("%s did not finish within %gs; giving up on it", what, seconds)
    except Exception as exc:
        log.warning("%s failed: %s", what, exc)
    return False, None


def in_own_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """``fn()`` in a fresh daemon thread: a teardown step never queues behind other work
    in the loop's shared executor (which a busy run keeps full), and one that wedges
    keeps neither the loop nor the interpreter's exit waiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="sandbox-teardown", daemon=True).start()
    return future


async def kill_cgroup(cgroup: Cgroup, seconds: float) -> bool:
    """SIGKILL everything in ``cgroup`` until it is empty or ``seconds`` pass. Each round
    is a few reads and signals on the loop; the waits between are the loop's, so nothing
    queues for a thread."""
    deadline = time.monotonic() + seconds
    delay = 0.002
    while True:
        try:
            cgroup.kill_all(timeout=0)
            return True
        except CgroupError as exc:
            if time.monotonic() > deadline:
                log.warning("cgroup %s still busy after %gs: %s", cgroup.name, seconds, exc)
                return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def _gone(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    """Whether the process exited and its pipes closed (what ``wait`` means) in time."""
    try:
        async with asyncio.timeout(seconds):
            await proc.wait()
        return True
    except TimeoutError:
        return False


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (started with a session of its
    own), and to ``pid`` itself should it have left that group."""
    for send in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, sig)


def _terminate(proc: asyncio.subprocess.Process, cgroup: Cgroup | None) -> None:
    """SIGTERM to what runs inside the sandbox: its cgroup's processes but the backend's
    own (a bwrap that dies kills its namespace at once, leaving no time to clean up), or
    without a cgroup the process group."""
    if cgroup is None:
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
        return
    with contextlib.suppress(CgroupError):
        for pid in cgroup.pids():
            if pid != proc.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)


async def stop_process(proc: asyncio.subprocess.Process, cgroup: Cgroup | None) -> bool:
    """Escalate until ``proc`` is gone with its pipes closed: EOF, SIGTERM, then SIGKILL of
    its cgroup and its process group. False if it outlived every step."""
    if proc.stdin is not None:
        proc.stdin.close()
    if await _gone(proc, EOF_GRACE_S):
        return True
    _terminate(proc, cgroup)
    if await _gone(proc, TERM_GRACE_S):
        return True
    if cgroup is not None:
        await kill_cgroup(cgroup, KILL_GRACE_S)
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGKILL)
    return await _gone(proc, KILL_GRACE_S)


def kill_now(pid: int | None, cgroup: Cgroup | None) -> None:
    """One round of SIGKILL to the cgroup and the process group, waiting for nothing (for
    a teardown cut short: the leak record lets the sweep finish the job)."""
    if cgroup is not None:
        with contextlib.suppress(CgroupError):
            for victim in cgroup.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(victim, signal.SIGKILL)
    if pid is not None:
        signal_group(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- leaks


def leaks_dir(home: Path) -> Path:
    """Where a home's sandboxes that could not be stopped are recorded."""
    return home / "sandbox" / "leaked"


def record_leak(
    directory: Path,
    sandbox_id: str,
    backend: str,
    pid: int | None,
    cgroup: Cgroup | None,
) -> Path:
    """Write the record of a sandbox given up on; :func:`sweep_leaks` reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "id": sandbox_id,
        "backend": backend,
        "pid": pid,
        "starttime": starttime(pid) if pid is not None else None,
        "cgroup": None if cgroup is None else _cgroup_record(cgroup),
        "owner": os.getpid(),
        "at": time.time(),
    }
    path = directory / f"{sandbox_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True))
    tmp.replace(path)
    log.warning("sandbox %s could not be stopped; recorded as leaked in %s", sandbox_id, path)
    return path


def leaks(directory: Path) -> list[dict[str, Any]]:
    """The leak records in ``directory`` (unreadable ones skipped)."""
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text()))
    return found


def sweep_leaks(directory: Path, cleanup: Callable[[str, str], None]) -> list[str]:
    """Kill and remove what each leak record names; drop the records whose sandbox is
    gone. ``cleanup(backend, sandbox_id)`` removes the backend's leftovers (runsc
    containers). Returns the ids swept."""
    swept = []
    for record in leaks(directory):
        sandbox_id = str(record.get("id", ""))
        if not sandbox_id:
            continue
        pid = record.get("pid")
        if isinstance(pid, int) and starttime(pid) == record.get("starttime"):
            signal_group(pid, signal.SIGKILL)  # still the very process that leaked
        gone = True
        cg = record.get("cgroup")
        if isinstance(cg, dict):
            try:
                _cgroup_of(cg).remove(KILL_GRACE_S)
            except (CgroupError, OSError, KeyError, TypeError, ValueError) as exc:
                log.warning("leaked sandbox %s: its cgroup is still busy: %s", sandbox_id, exc)
                gone = False
        try:
            cleanup(str(record.get("backend", "")), sandbox_id)
        except Exception as exc:
            log.warning("leaked sandbox %s: backend cleanup failed: %s", sandbox_id, exc)
            gone = False
        if gone:
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{sandbox_id}.json").unlink()
            swept.append(sandbox_id)
    return swept


def _cgroup_record(cgroup: Cgroup) -> dict[str, Any]:
    return {
        "name": cgroup.name,
        "version": cgroup.version,
        "dirs": {key: str(path) for key, path in cgroup.dirs.items()},
    }


def _cgroup_of(record: dict[str, Any]) -> Cgroup:
    dirs: dict[str, Path] = {str(k): Path(str(v)) for k, v in dict(record["dirs"]).items()}
    version: Literal[1, 2] = 2 if record["version"] == 2 else 1
    return Cgroup(str(record["name"]), version, dirs, Limits())
