"""Disk limits end to end, on real bwrap and gVisor sandboxes with real loop-mounted images.

A node writing past ``Limits(disk_mb=...)`` fails (and is retried) with reason ``disk
limit``, leaving nothing large behind; ``/tmp`` inside the sandbox is bounded too; a node
within its limit keeps what it wrote through a SIGKILL of the orchestrator and a resume; a
finished run's work directory is gone; ``gc`` removes leftovers but keeps a parked run's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from orchestrator import Runtime, signing
from orchestrator.ledger.events import NodeFailed, NodeResumed, RetryScheduled, decode
from orchestrator.sandbox.disk import Disk, mounts_under
from tests.backends import backends, needs
from tests.conftest import cli
from tests.crashing import sigkill, spawn_run, wait_until
from tests.plans.disk import LIMIT_MB, filler_plan

ROOT = os.geteuid() == 0
BACKENDS = backends()
pytestmark = pytest.mark.skipif(not ROOT, reason="loop-mounting disk images needs root")
KEEPER = "tests.plans.disk:keeper_plan"
REPO = str(Path(__file__).resolve().parents[1])  # so that `resume` imports tests.plans
BASIC_WAIT = "tests.plans.basic:waiting"


def allocated(path: Path) -> int:
    """Bytes ``path`` takes on the host's disk."""
    out = subprocess.run(["du", "-s", "-B1", "-x", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else 0


def fill(path: Path, mb: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_writing_past_the_limit_fails_with_disk_limit_and_leaves_nothing(
    backend: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with Runtime(home=home, sandbox=backend) as rt:
        state = await rt.start(filler_plan())
        events = [decode(r.body) for r in rt.store.read(state.run_id)]
    assert state.status == "failed"
    # Past the limit: each attempt fails with the reason, and is retried by its policy.
    retried = [e for e in events if isinstance(e, RetryScheduled) and e.node == "filler"]
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert len(retried) == 1 and "disk limit exceeded" in retried[0].reason.message
    assert [(e.node, e.cause) for e in failed] == [("filler", "retries_exhausted")]
    assert "disk limit exceeded" in failed[0].reason.message
    assert f"more than {LIMIT_MB} MB" in failed[0].reason.message
    # Within the limit: fine. /tmp is bounded as well (the write stops at the limit).
    assert state.nodes["modest"].outputs == {"code": 0}
    tmp = state.nodes["tmp-filler"].outputs
    assert tmp is not None and tmp["code"] != 0 and tmp["written"] <= LIMIT_MB << 20
    # The run ended: its work directory (images included) is gone, nothing is mounted.
    assert not (home / "runs" / state.run_id).exists()
    assert mounts_under(home) == []
    assert allocated(home) < 20 << 20


def test_a_disk_image_bounds_what_is_written_and_reports_the_breach(tmp_path: Path) -> None:
    disk = Disk(tmp_path / "attempt", LIMIT_MB).mount()
    try:
        assert disk.enforced and os.path.ismount(disk.root)
        assert not disk.breached()
        with pytest.raises(OSError, match="No space left on device"):
            fill(disk.root / "big", 200)  # stops well before 200 MB
        assert disk.breached()
        assert allocated(disk.image) < 2 * LIMIT_MB << 20
    finally:
        disk.unmount()
    assert not os.path.ismount(disk.root) and disk.image.exists()
    again = Disk(tmp_path / "attempt", LIMIT_MB).mount()  # a remount keeps what was written
    try:
        assert (again.root / "big").stat().st_size > LIMIT_MB << 20
    finally:
        again.unmount()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_within_the_limit_survive_sigkill_and_resume(backend: str, tmp_path: Path) -> None:
    home, gate = tmp_path / "home", tmp_path / "gate"
    env = {"ORCHESTRATOR_SANDBOX": backend, "PYTHONPATH": REPO}
    proc = spawn_run(home, KEEPER, f"path={gate}", env=env)
    state = wait_until(
        home,
        lambda s: any(e.effect == "checkpoint" for e in s.nodes["keeper"].journal),
        timeout=120,
    )
    run_id = state.run_id
    # The attempt's disk is mounted and holds the 5 MB it wrote.
    work = home / "runs" / run_id / "work" / "keeper.a1"
    assert os.path.ismount(work / "disk")
    assert (work / "disk" / "workspace" / "data.bin").stat().st_size == 5_000_000
    sigkill(proc)
    gate.write_text("open")
    resumed = cli(home, "resume", "-q", run_id, env=env)
    assert resumed.returncode == 0, resumed.stderr
    with Runtime(home=home) as rt:
        final = rt.state(run_id)
        events = [decode(r.body) for r in rt.store.read(run_id)]
    assert final.status == "succeeded", final.nodes["keeper"].error
    assert final.nodes["keeper"].attempt == 1
    assert [e.node for e in events if isinstance(e, NodeResumed)] == ["keeper"]
    assert final.nodes["keeper"].outputs == {"check": "data.bin: OK"}
    assert not (home / "runs" / run_id).exists()
    assert mounts_under(home) == []


@pytest.mark.timeout(300)
@needs("bwrap")
def test_gc_removes_leftovers_and_keeps_the_work_of_runs_that_can_resume(tmp_path: Path) -> None:
    home, gate = tmp_path / "home", tmp_path / "gate"
    env = {"ORCHESTRATOR_SANDBOX": "bwrap", "PYTHONPATH": REPO}
    # A run killed mid-node and never resumed: its work (a mounted disk) must stay.
    proc = spawn_run(home, KEEPER, f"path={gate}", env=env)
    kept = wait_until(
        home,
        lambda s: any(e.effect == "checkpoint" for e in s.nodes["keeper"].journal),
        timeout=120,
    ).run_id
    sigkill(proc)
    kept_work = home / "runs" / kept / "work" / "keeper.a1"
    assert os.path.ismount(kept_work / "disk")
    # A run parked at a gate: its attempt's disk (unmounted now) must stay too.
    approver = f"review={signing.generate().public}"
    drafter = "tests.plans.disk:drafter_plan"
    parked_run = cli(home, "run", "-q", drafter, "--approver", approver, env=env)
    assert parked_run.returncode == 3, parked_run.stderr  # parked
    with Runtime(home=home) as rt:
        parked = next(r.run_id for r in rt.runs() if r.status == "parked")
    parked_work = home / "runs" / parked / "work" / "drafter.a1"
    assert (parked_work / "disk.img").is_file()
    # Leftovers: a finished run's directory (as if the orchestrator died before removing
    # it) and an orphan no ledger knows, each with a mounted disk.
    finished = spawn_run(home, BASIC_WAIT, f"path={gate}x")
    (tmp_path / "gatex").write_text("open")
    assert finished.wait(timeout=120) == 0
    with Runtime(home=home) as rt:
        done = next(r.run_id for r in rt.runs() if r.status == "succeeded")
    leftovers = [home / "runs" / done, home / "runs" / "20000101-000000-orphan"]
    for path in leftovers:
        Disk(path / "work" / "n.a1", LIMIT_MB).mount()
        (path / "work" / "n.a1" / "disk" / "x").write_bytes(b"x" * 1000)

    dry = cli(home, "gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)["work"]
    assert report["removed"] == {done: "succeeded", "20000101-000000-orphan": "not in the ledger"}
    assert report["kept"] == 2
    assert all(p.exists() for p in leftovers)

    done_gc = cli(home, "gc")
    assert done_gc.returncode == 0, done_gc.stderr
    assert "removed 2 work directory(ies)" in " ".join(done_gc.stdout.split())
    assert not any(p.exists() for p in leftovers)
    assert (parked_work / "disk.img").is_file()
    # The interrupted run keeps its work, still mounted, and resumes with it.
    assert (kept_work / "disk" / "workspace" / "data.bin").stat().st_size == 5_000_000
    assert [m for m in mounts_under(home) if kept not in str(m)] == []
    gate.write_text("open")
    resumed = cli(home, "resume", "-q", kept, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert mounts_under(home) == []
    assert [p.name for p in (home / "runs").iterdir()] == [parked]
