"""Budget receipts: issued on the run's clock and at its end, signed, chained period to
period, verifiable from the ledger or a sink's copy, and delivered to sinks with retries."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import (
    Budget,
    NodeContext,
    Plan,
    RunConfig,
    Runtime,
    gates,
    node,
    receipts,
    signing,
)
from orchestrator.budget import ModelPrice, Prices
from orchestrator.clock import ManualClock, iso
from orchestrator.codec import canonical_bytes, digest
from orchestrator.ledger.events import NoticeDelivered, ReceiptIssued, decode
from orchestrator.sinks import SinkConfig
from tests.conftest import PLANS, cli
from tests.http_peer import HttpPeer
from tests.plans.gated import plan as gated_plan
from tests.s3server import BUCKET, Moto

PRICES = Prices(models={"scripted/*": ModelPrice(input_per_mtok=1000, output_per_mtok=2000)})
CEILING = Budget(tokens=10_000, compute_h=1, spend_usd=5)
GATED_REF = f"{PLANS / 'gated.py'}:plan"


class Nothing(BaseModel):
    pass


class Said(BaseModel):
    texts: list[str]


def script(where: Path) -> str:
    path = where / "script.jsonl"
    lines = [
        {"text": "one", "match": "first", "input_tokens": 12, "output_tokens": 30},
        {"text": "two", "match": "second", "input_tokens": 20, "output_tokens": 50},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return f"scripted:{path}"


def talker(*gates: asyncio.Event) -> Plan:
    """One node: a model call, then for each gate: wait for it, and call again."""

    @node("talk", effects={"llm"}, budget=Budget(tokens=500, spend_usd=1))
    async def talk(ctx: NodeContext, inputs: Nothing) -> Said:
        texts = [(await ctx.llm.complete("first", max_tokens=30)).text]
        for gate in gates:
            await gate.wait()  # held open by the test, outside any effect
            texts.append((await ctx.llm.complete("second", max_tokens=50)).text)
        return Said(texts=texts)

    plan = Plan("talker")
    plan.add(talk)
    return plan


def events_of(rt: Runtime, run_id: str) -> list[Any]:
    return [decode(r.body) for r in rt.store.read(run_id)]


async def until(predicate: Any, within: float = 5.0) -> float:
    """Wait (in real time) until ``predicate()``; returns how long it took."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < within, "timed out"
        await asyncio.sleep(0.01)
    return time.monotonic() - began


class Polls:
    """Counts a runtime's control polls; each poll also issues a receipt if one is due."""

    def __init__(self, rt: Runtime) -> None:
        self.count = 0
        take = rt.store.take_controls

        def counted(run_id: str) -> list[Any]:
            self.count += 1
            return take(run_id)

        rt.store.take_controls = counted  # type: ignore[method-assign]

    async def wait(self, polls: int = 2) -> None:
        """Wait until the run has polled ``polls`` more times, all begun after this call."""
        target = self.count + polls
        await until(lambda: self.count >= target)


# ---- 6. interval emission on the run's clock ------------------------------------------------


