"""A run carries what later commands need: its object store is recorded with it, and the
commands it prints name its home, so they work from any directory without more flags."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator import Runtime, signing
from orchestrator.checkpoint import list_checkpoints
from orchestrator.storage.objects import open_object_store
from tests.conftest import cli
from tests.crashing import PLANS
from tests.s3server import Moto

PLAN_REF = f"{PLANS / 'gated.py'}:plan"


WHERE = {f"ORCHESTRATOR_{n}" for n in ("HOME", "LEDGER", "OBJECTS", "CONFIG", "PROFILE")}
"""Where the command line looks for runs: left to the test (keys and trust are kept)."""


def elsewhere(
    cwd: Path, command: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A printed `orchestrator …` command, run as printed from another directory."""
    argv = shlex.split(command)
    assert argv[0] == "orchestrator"
    clean = {k: v for k, v in os.environ.items() if k not in WHERE}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *argv[1:], *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "COLUMNS": "400", **(env or {})},
        cwd=cwd,
    )


def test_a_printed_approve_works_from_anywhere_and_checkpoints_stay_in_the_run_s_store(
    home: Path, tmp_path: Path, moto: Moto
) -> None:
    key = tmp_path / "me.key"
    signing.save(signing.generate(), key)
    objects = moto.url(f"contained/{tmp_path.name}")
    ran = cli(
        home,
        "--objects",
        objects,
        "run",
        PLAN_REF,
        "--approver",
        f"review={signing.load(key).public}",
        env={"COLUMNS": "400"},
    )
    assert ran.returncode == 3, ran.stdout + ran.stderr
    run_id = re.search(r"run (\S+) started", ran.stderr).group(1)  # type: ignore[union-attr]
    printed = re.search(r"approve: (orchestrator .*)$", ran.stdout, re.MULTILINE)
    assert printed, ran.stdout
    assert f"--home {home}" in printed.group(1)
    with Runtime(home=home, objects=objects) as rt:
        assert rt.state(run_id).config["objects"] == objects  # recorded with the run
        parked = list_checkpoints(rt.objects, run_id)
    assert parked

    other = tmp_path / "somewhere" / "else"
    other.mkdir(parents=True)
    approved = elsewhere(other, printed.group(1), "--key", str(key))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert not (other / ".orchestrator").exists()  # nothing made where it was run

    with Runtime(home=home, objects=objects) as rt:
        assert rt.state(run_id).status == "succeeded"
        final = list_checkpoints(rt.objects, run_id)
    assert len(final) > len(parked)  # the final checkpoint went to S3, not to home/objects
    local = open_object_store(str(home / "objects"))
    assert list_checkpoints(local, run_id) == []

    listed = elsewhere(other, f"orchestrator --home {home} checkpoints verify {run_id}")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert f"checkpoints OK: {len(final)} verified in" in listed.stdout
    assert "s3://" in listed.stdout

    stored = elsewhere(other, f"orchestrator ls --from {shlex.quote(objects)} --json")
    assert stored.returncode == 0, stored.stderr
    [row] = json.loads(stored.stdout)
    assert (row["run_id"], row["checkpoints"], row["signature"]) == (run_id, len(final), "ok")
    assert row["label"] == "succeeded"
    stranger = elsewhere(
        other,
        f"orchestrator ls --from {shlex.quote(objects)}",
        env={"ORCHESTRATOR_TRUST": str(tmp_path / "another-user-trust")},
    )
    assert run_id in stranger.stdout and "unpinned here" in stranger.stdout


def test_a_flag_still_names_another_store_for_a_recorded_run(home: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "store-a", tmp_path / "store-b"
    ran = cli(home, "--objects", str(first), "run", f"{PLANS / 'basic.py'}:plan", "-i", "text=a b")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = re.search(r"run (\S+) started", ran.stderr).group(1)  # type: ignore[union-attr]
    recorded = cli(home, "checkpoints", run_id)
    assert recorded.returncode == 0 and "succeeded" in recorded.stdout  # found in store-a
    moved = cli(home, "--objects", str(second), "checkpoints", run_id)
    assert "is missing from the object store" in moved.stdout  # the flag was obeyed


def test_listing_a_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "store"
    listed = elsewhere(tmp_path, f"orchestrator ls --from {missing}")
    assert listed.returncode == 1 and "no such directory" in listed.stderr
    assert not (tmp_path / "no").exists()
