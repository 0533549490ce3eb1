"""Runs end on their own, and Ctrl-C stops them, whatever their sandboxes do.

Real processes throughout: sandboxed commands that stop their agent with SIGSTOP or leave
a child holding their pipes; ``orchestrator run`` processes sent SIGINT; many concurrent
runs sharing one home.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.ledger.events import SandboxMetered
from orchestrator.ledger.events import decode as decode_event
from orchestrator.ledger.state import RunState
from orchestrator.sandbox.teardown import TEARDOWN_GRACE_S, leaks, leaks_dir
from tests.backends import backends, needs
from tests.conftest import cli
from tests.crashing import PLANS, wait_until
from tests.plans.stubborn import stubborn_plan


def _argv(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "--home", str(home), *args]


@pytest.mark.parametrize("backend", backends("bwrap", "gvisor"))
async def test_nodes_whose_agent_is_stopped_or_whose_pipes_are_held_still_finish(
    home: Path, backend: str
) -> None:
    with Runtime(home=home, sandbox=backend) as rt:
        state = await rt.start(stubborn_plan())
        rows = rt.rows(state.run_id)
    assert state.status == "failed"
    stopped = state.nodes["stop-agent"]
    assert stopped.status == "failed" and "stopped answering" in str(stopped.error)
    held = state.nodes["hold-pipes"]
    assert held.status == "succeeded"
    assert held.outputs == {"text": "timed_out=True started"}
    metered = {
        e.node for e in map(decode_event, (r.body for r in rows)) if isinstance(e, SandboxMetered)
    }
    assert metered == {"stop-agent", "hold-pipes"}  # both sandboxes were torn down
    assert leaks(leaks_dir(home)) == []


def _spawn(home: Path, *args: str) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "child.log", "ab") as log:
        return subprocess.Popen(_argv(home, *args), start_new_session=True, stdout=log, stderr=log)


@pytest.mark.parametrize("backend", backends("bwrap", "gvisor"))
def test_ctrl_c_parks_and_a_second_ctrl_c_stops_at_once_leaving_it_resumable(
    home: Path, tmp_path: Path, backend: str
) -> None:
    gate = tmp_path / "gate"
    proc = _spawn(
        home,
        "run",
        "-q",
        f"{PLANS / 'basic.py'}:sandboxed",
        "--input",
        f"path={gate}",
        "--sandbox",
        backend,
    )
    try:
        state = wait_until(home, lambda s: len(s.nodes["sandboxed-wait"].journal) >= 1, 120)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: pause; the node cannot drain (no gate)
        wait_until(home, lambda s: s.status == "pausing")
        os.killpg(proc.pid, signal.SIGINT)  # again: stop now
        assert proc.wait(timeout=TEARDOWN_GRACE_S + 60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (home / "child.log").read_text()
    assert "Traceback" not in log
    with Runtime(home=home) as rt:
        stopped = rt.state(state.run_id)
        assert rt.live_status(stopped) == "interrupted"
        assert [ns.id for ns in stopped.in_flight()] == ["sandboxed-wait"]
        assert rt.verify(state.run_id).ok
    assert leaks(leaks_dir(home)) == []
    assert not _sandboxes_of(home)  # the in-flight sandbox went with the process
    gate.write_text("open")
    resumed = cli(home, "resume", state.run_id, "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with Runtime(home=home) as rt:
        done = rt.state(state.run_id)
    assert done.status == "succeeded"
    assert done.nodes["sandboxed-wait"].outputs == {"text": "before|open|before"}


def _echoed(count: int) -> Callable[[RunState], bool]:
    return lambda s: sum(ns.status == "succeeded" for ns in s.nodes.values()) > count


def _sandboxes_of(home: Path) -> list[int]:
    """Host processes whose command line names this home (the sandboxes' bind mounts)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(home).encode() in cmdline and b"orchestrator.cli" not in cmdline:
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1200)
@needs("bwrap")
def test_twenty_concurrent_runs_of_a_hundred_sandboxed_nodes_in_one_home_all_finish(
    home: Path,
) -> None:
    procs = [
        _spawn(
            home,
            "run",
            "-q",
            f"{PLANS / 'load.py'}:plan",
            "--sandbox",
            "bwrap",
            "--concurrency",
            "4",
        )
        for _ in range(20)
    ]
    deadline = time.monotonic() + 900
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    log = (home / "child.log").read_text()
    assert codes == [0] * 20, log[-3000:]
    with Runtime(home=home) as rt:
        runs = rt.runs()
        assert [r.status for r in runs] == ["succeeded"] * 20
        for r in runs:
            assert rt.state(r.run_id).nodes["sum"].outputs == {"total": sum(range(98))}
    assert "probe" not in log and "Traceback" not in log
    assert leaks(leaks_dir(home)) == []
