"""The ledger: canonical bytes, the hash chain, tamper detection on the real file."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.codec import canonical_bytes
from orchestrator.errors import LedgerConflict, LedgerCorrupt
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.ledger.store import StoredEvent
from tests.conftest import cli
from tests.plans.basic import words_plan


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": [1.5, "é"], "c": None}) == (
        '{"a":[1.5,"é"],"b":1,"c":null}'.encode()
    )
    with pytest.raises(ValueError, match="JSON compliant"):
        canonical_bytes({"x": math.nan})


async def _finished_run(rt: Runtime) -> str:
    state = await rt.start(words_plan(), {"text": "alpha beta gamma"})
    assert state.status == "succeeded"
    return state.run_id


def _flip_in_file(db: Path, needle: bytes) -> None:
    """Flip one byte of ``needle`` where it sits in the SQLite file itself."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "needle must occur once in the file"
    data[at + len(needle) // 2] ^= 0x01
    db.write_bytes(bytes(data))


async def test_verify_passes_then_names_the_event_whose_byte_was_flipped(
    rt: Runtime, home: Path
) -> None:
    run_id = await _finished_run(rt)
    rows = rt.store.read(run_id)
    report = rt.verify(run_id)
    assert report.ok and report.events == len(rows) and report.head_hash == rows[-1].hash
    target = next(r for r in rows if r.kind == "NodeSucceeded" and b"BETA" in r.body)
    rt.close()
    _flip_in_file(home / "ledger.db", target.body)
    with Runtime(home=home) as again:
        bad = again.verify(run_id)
        assert not bad.ok
        assert bad.bad_seq == target.seq
        assert "hash mismatch" in (bad.problem or "")
    result = cli(home, "ledger", "verify", run_id)
    assert result.returncode == 1
    assert f"at seq {target.seq}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_flipped_hash_and_a_deleted_event_are_found(rt: Runtime, home: Path) -> None:
    run_id = await _finished_run(rt)
    rows = rt.store.read(run_id)
    rt.close()
    _flip_in_file(home / "ledger.db", rows[3].hash.encode())
    with Runtime(home=home) as again:
        assert again.verify(run_id).bad_seq == 3
    with sqlite3.connect(home / "ledger.db") as conn:
        conn.execute("DELETE FROM events WHERE run_id=? AND seq=?", (run_id, 1))
    with Runtime(home=home) as again:
        report = again.verify(run_id)
        assert report.bad_seq == 1 and "sequence gap" in (report.problem or "")


async def test_resume_and_replay_refuse_a_tampered_ledger(rt: Runtime, home: Path) -> None:
    run_id = await _finished_run(rt)
    rows = rt.store.read(run_id)
    rt.close()
    _flip_in_file(home / "ledger.db", rows[2].body)
    with Runtime(home=home) as again:
        with pytest.raises(LedgerCorrupt, match="seq 2"):
            await again.replay(run_id, words_plan())
        with pytest.raises(LedgerCorrupt, match="seq 2"):
            await again.resume(run_id, words_plan())


def test_chain_links_each_event_to_the_previous() -> None:
    first = chain_hash(GENESIS, b"{}")
    assert first != chain_hash(GENESIS, b"{ }")
    assert chain_hash(first, b"x") != chain_hash(GENESIS, b"x")


async def test_a_second_writer_on_the_same_seq_is_refused(rt: Runtime) -> None:
    run_id = await _finished_run(rt)
    head = rt.store.head(run_id)
    assert head is not None
    clash = StoredEvent(head.seq, head.kind, head.body, head.hash)
    with pytest.raises(LedgerConflict):
        rt.store.append(run_id, [clash])
    assert rt.verify(run_id).ok


async def test_ledger_listing_and_json_lines(rt: Runtime, home: Path) -> None:
    import json

    run_id = await _finished_run(rt)
    listed = cli(home, "ledger", run_id, "--json")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    rows = rt.store.read(run_id)
    assert [line["seq"] for line in lines] == [r.seq for r in rows]
    assert [line["hash"] for line in lines] == [r.hash for r in rows]
    assert canonical_bytes(lines[0]["event"]) == rows[0].body
    only = cli(home, "ledger", run_id, "--json", "--kind", "NodeSucceeded")
    assert {json.loads(x)["event"]["kind"] for x in only.stdout.splitlines()} == {"NodeSucceeded"}
    table = cli(home, "ledger", run_id)
    assert "RunCompleted" in table.stdout and "EffectRecorded" in table.stdout