async def test_receipts_every_interval_of_the_runs_clock_and_at_the_end(
    home: Path, tmp_path: Path
) -> None:
    clock = ManualClock()
    t0 = clock.now()
    issued: list[ReceiptIssued] = []
    calls = 0

    def listen(event: Any) -> None:
        nonlocal calls
        if isinstance(event, ReceiptIssued):
            issued.append(event)
        elif event.kind == "EffectRecorded":
            calls += 1

    go = asyncio.Event()
    config = RunConfig(
        budget=CEILING, prices=PRICES, llm=script(tmp_path), model="m", receipt_interval=3600
    )
    plan = talker(go)
    with Runtime(home=home, clock=clock) as rt:
        polls = Polls(rt)
        run = asyncio.create_task(rt.start(plan, config=config, listeners=(listen,)))
        await until(lambda: calls == 1)
        await polls.wait()  # no receipt is due yet
        assert issued == []
        clock.advance(3599)
        await polls.wait()
        assert issued == []
        clock.advance(1)
        assert await until(lambda: len(issued) == 1) < 1.0
        clock.advance(1800)
        await polls.wait()
        assert len(issued) == 1  # the next one is due an interval after the first
        clock.advance(1800)
        assert await until(lambda: len(issued) == 2) < 1.0
        go.set()
        state = await run
        events = events_of(rt, state.run_id)
        replayed = await rt.replay(state.run_id, plan)
        key = rt.signer_public(state.run_id)
    assert state.status == "succeeded"
    assert replayed.ok, replayed.divergence
    assert [r.number for r in issued] == [1, 2, 3]
    assert [e for e in events if isinstance(e, ReceiptIssued)] == issued
    first, second, last = (r.body for r in issued)
    hour, two_hours = iso(t0 + timedelta(hours=1)), iso(t0 + timedelta(hours=2))
    assert first["period"] == {"from": iso(t0), "to": hour}
    assert second["period"] == {"from": hour, "to": two_hours}
    assert last["period"] == {"from": two_hours, "to": two_hours}  # the run's end, no later
    for before, after in itertools.pairwise(issued):
        assert after.body["period"]["from"] == before.body["period"]["to"]
    # the first call (42 tokens, $0.072) fell in the first period; the second (70 tokens,
    # $0.12) was made after it, and shows up in the last
    assert first["tokens_by_model"] == {"scripted/m": 42}
    assert first["period_usage"] == {"tokens": 42, "compute_h": 0.0, "spend_usd": 0.072}
    assert second["period_usage"] == {"tokens": 0, "compute_h": 0.0, "spend_usd": 0.0}
    assert last["period_usage"] == {"tokens": 70, "compute_h": 0.0, "spend_usd": 0.12}
    assert last["totals"] == {"tokens": 112, "compute_h": 0.0, "spend_usd": 0.192}
    assert last["tokens_by_model"] == {"scripted/m": 112}
    assert last["nodes"] == [{"node": "talk", "tokens": 112, "compute_h": 0.0, "spend_usd": 0.192}]
    assert last["ceiling"] == CEILING.model_dump()
    assert last["remaining"] == {"tokens": 9888, "compute_h": 1.0, "spend_usd": 4.808}
    # while talk ran, its reservation counted against what remained
    assert first["remaining"] == {"tokens": 9500, "compute_h": 1.0, "spend_usd": 4.0}
    for receipt in issued:
        assert receipt.key == key
        assert receipts.problem(receipt.model_dump(mode="json"), key) is None
    # every receipt reached the default sink, a JSONL file in the home
    lines = (home / "receipts" / f"{state.run_id}.jsonl").read_text().splitlines()
    assert [json.loads(line)["body"] for line in lines] == [r.body for r in issued]
    delivered = [e for e in events if isinstance(e, NoticeDelivered)]
    assert sorted(e.notice for e in delivered) == ["receipt 1", "receipt 2", "receipt 3"]
    assert all(e.ok and e.attempts == 1 for e in delivered)
    # the CLI shows what was spent, what was reserved and what remained, apart
    shown = cli(home, "receipts", state.run_id)
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith("│ ")]
    assert "reserved (in flight)" in shown.stdout and "remaining" in shown.stdout
    assert "458 tokens, $0.9280" in rows[0]  # talk's reservation less its first call
    assert "9500 tokens, 1.0000 compute h, $4.0000" in rows[0]
    assert "none" in rows[2] and "9888 tokens" in rows[2]
    as_json = json.loads(cli(home, "receipts", state.run_id, "--json").stdout)
    assert as_json[0]["reserved_in_flight"] == {"tokens": 458, "compute_h": 0.0, "spend_usd": 0.928}


# ---- 7. signatures ------------------------------------------------------------------------


def finished_run(home: Path, tmp_path: Path, **config: Any) -> str:
    async def go() -> str:
        with Runtime(home=home) as rt:
            settings = {"budget": CEILING, "prices": PRICES, "llm": script(tmp_path), "model": "m"}
            state = await rt.start(talker(), config=RunConfig(**{**settings, **config}))
            assert state.status == "succeeded", state.summary
            return state.run_id

    return asyncio.run(go())


def test_receipts_verify_and_a_changed_or_foreign_one_is_refused(
    home: Path, tmp_path: Path
) -> None:
    run_id = finished_run(home, tmp_path)
    ok = cli(home, "receipts", run_id, "--verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert " ok " in ok.stdout or "│ ok" in ok.stdout
    shown = cli(home, "receipts", run_id, "--verify", "--json")
    assert shown.returncode == 0
    (only,) = json.loads(shown.stdout)
    assert only["number"] == 1 and only["problem"] is None
    assert only["body"]["totals"] == {"tokens": 42, "compute_h": 0.0, "spend_usd": 0.072}

    sink = home / "receipts" / f"{run_id}.jsonl"
    copy = cli(home, "receipts", run_id, "--verify", "--from", str(sink))
    assert copy.returncode == 0, copy.stdout + copy.stderr

    # one byte changed in the body (a digit of the totals): still JSON, no longer signed
    raw = sink.read_bytes()
    totals = re.search(rb'"totals":\{[^}]*"tokens":(\d+)\}', raw)
    assert totals is not None and totals.group(1) == b"42"
    at = totals.start(1)
    altered = tmp_path / "altered.jsonl"
    altered.write_bytes(raw[:at] + b"5" + raw[at + 1 :])
    assert json.loads(altered.read_text())["body"]["totals"]["tokens"] == 52
    bad = cli(home, "receipts", run_id, "--verify", "--from", str(altered))
    assert bad.returncode == 1
    assert "#1: the signature does not match the body" in bad.stderr
    unchecked = cli(home, "receipts", run_id, "--from", str(altered))
    assert unchecked.returncode == 0  # shown, but only --verify judges it

    # the same body, signed by someone else's key
    receipt = json.loads(raw)
    other = signing.generate()
    forged = {
        **receipt,
        "signature": other.sign(canonical_bytes(receipt["body"])),
        "key": other.public,
    }
    assert receipts.problem(forged, None) is None  # intact, but not the run's
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps(forged) + "\n")
    refused = cli(home, "receipts", run_id, "--verify", "--from", str(foreign))
    assert refused.returncode == 1
    assert f"#1: signed by {other.public[:16]}" in refused.stderr
    assert "not by the run's key" in refused.stderr


