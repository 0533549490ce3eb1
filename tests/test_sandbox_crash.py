"""SIGKILL the orchestrator while nodes work in sandboxes; resume finishes the job cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.sandbox.workspace import overlay_mounts
from tests.conftest import cli
from tests.crashing import sigkill, wait_until

CLI = [sys.executable, "-m", "orchestrator.cli"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["gvisor", "bwrap"])
def test_kill_mid_demo_then_resume(home: Path, backend: str) -> None:
    home.mkdir(parents=True)
    with open(home / "child.log", "w") as log:
        proc = subprocess.Popen(
            [*CLI, "--home", str(home), "demo", "-q", "--packages", "6", "--sandbox", backend],
            stdout=log,
            stderr=log,
            env=dict(os.environ),
        )
    state = wait_until(
        home,
        lambda s: sum(len(n.journal) >= 2 and n.status == "running" for n in s.nodes.values()) >= 2,
        timeout=120,
    )
    sigkill(proc)
    run_id = state.run_id
    mounted = [m for m in overlay_mounts() if str(home) in str(m)]
    assert mounted, "the killed run's overlay workspaces are still mounted"
    resumed = cli(home, "resume", "-q", run_id)
    assert resumed.returncode == 0, resumed.stderr
    with Runtime(home=home) as rt:
        final = rt.state(run_id)
        assert final.status == "succeeded"
        resumed_nodes = [n for n in final.nodes.values() if n.resumed_from]
        assert resumed_nodes, "in-flight nodes were resumed, not restarted"
        assert all(n.attempt == 1 for n in resumed_nodes)
    replay = cli(home, "replay", run_id)
    assert replay.returncode == 0, replay.stdout
    assert [m for m in overlay_mounts() if str(home) in str(m)] == []
    assert list((home / "sandbox" / "live").glob("*")) == []
    repo = next((home / "demo").iterdir())
    branches = subprocess.run(
        ["git", "branch", "--list", "orchestrator/*"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    assert len(branches) == 6
