"""Helpers to run a plan in a child process and SIGKILL it at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator import Runtime
from orchestrator.ledger.state import RunState

PLANS = Path(__file__).parent / "plans"


def spawn_run(
    home: Path, plan_ref: str, *inputs: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "orchestrator.cli", "--home", str(home), "run", "-q", plan_ref]
    for pair in inputs:
        argv += ["--input", pair]
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "child.log", "a") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            text=True,
            env={**os.environ, **(env or {})},
        )


def wait_until(home: Path, predicate: Callable[[RunState], bool], timeout: float = 30) -> RunState:
    """Poll the ledger (read-only) until a run's folded state satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    with Runtime(home=home) as rt:
        while time.monotonic() < deadline:
            runs = rt.store.runs()
            if runs:
                state = rt.state(runs[-1].run_id)
                if predicate(state):
                    return state
            time.sleep(0.02)
    raise TimeoutError("the run never reached the expected state")


def stop_when(
    proc: subprocess.Popen[str], home: Path, predicate: Callable[[RunState], bool], timeout: float
) -> RunState:
    """SIGSTOP ``proc`` at a moment its run's ledger satisfies ``predicate`` and return that
    state, which holds until the process is continued or killed. (A state seen while the
    process runs may be gone by the time it is killed.)"""
    deadline = time.monotonic() + timeout
    while True:
        wait_until(home, predicate, timeout=max(deadline - time.monotonic(), 0.1))
        os.kill(proc.pid, signal.SIGSTOP)
        while _state_letter(proc.pid) != b"T":
            assert time.monotonic() < deadline + 10, "the process never stopped"
            time.sleep(0.005)
        with Runtime(home=home) as rt:
            state = rt.state(rt.store.runs()[-1].run_id)
        if predicate(state):
            return state
        os.kill(proc.pid, signal.SIGCONT)


def _state_letter(pid: int) -> bytes:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :].split()[0]


def sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def host_cmdlines() -> dict[int, str]:
    """Every host process's command line (kernel threads and vanished ones left out)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if raw:
                found[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


def processes_with(needle: str) -> list[str]:
    """Command lines of host processes (not this one) that mention ``needle``."""
    return [c for pid, c in host_cmdlines().items() if needle in c and pid != os.getpid()]