def test_a_receipts_copy_with_a_line_deleted_duplicated_or_moved_is_refused(
    home: Path, tmp_path: Path
) -> None:
    approver = signing.generate()

    async def go() -> str:
        with Runtime(home=home) as rt:
            config = RunConfig(approvers={"review": [approver.public]})
            state = await rt.start(gated_plan, {"topic": "docs"}, config, plan_ref=GATED_REF)
            run_id = state.run_id  # parked: receipt 1
            [no] = gates.decide(state, "review", False, "again", approver, rt.clock.now())
            await rt.decide(run_id, [no])  # parked again: receipt 2
            [yes] = gates.decide(rt.state(run_id), "review", True, "", approver, rt.clock.now())
            await rt.decide(run_id, [yes])  # done: receipt 3
            assert rt.state(run_id).status == "succeeded"
            return run_id

    run_id = asyncio.run(go())
    sink = home / "receipts" / f"{run_id}.jsonl"
    lines = sink.read_text().splitlines(keepends=True)
    bodies = [json.loads(line)["body"] for line in lines]
    assert [b["number"] for b in bodies] == [1, 2, 3]
    assert bodies[0]["previous"] is None
    assert bodies[2]["previous"] == {"number": 2, "digest": digest(bodies[1])}
    assert cli(home, "receipts", run_id, "--verify", "--from", str(sink)).returncode == 0

    first, second, third = lines
    cases = {
        "deleted": ([first, third], "receipt #3 is in position 2"),
        "duplicated": ([first, first, second, third], "receipt #1 is in position 2"),
        "moved": ([second, first, third], "receipt #2 is in position 1"),
        "last deleted": ([first, second], "the ledger's newest receipt is #3"),
        "first deleted": ([second, third], "receipt #2 is in position 1"),
    }
    for name, (kept, says) in cases.items():
        copy = tmp_path / f"{name}.jsonl"
        copy.write_text("".join(kept))
        result = cli(home, "receipts", run_id, "--verify", "--from", str(copy))
        assert result.returncode == 1, name
        assert says in " ".join(result.stderr.split()), (name, result.stderr)


# ---- 8. sinks: retries, S3 -----------------------------------------------------------------


def test_receipt_sinks_retry_and_reach_s3(
    home: Path, tmp_path: Path, http_peer: HttpPeer, moto: Moto
) -> None:
    http_peer.fail_next(2, 503)
    prefix = f"receipts-{tmp_path.name}"
    sinks = [
        SinkConfig(kind="webhook", url=f"{http_peer.url}/hooks/receipts"),
        SinkConfig(kind="s3", url=moto.url(prefix)),
    ]
    run_id = finished_run(home, tmp_path, receipts=sinks)
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
        key = rt.signer_public(run_id)
    delivered = {e.sink.split()[0]: e for e in events if isinstance(e, NoticeDelivered)}
    assert set(delivered) == {"webhook", "s3"}
    webhook = delivered["webhook"]
    assert (webhook.notice, webhook.ok, webhook.attempts, webhook.error) == (
        "receipt 1",
        True,
        3,
        None,
    )
    assert webhook.sink == f"webhook {http_peer.url}"  # never the path
    assert delivered["s3"].ok and delivered["s3"].attempts == 1
    # no default file sink when sinks are configured
    assert not (home / "receipts" / f"{run_id}.jsonl").exists()

    seen = http_peer.requests
    assert len(seen) == 3
    assert {r.path for r in seen} == {"/hooks/receipts"}
    assert len({r.body for r in seen}) == 1  # the same notice each time
    notice = seen[-1].json
    assert seen[-1].headers["x-orchestrator-event"] == "receipt"
    assert notice["run_id"] == run_id and notice["number"] == 1
    assert receipts.problem(notice, key) is None

    stored = moto.client.get_object(Bucket=BUCKET, Key=f"{prefix}/notices/{run_id}/receipt-1.json")
    copy = json.loads(stored["Body"].read())
    assert copy == notice
    assert receipts.problem(copy, key) is None
