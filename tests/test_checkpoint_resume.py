"""Crash today, resume Thursday: SIGKILL mid-node, lose the SQLite ledger, resume from S3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.ledger.events import NodeResumed, decode
from orchestrator.storage.objects import blob_key, open_object_store
from tests.backends import needs
from tests.conftest import cli
from tests.crashing import sigkill, wait_until
from tests.plans.ckpt import STEPS
from tests.s3server import Moto

pytestmark = needs("bwrap")

PLAN = f"{Path(__file__).parent / 'plans' / 'ckpt.py'}:plan"
CLI = [sys.executable, "-m", "orchestrator.cli"]


def crashed_run(home: Path, objects: str) -> str:
    """Start the appender, SIGKILL it between checkpoints, return its run id."""
    home.mkdir(parents=True)
    argv = [*CLI, "--home", str(home), "--objects", objects, "run", "-q", PLAN]
    argv += ["--sandbox", "bwrap", "--checkpoint-every", "0.25"]
    with open(home / "child.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log)
    state = wait_until(
        home,
        lambda s: (
            s.checkpoint is not None
            and s.checkpoint.workspaces == 1
            and len(s.nodes["appender"].journal) >= STEPS // 2 + 3
        ),
        timeout=60,
    )
    sigkill(proc)
    return state.run_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_from_s3_alone_after_losing_the_ledger(home: Path, moto: Moto) -> None:
    objects = moto.url(f"resume/{home.parent.name}")
    run_id = crashed_run(home, objects)
    for leftover in home.glob("ledger.db*"):
        leftover.unlink()  # the local ledger is gone
    resumed = cli(home, "resume", "--json", run_id, "--from", objects, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    outputs = json.loads(resumed.stdout)["nodes"]["appender"]["outputs"]
    # The workspace came back from its snapshot and the journal was served up to it, so the
    # file holds each step exactly once — what an uncrashed run leaves.
    assert outputs == {"lines": STEPS, "last": f"step {STEPS - 1}"}
    with Runtime(home=home, objects=objects) as rt:
        events = [decode(r.body) for r in rt.store.read(run_id)]
        marks = [e for e in events if isinstance(e, NodeResumed)]
        assert len(marks) == 1 and marks[0].snapshot is not None
        assert all(r.ok for r in rt.checkpoints(run_id)), [
            r.problem for r in rt.checkpoints(run_id)
        ]
    replay = cli(home, "replay", run_id)
    assert replay.returncode == 0, replay.stdout


def test_uncrashed_reference(home: Path) -> None:
    ran = cli(home, "run", "--json", PLAN, "--sandbox", "bwrap")
    assert ran.returncode == 0, ran.stderr
    outputs = json.loads(ran.stdout)["nodes"]["appender"]["outputs"]
    assert outputs == {"lines": STEPS, "last": f"step {STEPS - 1}"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_damaged_checkpoint_is_refused_naming_the_object(home: Path, tmp_path: Path) -> None:
    objects = str(tmp_path / "objects")
    run_id = crashed_run(home, objects)
    for leftover in home.glob("ledger.db*"):
        leftover.unlink()
    store = open_object_store(objects)
    first = json.loads(store.get(store.list(f"runs/{run_id}/checkpoints/")[0]))
    segment = blob_key(first["manifest"]["segment"]["digest"])
    data = bytearray(store.get(segment))
    data[len(data) // 2] ^= 0x01
    (tmp_path / "objects" / segment).write_bytes(bytes(data))
    refused = cli(home, "resume", run_id, "--from", objects)
    assert refused.returncode == 1
    assert segment in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_interrupted_checkpoint_leaves_the_previous_one_valid(
    home: Path, tmp_path: Path
) -> None:
    objects = str(tmp_path / "objects")
    run_id = crashed_run(home, objects)
    store = open_object_store(objects)
    keys = store.list(f"runs/{run_id}/checkpoints/")
    # What a kill in the middle of writing the next checkpoint can leave: its manifest is
    # absent or cut short (object writes are atomic, so only a torn copy made by hand).
    torn = f"runs/{run_id}/checkpoints/{999999:012d}.json"
    (tmp_path / "objects" / torn).write_bytes(store.get(keys[-1])[:100])
    for leftover in home.glob("ledger.db*"):
        leftover.unlink()
    resumed = cli(home, "resume", "--json", run_id, "--from", objects, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_on_a_new_machine_the_signer_can_be_pinned(
    home: Path, tmp_path: Path, key_dir: Path
) -> None:
    from orchestrator import signing

    objects = str(tmp_path / "objects")
    run_id = crashed_run(home, objects)
    public = (key_dir / "runs" / f"{run_id}.pub").read_text().strip()
    new_home = tmp_path / "elsewhere"  # no ledger, no keys, no pins: only the object store
    there = {
        "ORCHESTRATOR_TRUST": str(tmp_path / "elsewhere-trust"),
        "ORCHESTRATOR_KEYS": str(tmp_path / "elsewhere-keys"),
    }
    unpinned = cli(new_home, "resume", run_id, "--from", objects, env=there)
    assert unpinned.returncode == 1
    assert f"--signer {public}" in " ".join(unpinned.stderr.split())
    stranger = signing.generate().public
    refused = cli(new_home, "resume", run_id, "--from", objects, "--signer", stranger, env=there)
    assert refused.returncode == 1
    assert "which is not a key trusted" in " ".join(refused.stderr.split())
    pinned = cli(
        new_home, "resume", "--json", run_id, "--from", objects, "--signer", public, env=there
    )
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(pinned.stdout)["status"] == "succeeded"
