"""The tamper matrix: the ledger, the object store and the trust directory against someone
who can write the first two but does not hold the run key.

Each attack edits the real SQLite file or object-store files, then every command that
reads the run (``ledger verify``, ``replay``, ``checkpoints verify``, ``resume``,
``approve``) must refuse it with one paragraph and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, gates, node, signing
from orchestrator.cli.root import EXIT_PARKED
from orchestrator.codec import canonical_bytes
from orchestrator.config import RunConfig
from orchestrator.errors import LedgerCorrupt
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.signing import fingerprint
from orchestrator.trust import TrustStore
from tests.conftest import PLANS, cli
from tests.keyholder import resign_head
from tests.plans.gated import plan

PLAN_REF = f"{PLANS / 'gated.py'}:plan"


class Num(BaseModel):
    x: int


@node()
async def step(ctx: NodeContext, inputs: Num) -> Num:
    return Num(x=inputs.x + 1)


def one_paragraph_error(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode != 0, (result.stdout, result.stderr)
    text = " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in text and says in text, text


def parked_run(home: Path, approver: signing.Signer, **runtime: str) -> str:
    """A gated run parked at its gate, with checkpoints; returns its id."""

    async def go() -> str:
        with Runtime(home=home, **runtime) as rt:
            config = RunConfig(approvers={"review": [approver.public]})
            state = await rt.start(plan, {"topic": "docs"}, config, plan_ref=PLAN_REF)
            assert state.status == "parked"
            return state.run_id

    return asyncio.run(go())


def approved(home: Path, run_id: str, approver: signing.Signer) -> None:
    async def go() -> None:
        with Runtime(home=home) as rt:
            state = rt.state(run_id)
            decisions = gates.decide(state, "review", True, "", approver, rt.clock.now())
            assert await rt.decide(run_id, decisions) == "resumed"
            assert rt.state(run_id).status == "succeeded"

    asyncio.run(go())


def ledger_rows(db: Path, run_id: str) -> list[tuple[int, bytes, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, body, hash FROM events WHERE run_id=? ORDER BY seq", (run_id,)
        ).fetchall()
    return [(seq, bytes(body), digest) for seq, body, digest in rows]


def all_refuse(home: Path, run_id: str, says: str) -> None:
    """Every command that reads the run refuses it, naming the problem."""
    one_paragraph_error(cli(home, "ledger", "verify", run_id), says)
    one_paragraph_error(cli(home, "replay", run_id), says)
    one_paragraph_error(cli(home, "checkpoints", "verify", run_id), says)
    one_paragraph_error(cli(home, "resume", run_id), says)


@pytest.fixture
def approver() -> signing.Signer:
    return signing.generate()


def test_the_run_prints_and_pins_its_key_outside_the_ledger(
    home: Path, tmp_path: Path, trust_dir: Path
) -> None:
    key = tmp_path / "approver.key"
    signing.save(signing.generate(), key)
    public_approver = key.with_suffix(".pub").read_text().strip()
    ran = cli(home, "run", PLAN_REF, "--approver", f"review={public_approver}")
    assert ran.returncode == EXIT_PARKED, ran.stderr
    run_id = next(p.stem for p in (trust_dir / "pins").glob("*.pub"))
    [public] = TrustStore(trust_dir).pinned(run_id)
    assert f"run key {fingerprint(public)}" in " ".join(ran.stderr.split())
    assert not trust_dir.is_relative_to(home)
    verified = cli(home, "ledger", "verify", run_id)
    assert verified.returncode == 0 and fingerprint(public) in verified.stdout


def test_rewritten_approvers_rechained_and_approved_with_another_key_are_refused(
    home: Path, tmp_path: Path, approver: signing.Signer
) -> None:
    run_id = parked_run(home, approver)
    attacker = signing.generate()
    signing.save(attacker, tmp_path / "attacker.key")
    db = home / "ledger.db"
    # The attacker puts their key among the approvers and re-chains every hash after it.
    rows = ledger_rows(db, run_id)
    prev, rewritten = GENESIS, []
    for seq, body, _ in rows:
        if seq == 0:
            event = json.loads(body)
            event["config"]["approvers"] = {"review": [attacker.public]}
            body = canonical_bytes(event)
        prev = chain_hash(prev, body)
        rewritten.append((body, prev, run_id, seq))
    with sqlite3.connect(db) as conn:
        conn.executemany("UPDATE events SET body=?, hash=? WHERE run_id=? AND seq=?", rewritten)

    says = "but the ledger has"
    all_refuse(home, run_id, says)
    approve = cli(home, "approve", run_id, "review", "--key", str(tmp_path / "attacker.key"))
    one_paragraph_error(approve, says)
    assert ledger_rows(db, run_id) == [(s, b, h) for b, h, _, s in rewritten]  # nothing written


def test_deleted_last_events_are_detected_and_resume_refuses(
    home: Path, approver: signing.Signer
) -> None:
    run_id = parked_run(home, approver)
    db = home / "ledger.db"
    last = ledger_rows(db, run_id)[-1][0]
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE run_id=? AND seq>?", (run_id, last - 3))
    all_refuse(home, run_id, f"truncated: the ledger's signed head names seq {last}")
    checkpoints = cli(home, "checkpoints", "verify", run_id)
    assert "is newer than the ledger" in " ".join(checkpoints.stdout.split())

    # Deleting the signed head along with them does not help.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM heads WHERE run_id=?", (run_id,))
    all_refuse(home, run_id, "the ledger holds no signed head for this run")


def test_a_ledger_rolled_back_to_an_older_signed_state_is_detected(
    home: Path, tmp_path: Path, approver: signing.Signer
) -> None:
    """The ledger's own signed head rolls back with it; the trust directory's does not."""
    run_id = parked_run(home, approver)
    older = tmp_path / "older.db"
    with sqlite3.connect(home / "ledger.db") as live, sqlite3.connect(older) as copy:
        live.backup(copy)
    parked_at = ledger_rows(older, run_id)[-1][0]
    approved(home, run_id, approver)
    finished_at = ledger_rows(home / "ledger.db", run_id)[-1][0]
    for leftover in home.glob("ledger.db*"):
        leftover.unlink()
    older.rename(home / "ledger.db")
    assert ledger_rows(home / "ledger.db", run_id)[-1][0] == parked_at
    says = (
        f"truncated: the trust directory's signed head names seq {finished_at}, but the "
        f"ledger ends at seq {parked_at}"
    )
    all_refuse(home, run_id, says)


def test_a_deleted_newest_manifest_is_detected(home: Path, approver: signing.Signer) -> None:
    run_id = parked_run(home, approver)
    approved(home, run_id, approver)
    manifests = sorted((home / "objects" / "runs" / run_id / "checkpoints").glob("*.json"))
    assert len(manifests) >= 2
    manifests[-1].unlink()
    key = f"runs/{run_id}/checkpoints/{manifests[-1].name}"
    result = cli(home, "checkpoints", "verify", run_id)
    one_paragraph_error(result, f"manifest {key}, recorded in the ledger at seq")
    assert "is missing from the object store" in " ".join(result.stdout.split())

    # With the local ledger lost as well, the trust directory's head still names it.
    for leftover in home.glob("ledger.db*"):
        leftover.unlink()
    restored = cli(home, "resume", run_id, "--from", str(home / "objects"))
    one_paragraph_error(restored, "the newest manifest was deleted or damaged")
    with Runtime(home=home) as rt:
        assert not rt.store.has_run(run_id)  # nothing written


def test_a_run_planted_in_the_object_store_is_not_resumed_without_signer(
    home: Path, tmp_path: Path, approver: signing.Signer
) -> None:
    objects = tmp_path / "shared-objects"
    # Someone else (their own home and trust directory) writes a run into the store.
    run_id = parked_run(
        tmp_path / "planter", approver, objects=str(objects), trust=str(tmp_path / "their-trust")
    )
    planted_key = TrustStore(tmp_path / "their-trust").pinned(run_id)[-1]

    refused = cli(home, "resume", run_id, "--from", str(objects))
    one_paragraph_error(refused, f"refusing to restore run {run_id}")
    assert refused.returncode == 1
    assert f"--signer {planted_key}" in " ".join(refused.stderr.split())
    assert refused.stderr.strip().count("\n\n") == 0
    with Runtime(home=home) as rt:
        assert not rt.store.has_run(run_id) and rt.trust.pinned(run_id) == []

    # Vouching for the key restores it, pins it, and the run carries on.
    vouched = cli(home, "resume", run_id, "--from", str(objects), "--signer", planted_key)
    assert "restored" in vouched.stderr, vouched.stderr
    with Runtime(home=home) as rt:
        assert rt.trust.pinned(run_id)[0] == planted_key
        assert rt.verify(run_id).ok
        assert rt.state(run_id).status == "parked"


def test_a_checkpoint_newer_than_the_ledger_is_detected(
    home: Path, approver: signing.Signer, trust_dir: Path
) -> None:
    """Events lost without a trace in the ledger itself (its head re-signed by whoever
    holds the run key) still show against the checkpoint cut after them."""
    run_id = parked_run(home, approver)
    with Runtime(home=home) as rt:
        rows = rt.store.read(run_id)
        newest = rt.checkpoints(run_id)[-1].manifest
        assert newest is not None and newest.seq == rows[-1].seq - 1  # then CheckpointTaken
        keep = newest.seq - 2
    with contextlib.closing(sqlite3.connect(home / "ledger.db")) as conn:
        conn.execute("DELETE FROM events WHERE run_id=? AND seq>?", (run_id, keep))
        conn.commit()
    resign_head(home, run_id, trust_dir, checkpoint=None)
    with Runtime(home=home) as rt:
        assert rt.verify(run_id).ok  # the key holder can forge: only the checkpoint shows it
        problems = [r.problem or "" for r in rt.checkpoints(run_id) if not r.ok]
    assert any(f"is newer than the ledger, which ends at seq {keep}" in p for p in problems)
    result = cli(home, "checkpoints", "verify", run_id)
    one_paragraph_error(result, "the ledger lost events")


def test_resume_refuses_a_tampered_ledger_before_writing(
    home: Path, approver: signing.Signer
) -> None:
    run_id = parked_run(home, approver)
    db = home / "ledger.db"
    rows = ledger_rows(db, run_id)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE run_id=? AND seq=?", (run_id, rows[-1][0]))

    async def go() -> None:
        with Runtime(home=home) as rt, pytest.raises(LedgerCorrupt, match="truncated"):
            await rt.resume(run_id)

    asyncio.run(go())
    assert ledger_rows(db, run_id) == rows[:-1]


def test_a_live_run_verifies_while_it_commits(home: Path) -> None:
    """Another reader verifying between the writer's commits never sees a false
    truncation: heads and events are read as of one moment."""
    import threading

    reports: list[str | None] = []
    done = threading.Event()

    def reader(run_id: str) -> None:
        with Runtime(home=home) as other:
            while not done.is_set():
                reports.append(other.verify(run_id).problem)

    async def go() -> None:
        with Runtime(home=home) as rt:
            threads: list[threading.Thread] = []

            def started(run_id: str) -> None:
                thread = threading.Thread(target=reader, args=(run_id,))
                thread.start()
                threads.append(thread)

            chain = Plan("chain")
            previous = chain.add(step, name="n0", x=0)
            for i in range(1, 300):
                previous = chain.add(step, name=f"n{i}", x=previous.out.x)
            state = await rt.start(chain, on_start=started)
            done.set()
            for thread in threads:
                thread.join(timeout=60)
            assert state.status == "succeeded"

    asyncio.run(go())
    assert len(reports) > 5
    assert [p for p in reports if p is not None] == []


def test_a_key_directory_another_process_makes_meanwhile_does_not_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent first runs in a fresh key directory race to create it (seen with 20 runs
    at once: `cannot write signing key … (File exists)`)."""
    real_mkdir = Path.mkdir

    def loses_the_race(self: Path, *args: Any, **kwargs: Any) -> None:
        real_mkdir(self, *args, **kwargs)  # the other process gets there first
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(Path, "mkdir", loses_the_race)
    key = tmp_path / "keys" / "runs" / "r.key"
    signer = signing.load_or_create(key)
    monkeypatch.undo()
    assert signing.load(key).public == signer.public
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
