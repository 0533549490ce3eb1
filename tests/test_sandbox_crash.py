"""SIGKILL the orchestrator while nodes work in sandboxes; resume finishes the job cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.ledger.events import NodeResumed, RetryScheduled, decode
from orchestrator.sandbox.workspace import overlay_mounts
from tests.backends import backends
from tests.conftest import cli
from tests.crashing import sigkill, stop_when

CLI = [sys.executable, "-m", "orchestrator.cli"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", backends())
def test_kill_mid_demo_then_resume(home: Path, key_dir: Path, backend: str) -> None:
    home.mkdir(parents=True)
    with open(home / "child.log", "w") as log:
        proc = subprocess.Popen(
            [*CLI, "--home", str(home), "demo", "-q", "--packages", "12", "--sandbox", backend],
            stdout=log,
            stderr=log,
            env=dict(os.environ),
        )
    # Stopped while at least two nodes are at work in their sandboxes, then killed: their
    # overlays are still mounted, and resume continues them rather than restarting them.
    state = stop_when(
        proc,
        home,
        lambda s: sum(len(n.journal) >= 2 and n.status == "running" for n in s.nodes.values()) >= 2,
        timeout=120,
    )
    sigkill(proc)
    run_id = state.run_id
    with Runtime(home=home) as rt:
        in_flight = {n.id for n in rt.state(run_id).nodes.values() if n.status == "running"}
    assert len(in_flight) >= 2, in_flight
    assert [m for m in overlay_mounts() if str(home) in str(m)]
    resumed = cli(home, "resume", "-q", run_id)
    assert resumed.returncode == 3, resumed.stderr  # parked at the demo's merge gate
    key = str(key_dir / "demo-approver.key")
    approved = cli(home, "approve", "-q", run_id, "merge", "--key", key)
    assert approved.returncode == 0, approved.stderr
    with Runtime(home=home) as rt:
        final = rt.state(run_id)
        assert final.status == "succeeded"
        events = [decode(r.body) for r in rt.store.read(run_id)]
        resumed_marks = {(e.node, e.attempt) for e in events if isinstance(e, NodeResumed)}
        retried = {e.node: e.reason for e in events if isinstance(e, RetryScheduled)}
        # Every in-flight attempt is resumed; it should also finish in that same attempt
        # (its workspace restored from its last snapshot, or started afresh when it had
        # none, so a command killed mid-write leaves no trace).
        assert {(node_id, 1) for node_id in in_flight} <= resumed_marks
        not_in_first = {
            node_id: retried.get(node_id)
            for node_id in in_flight
            if final.nodes[node_id].attempt != 1
        }
    replay = cli(home, "replay", run_id)
    assert replay.returncode == 0, replay.stdout
    assert [m for m in overlay_mounts() if str(home) in str(m)] == []
    assert list((home / "sandbox" / "live").glob("*")) == []
    (repo,) = (home / "demo").glob("monorepo-*")
    branches = subprocess.run(
        ["git", "branch", "--list", "orchestrator/*"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    assert len(branches) == 12
    # No resumed attempt needed a retry: the lower their workspaces stack on (the run's
    # own clone) never changed under them, since branches are published to the repo.
    assert not_in_first == {}
