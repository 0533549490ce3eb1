"""An object-store outage, for real: the moto server behind a TCP proxy that is stopped
(connections refused) and started again on the same port while a run checkpoints."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from orchestrator import Runtime, signing
from orchestrator.checkpoint import Manifest
from orchestrator.ledger.events import CheckpointFailed, CheckpointTaken, Event, decode
from orchestrator.ledger.store import StoredEvent
from tests.backends import needs
from tests.conftest import cli
from tests.s3server import BUCKET, Moto
from tests.tcpproxy import TcpProxy, tcp_proxy

PLAN = f"{Path(__file__).parent / 'plans' / 'outage.py'}:plan"
CLI = [sys.executable, "-m", "orchestrator.cli"]


@pytest.fixture
def proxy(moto: Moto) -> Iterator[TcpProxy]:
    port = urlsplit(moto.endpoint).port
    assert port is not None
    with tcp_proxy(port) as running:
        yield running


@pytest.fixture
def outage_dir(tmp_path: Path) -> Path:
    path = tmp_path / "outage"
    path.mkdir()
    return path


def store_url(proxy: TcpProxy, prefix: str) -> str:
    """The store through the proxy, with short timeouts so a dead store fails fast."""
    return (
        f"s3://{BUCKET}/{prefix}?endpoint={proxy.endpoint}&region=us-east-1"
        "&connect_timeout=1&read_timeout=10&max_attempts=2"
    )


def start_run(home: Path, objects: str, outage_dir: Path, grace: float) -> subprocess.Popen[str]:
    home.mkdir(parents=True, exist_ok=True)
    argv = [*CLI, "--home", str(home), "--objects", objects, "run", PLAN]
    argv += ["--sandbox", "bwrap", "--checkpoint-every", "0.5"]
    env = {
        **os.environ,
        "OUTAGE_DIR": str(outage_dir),
        "ORCHESTRATOR_STORE_GRACE": f"{grace:g}",
        "COLUMNS": "200",
    }
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=home.parent
    )


@contextmanager
def holding_run(
    home: Path, objects: str, outage_dir: Path, grace: float
) -> Iterator[subprocess.Popen[str]]:
    """The outage plan, started and waited for until its workers hold mid-run after a
    first checkpoint; killed on the way out if it is still going."""
    proc = start_run(home, objects, outage_dir, grace)
    try:
        wait_for(home, "nodes mid-run and a first checkpoint", holding, 180)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def released(proc: subprocess.Popen[str], outage_dir: Path) -> tuple[str, str]:
    """Let the workers finish; the run's output once it has succeeded."""
    (outage_dir / "release").touch()
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    return stdout, stderr


def events_of(home: Path) -> tuple[str, list[StoredEvent], list[Event]]:
    with Runtime(home=home) as rt:
        runs = rt.store.runs()
        if not runs:
            return "", [], []
        rows = rt.store.read(runs[-1].run_id)
    return runs[-1].run_id, rows, [decode(r.body) for r in rows]


