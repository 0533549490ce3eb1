"""Closing a sandbox always ends, within the stated grace, whatever its processes do.

Real backends and real processes: an agent that ignores end of input and SIGTERM and
leaves a child holding its pipes, one whose child escapes
every signal the teardown can aim (no cgroup, a session of its own: it is recorded as
leaked and swept later), and backend probes of many processes sharing one home.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.sandbox.base import BackendName, SandboxSpec
from orchestrator.sandbox.factory import launcher_for, limiter_for
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.process import AgentSandbox, Launcher
from orchestrator.sandbox.teardown import (
    TEARDOWN_GRACE_S,
    leaks,
    leaks_dir,
    record_leak,
    sweep_leaks,
)
from tests.backends import backends

BOUND_S = TEARDOWN_GRACE_S + 30  # generous: the machine is shared and slow under load

# Answers the host like the real agent, but ignores SIGTERM (noting that it came) and end
# of input (noting it too), and first forks a child that holds stdout and ignores SIGTERM.
STUBBORN = """
import json, os, signal, sys, time
ws = os.environ.get("ORCHESTRATOR_WORKSPACE", "/workspace")
def note(name):
    with open(os.path.join(ws, name), "a") as f:
        f.write("x")
signal.signal(signal.SIGTERM, lambda *_: note("term"))
child = os.fork()
if child == 0:
    if os.environ.get("STUBBORN_ESCAPE"):
        os.setsid()
    while True:
        time.sleep(1)
with open(os.path.join(ws, "child"), "w") as f:
    f.write(str(child))
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.write(json.dumps({"id": req["id"], "pid": os.getpid()}) + "\\n")
    sys.stdout.flush()
note("eof")
while True:
    time.sleep(1)
"""


class StubbornLauncher:
    """A real backend's launcher whose agent is ``STUBBORN`` instead of the real one."""

    def __init__(self, inner: Launcher, agent_dir: Path, escape: bool = False) -> None:
        self.name = inner.name
        self._inner = inner
        self._agent_dir = agent_dir
        self._escape = escape
        agent_dir.mkdir(parents=True, exist_ok=True)
        (agent_dir / "agent.py").write_text(STUBBORN)

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent_dir: Path
    ) -> list[str]:
        argv = self._inner.command(sandbox_id, spec, workspace, self._agent_dir)
        return ["env", "STUBBORN_ESCAPE=1", *argv] if self._escape else argv

    def cleanup(self, sandbox_id: str) -> None:
        self._inner.cleanup(sandbox_id)

    def host_limits(self, limits: Limits) -> Limits:
        return self._inner.host_limits(limits)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


async def _wait_for(path: Path, bound: float = 60) -> None:
    deadline = time.monotonic() + bound
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", backends("bwrap", "gvisor", "local"))
async def test_an_agent_ignoring_eof_and_sigterm_is_killed_within_the_grace(
    tmp_path: Path, backend: BackendName
) -> None:
    home = tmp_path / "home"
    launcher = StubbornLauncher(launcher_for(backend, home), tmp_path / "agent")
    workspace = tmp_path / "ws"
    sandbox = AgentSandbox(
        launcher, SandboxSpec(effects=frozenset({"fs"})), workspace, limiter_for(home)
    )
    sandbox.leaks = leaks_dir(home)
    await sandbox.start()
    await _wait_for(workspace / "child")
    pids = sandbox.pids()
    assert pids
    await asyncio.wait_for(sandbox.close(), BOUND_S)
    # it was asked nicely first (end of input, then SIGTERM), then killed with its child
    assert (workspace / "eof").exists()
    if backend != "gvisor":  # runsc does not hand SIGTERM on to the container
        assert (workspace / "term").exists()
    assert _alive(pids) == []
    assert leaks(leaks_dir(home)) == []


async def test_a_process_that_escapes_every_signal_is_recorded_as_leaked_then_swept(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    launcher = StubbornLauncher(launcher_for("local", home), tmp_path / "agent", escape=True)
    workspace = tmp_path / "ws"
    # no cgroup: nothing holds the child that left the process group
    sandbox = AgentSandbox(launcher, SandboxSpec(), workspace, None, leaks=leaks_dir(home))
    await sandbox.start()
    await _wait_for(workspace / "child")
    child = int((workspace / "child").read_text())
    try:
        await asyncio.wait_for(sandbox.close(), BOUND_S)
        [record] = leaks(leaks_dir(home))
        assert record["id"] == sandbox.id and record["backend"] == "local"
        assert isinstance(record["pid"], int)
        assert _alive([child]) == [child]  # it really got away
    finally:
        os.kill(child, signal.SIGKILL)
    # gone now: nothing the record names is left, so the sweep drops it
    deadline = time.monotonic() + 30
    while _alive([child]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sweep_leaks(leaks_dir(home), lambda backend, sandbox_id: None) == [sandbox.id]
    assert leaks(leaks_dir(home)) == []


PROBES = """
import asyncio, sys
from pathlib import Path
from orchestrator.sandbox.factory import probe_backend
for _ in range(3):
    probe = asyncio.run(probe_backend(sys.argv[1], Path(sys.argv[2])))
    print(probe.ok, probe.reason)
"""


@pytest.mark.parametrize("backend", backends("bwrap"))
def test_concurrent_probes_in_one_home_do_not_pull_each_others_workspace(
    tmp_path: Path, backend: BackendName
) -> None:
    home = tmp_path / "home"
    argv = [sys.executable, "-c", PROBES, backend, str(home)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(10)]
    lines = [line for p in procs for line in p.communicate(timeout=300)[0].splitlines()]
    assert [p.returncode for p in procs] == [0] * 10
    assert len(lines) == 30
    assert [line for line in lines if not line.startswith("True")] == []
    assert not any((home / "sandbox" / "probe").iterdir())


async def test_the_sweep_kills_and_removes_a_leaked_sandboxs_cgroup(tmp_path: Path) -> None:
    limiter = limiter_for(tmp_path)
    if limiter is None:
        pytest.skip("cgroups are not usable here")
    cgroup = limiter.create(f"sbx-leak-{os.getpid()}")
    proc = await asyncio.create_subprocess_exec("sleep", "600")
    cgroup.add(proc.pid)
    directory = tmp_path / "leaked"
    record_leak(directory, cgroup.name, "bwrap", proc.pid, cgroup)
    assert [r["id"] for r in leaks(directory)] == [cgroup.name]
    assert sweep_leaks(directory, lambda backend, sandbox_id: None) == [cgroup.name]
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    assert not any(path.exists() for path in cgroup.paths)
    assert leaks(directory) == []