def wait_for(home: Path, what: str, ok: Callable[[list[Event]], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok(events_of(home)[2]):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the run never got to: {what}")


def holding(events: list[Event]) -> bool:
    """Every worker has done its first steps (3 commands, 3 tools) and waits for release,
    and one checkpoint went through."""
    taken = any(isinstance(e, CheckpointTaken) for e in events)
    journals = Counter(getattr(e, "node", "") for e in events if e.kind == "EffectRecorded")
    return taken and all(journals[f"worker{n}"] >= 6 for n in range(3))


def failures(events: list[Event]) -> list[CheckpointFailed]:
    return [e for e in events if isinstance(e, CheckpointFailed)]


def taken_after_failure(events: list[Event]) -> bool:
    seen_failure = False
    for event in events:
        seen_failure = seen_failure or isinstance(event, CheckpointFailed)
        if seen_failure and isinstance(event, CheckpointTaken):
            return True
    return False


def performed(outage_dir: Path) -> list[str]:
    log = outage_dir / "performed"
    return log.read_text().splitlines() if log.exists() else []


def manifests_of(home: Path, objects: str, run_id: str) -> list[Manifest]:
    with Runtime(home=home, objects=objects) as rt:
        reports = rt.checkpoints(run_id)
    assert reports and all(r.ok for r in reports), [r.problem for r in reports]
    manifests = [r.manifest for r in reports if r.manifest is not None]
    assert manifests[0].segment.first == 0
    for before, after in itertools.pairwise(manifests):
        assert after.segment.first == before.seq + 1, "segments are contiguous"
    return manifests


def rebuild_elsewhere(
    tmp_path: Path, home: Path, objects: str, run_id: str, outage_dir: Path
) -> list[StoredEvent]:
    """``resume --from`` in a fresh home: the whole ledger comes back, nothing is redone."""
    before = performed(outage_dir)
    public = (signing.key_dir() / "runs" / f"{run_id}.pub").read_text().strip()
    elsewhere = tmp_path / "elsewhere"
    resumed = cli(
        elsewhere,
        "resume",
        "--json",
        run_id,
        "--from",
        objects,
        "--signer",
        public,
        env={"OUTAGE_DIR": str(outage_dir)},
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"
    assert performed(outage_dir) == before, "no effect is performed again"
    with Runtime(home=elsewhere) as rt:
        return rt.store.read(run_id)


@pytest.mark.slow
@pytest.mark.timeout(400)
@needs("bwrap")
def test_a_store_outage_mid_run_is_recorded_retried_and_caught_up(
    home: Path, proxy: TcpProxy, outage_dir: Path, tmp_path: Path
) -> None:
    objects = store_url(proxy, f"outage/{tmp_path.name}")
    with holding_run(home, objects, outage_dir, grace=30) as proc:
        proxy.stop()
        wait_for(home, "two failed checkpoints", lambda es: len(failures(es)) >= 2, 120)
        proxy.start()
        wait_for(home, "a checkpoint after the outage", taken_after_failure, 120)
        stdout, stderr = released(proc, outage_dir)
    assert "succeeded" in stdout and "warning" not in stderr and "Traceback" not in stderr
    run_id, rows, events = events_of(home)
    failed = failures(events)
    assert failed[0].label == "periodic" and "cannot reach" in failed[0].error
    assert [f.failures for f in failed[:2]] == [1, 2] and failed[1].retry_in > failed[0].retry_in
    # The store holds the whole ledger: contiguous segments from seq 0 to the final cut,
    # after which the ledger holds only the record of that last checkpoint.
    manifests = manifests_of(home, objects, run_id)
    assert manifests[-1].seq == rows[-1].seq - 1 and isinstance(events[-1], CheckpointTaken)
    assert set(Counter(performed(outage_dir)).values()) == {1}, "no effect performed twice"
    rebuilt = rebuild_elsewhere(tmp_path, home, objects, run_id, outage_dir)
    assert rebuilt == rows[: manifests[-1].seq + 1]
    replayed = cli(home, "replay", run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
@needs("bwrap")
def test_a_store_down_through_the_end_warns_and_sync_catches_up(
    home: Path, proxy: TcpProxy, outage_dir: Path, tmp_path: Path
) -> None:
    objects = store_url(proxy, f"down/{tmp_path.name}")
    with holding_run(home, objects, outage_dir, grace=2) as proc:
        proxy.stop()
        wait_for(home, "a failed checkpoint", lambda es: len(failures(es)) >= 1, 120)
        # The store never comes back: the run still ends, within its grace plus the
        # store's own bounded timeouts.
        stdout, stderr = released(proc, outage_dir)
    assert "succeeded" in stdout and "Traceback" not in stderr
    run_id, rows, events = events_of(home)
    assert f"orchestrator checkpoints sync {run_id}" in " ".join(stderr.split())
    completed = next(i for i, e in enumerate(events) if e.kind == "RunCompleted")
    assert all(isinstance(e, CheckpointFailed) for e in events[completed + 1 :])
    assert len(events) > completed + 1, "the final checkpoint failed and was recorded"

    down = cli(home, "--objects", objects, "checkpoints", "sync", run_id)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "not usable" in " ".join(down.stderr.split())
    proxy.start()
    synced = cli(home, "--objects", objects, "checkpoints", "sync", run_id)
    assert synced.returncode == 0, synced.stderr
    again = cli(home, "--objects", objects, "checkpoints", "sync", run_id)
    assert again.returncode == 0 and "already hold" in again.stdout
    _, rows, _ = events_of(home)
    manifests = manifests_of(home, objects, run_id)
    assert manifests[-1].label == "sync" and manifests[-1].seq == rows[-1].seq - 1
    rebuilt = rebuild_elsewhere(tmp_path, home, objects, run_id, outage_dir)
    assert rebuilt == rows[:-1]


@pytest.mark.parametrize("problem", ["unreachable", "no bucket"])
def test_an_unusable_store_at_start_is_an_error_and_nothing_is_written(
    home: Path, proxy: TcpProxy, outage_dir: Path, tmp_path: Path, problem: str
) -> None:
    objects = store_url(proxy, "never")
    if problem == "unreachable":
        proxy.stop()
    else:
        objects = objects.replace(f"s3://{BUCKET}/", "s3://no-such-bucket/")
    home.mkdir()
    ran = cli(home, "--objects", objects, "run", PLAN, env={"OUTAGE_DIR": str(outage_dir)})
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr and ran.stderr.startswith("error:")
    message = " ".join(ran.stderr.split())
    expected = "cannot reach" if problem == "unreachable" else "does not exist"
    assert "cannot start the run" in message and expected in message
    assert "Nothing was recorded" in message
    assert ran.stderr.strip().count("\n\n") == 0, "one paragraph"
    with Runtime(home=home) as rt:
        assert rt.store.runs() == []
    assert sorted(p.name for p in home.iterdir()) == sorted(
        p.name for p in home.iterdir() if p.name.startswith("ledger.db")
    ), "no keys, locks, receipts or run directories"
    assert performed(outage_dir) == []
