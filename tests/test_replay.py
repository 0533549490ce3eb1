"""Replay: OK on finished and on crash-resumed runs; a precise report on changed code."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, node
from orchestrator.codec import canonical_bytes
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.ledger.events import NodeResumed, RetryScheduled, decode
from orchestrator.ledger.sqlite import SqliteLedgerStore
from tests.conftest import cli
from tests.crashing import PLANS, sigkill, spawn_run, wait_until
from tests.keyholder import resign_head
from tests.plans.basic import Count

WAIT = f"{PLANS / 'basic.py'}:waiting"


async def test_replay_is_ok_on_a_finished_run(rt: Runtime) -> None:
    from tests.plans.basic import words_plan

    state = await rt.start(words_plan(), {"text": "one two three"})
    report = await rt.replay(state.run_id, words_plan())
    assert report.ok, report.divergence
    assert report.events == len(rt.store.read(state.run_id))
    assert report.head_hash == rt.store.read(state.run_id)[-1].hash
    assert report.code_changed == []


def _crash_mid_node(home: Path, gate: Path) -> str:
    proc = spawn_run(home, WAIT, f"path={gate}")
    state = wait_until(home, lambda s: len(s.nodes["wait-for-file"].journal) >= 1)
    sigkill(proc)
    return state.run_id


async def test_replay_is_ok_on_a_run_resumed_after_sigkill(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run_id = _crash_mid_node(home, gate)
    gate.write_text("open")
    resumed = cli(home, "resume", "-q", run_id)
    assert resumed.returncode == 0, resumed.stderr
    with Runtime(home=home) as rt:
        state = rt.state(run_id)
        assert state.status == "succeeded"
        assert state.nodes["after"].outputs == {"count": 4}
        events = [decode(r.body) for r in rt.store.read(run_id)]
        marks = [e for e in events if isinstance(e, NodeResumed)]
        assert [(m.node, m.attempt, m.from_index) for m in marks] == [("wait-for-file", 1, 1)]
        # The journaled "mark" effect was served, not recorded a second time.
        effects = [
            e
            for e in events
            if getattr(e, "node", "") == "wait-for-file" and e.kind == "EffectRecorded"
        ]
        assert [e.index for e in effects] == [0, 1]
    replay = cli(home, "replay", run_id)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "replay OK" in replay.stdout


async def test_changed_code_on_resume_starts_a_new_attempt_and_replays(
    home: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = _crash_mid_node(home, gate)
    gate.write_text("open")
    resumed = cli(home, "resume", "-q", run_id, env={"WAIT_VARIANT": "v2"})
    assert resumed.returncode == 0, resumed.stderr
    with Runtime(home=home) as rt:
        events = [decode(r.body) for r in rt.store.read(run_id)]
        retry = [e for e in events if isinstance(e, RetryScheduled)]
        assert [(r.node, r.attempt, r.reason.type) for r in retry] == [
            ("wait-for-file", 1, "CodeChanged")
        ]
        assert rt.state(run_id).nodes["wait-for-file"].attempt == 2
    replay = cli(home, "replay", run_id, env={"WAIT_VARIANT": "v2"})
    assert replay.returncode == 0, replay.stdout
    assert "code changed since the run" in replay.stdout and "wait-for-file" in replay.stdout


async def test_replay_reports_the_first_divergence_on_changed_code(
    home: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("open")
    ran = cli(home, "run", "-q", WAIT, "--input", f"path={gate}")
    assert ran.returncode == 0, ran.stderr
    with Runtime(home=home) as rt:
        run_id = rt.runs()[-1].run_id
    same = cli(home, "replay", run_id)
    assert same.returncode == 0 and "replay OK" in same.stdout
    changed = cli(home, "replay", "--json", run_id, env={"WAIT_VARIANT": "v2"})
    assert changed.returncode == 1
    report = json.loads(changed.stdout)
    assert report["ok"] is False
    assert report["code_changed"] == ["wait-for-file"]
    d = report["divergence"]
    assert (d["node"], d["attempt"], d["effect_index"]) == ("wait-for-file", 1, 1)
    assert "read-gate" in d["expected"] and "changed" in d["got"]
    text = cli(home, "replay", run_id, env={"WAIT_VARIANT": "v2"})
    assert text.returncode == 1
    assert "wait-for-file attempt 1 effect #1" in text.stdout
    assert "Traceback" not in text.stdout + text.stderr


# ---- the byte comparison itself: changes that no other replay check notices --------------


def _rewrite(rt: Runtime, run_id: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
    """Edit a run's event bodies in place, re-chain every hash and re-sign the heads, as
    the holder of the run's key could: ``ledger verify`` still passes afterwards."""
    rows = rt.store.read(run_id)
    bodies = [json.loads(r.body) for r in rows]
    change(bodies)
    head = GENESIS
    assert isinstance(rt.store, SqliteLedgerStore)
    with contextlib.closing(sqlite3.connect(rt.store.path)) as db:
        for data in bodies:
            body = canonical_bytes(data)
            head = chain_hash(head, body)
            db.execute(
                "UPDATE events SET kind=?, body=?, hash=? WHERE run_id=? AND seq=?",
                (data["kind"], body, head, run_id, data["seq"]),
            )
        db.commit()
    resign_head(rt.home, run_id, rt.trust.root)
    assert rt.verify(run_id).ok


SCALE = {"factor": 1}


class Seen(BaseModel):
    seen: str


@node("scaled")
async def scaled(ctx: NodeContext, inputs: Seen) -> Count:
    seen = await ctx.tool("look", lambda: inputs.seen)
    return Count(count=len(seen) * SCALE["factor"])  # depends on state outside the journal


def scaled_plan() -> Plan:
    plan = Plan("scaled", inputs=Seen)
    plan.add(scaled, seen=plan.input("seen"))
    return plan


async def test_replay_catches_same_effects_with_different_outputs(rt: Runtime) -> None:
    state = await rt.start(scaled_plan(), {"seen": "abc"})
    assert state.nodes["scaled"].outputs == {"count": 3}
    assert (await rt.replay(state.run_id, scaled_plan())).ok
    SCALE["factor"] = 2
    try:
        report = await rt.replay(state.run_id, scaled_plan())
    finally:
        SCALE["factor"] = 1
    assert report.code_changed == []  # same code, same effects: only the outputs differ
    d = report.divergence
    assert d is not None and d.node == "scaled" and d.effect_index is None
    assert "NodeSucceeded" in d.expected and "'count': 3" in d.expected
    assert "'count': 6" in d.got


async def test_replay_catches_a_changed_event_body_with_a_rechained_ledger(
    rt: Runtime,
) -> None:
    from tests.plans.basic import words_plan

    state = await rt.start(words_plan(), {"text": "one two three"})

    def forge(bodies: list[dict[str, Any]]) -> None:
        done = next(b for b in bodies if b["kind"] == "NodeSucceeded" and b["node"] == "join")
        done["outputs"] = {"count": 4}
        forged.append(done["seq"])

    forged: list[int] = []
    _rewrite(rt, state.run_id, forge)
    report = await rt.replay(state.run_id, words_plan())
    d = report.divergence
    assert d is not None and d.seq == forged[0] and d.node == "join"
    assert "'count': 4" in d.expected and "'count': 3" in d.got


async def test_replay_catches_a_different_order_of_dispatch(rt: Runtime) -> None:
    from tests.plans.basic import words_plan

    state = await rt.start(words_plan(), {"text": "one two three"})

    def reorder(bodies: list[dict[str, Any]]) -> None:
        # The record now says shout[1] went first, carrying the inputs shout[0] had.
        first, second = [
            b
            for b in bodies
            if b["kind"] == "NodeDispatched" and b["node"] in ("shout[0]", "shout[1]")
        ]
        first["node"], second["node"] = second["node"], first["node"]
        swapped.append(first["seq"])

    swapped: list[int] = []
    _rewrite(rt, state.run_id, reorder)
    report = await rt.replay(state.run_id, words_plan())
    d = report.divergence
    assert d is not None and d.seq == swapped[0]
    assert "NodeDispatched" in d.expected and "'one'" in d.expected and "'two'" in d.got


# ---- replay against the recorded plan source ---------------------------------------------

PLAN_SOURCE = """
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node


class Text(BaseModel):
    text: str


class Count(BaseModel):
    count: int


@node("count")
async def count(ctx: NodeContext, inputs: Text) -> Count:
    return Count(count=len(inputs.text.split()))


@node("echo")
async def echo(ctx: NodeContext, inputs: Count) -> Count:
    return Count(count=inputs.count)


plan = Plan("counting", inputs=Text)
counted = plan.add(count, text=plan.input("text"))
plan.add(echo, count=counted.out.count)
"""


def _run_own_plan(home: Path, tmp_path: Path) -> tuple[str, Path]:
    """Run a plan file of the test's own, then change one node's body in it."""
    plan_file = tmp_path / "counting.py"
    plan_file.write_text(PLAN_SOURCE)
    ran = cli(home, "run", "-q", f"{plan_file}:plan", "--input", "text=a b c d")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with Runtime(home=home) as rt:
        run_id = rt.runs()[-1].run_id
        assert rt.state(run_id).nodes["echo"].outputs == {"count": 4}
        assert rt.state(run_id).source is not None
        assert rt.state(run_id).source.path == "counting.py"
    changed = PLAN_SOURCE.replace("len(inputs.text.split())", "len(inputs.text.split()) + 1")
    plan_file.write_text(changed)
    return run_id, plan_file


async def test_replay_names_changed_nodes_and_the_differing_fields(
    home: Path, tmp_path: Path
) -> None:
    run_id, _ = _run_own_plan(home, tmp_path)
    today = cli(home, "replay", run_id)
    assert today.returncode == 1, today.stdout + today.stderr
    lines = today.stdout.splitlines()
    assert "code changed since the run" in lines[0] and "count" in lines[0]
    assert "echo" not in lines[0]
    assert "replay DIVERGED" in today.stdout
    assert "outputs.count: 4 → 5" in today.stdout
    as_json = cli(home, "replay", "--json", run_id)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["code_changed"] == ["count"]
    assert report["divergence"]["diff"] == ["outputs.count: 4 → 5"]
    assert report["divergence"]["node"] == "count"


async def test_replay_recorded_uses_the_source_that_ran(home: Path, tmp_path: Path) -> None:
    run_id, plan_file = _run_own_plan(home, tmp_path)
    plan_file.unlink()  # not even today's file is needed
    recorded = cli(home, "replay", "--recorded", run_id)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "replay OK" in recorded.stdout
    assert "code changed" not in recorded.stdout
    as_json = json.loads(cli(home, "replay", "--recorded", "--json", run_id).stdout)
    assert as_json["ok"] is True and as_json["code_changed"] == []


async def test_replay_recorded_refuses_a_tampered_source(home: Path, tmp_path: Path) -> None:
    run_id, _ = _run_own_plan(home, tmp_path)
    (stored,) = (home / "objects" / "runs" / run_id / "sources").iterdir()
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    refused = cli(home, "replay", "--recorded", run_id)
    assert refused.returncode == 1
    assert "replay OK" not in refused.stdout
    assert "refusing to replay run" in refused.stderr and "counting.py" in refused.stderr
    assert "Traceback" not in refused.stderr
    stored.unlink()
    missing = cli(home, "replay", "--recorded", run_id)
    assert missing.returncode == 1 and "is missing from" in missing.stderr


async def test_replay_recorded_needs_a_stored_source(home: Path) -> None:
    from tests.plans.basic import words_plan

    with Runtime(home=home) as rt:
        state = await rt.start(words_plan(), {"text": "one two"})
        assert state.source is None  # a plan no module-level name holds: no file to store
    refused = cli(home, "replay", "--recorded", state.run_id)
    assert refused.returncode == 1
    assert "stored no plan source" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_field_diff_shows_each_differing_field_whole() -> None:
    from orchestrator.runtime.fielddiff import LONG, field_diff

    expected = {"b": [1, 2], "a": {"x": "same", "y": 1}, "gone": True}
    got = {"a": {"x": "same", "y": 1.5}, "b": [1], "new": None}
    assert field_diff(expected, got) == [
        "a.y: 1 → 1.5",
        "b[1]: 2 → (absent)",
        "gone: true → (absent)",
        "new: (absent) → null",
    ]
    assert field_diff(expected, expected) == []
    head = "x" * LONG
    (line,) = field_diff({"v": head + "a"}, {"v": head + "b"})
    assert line.count("more characters not shown") == 2


WAITING_SOURCE = """
import asyncio
from pathlib import Path

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, node


class Gate(BaseModel):
    path: str


class Count(BaseModel):
    count: int


@node("wait")
async def wait(ctx: NodeContext, inputs: Gate) -> Gate:
    await ctx.tool("mark", lambda: "waiting")
    while not Path(inputs.path).exists():
        await asyncio.sleep(0.02)
    return inputs


@node("count")
async def count(ctx: NodeContext, inputs: Gate) -> Count:
    return Count(count=1)


plan = Plan("waiting-count", inputs=Gate)
plan.add(count, path=plan.add(wait, path=plan.input("path")).out.path)
"""


async def test_a_resume_with_an_edited_source_stores_it_and_recorded_replay_follows(
    home: Path, tmp_path: Path
) -> None:
    plan_file, gate = tmp_path / "waiting_count.py", tmp_path / "gate"
    plan_file.write_text(WAITING_SOURCE)
    proc = spawn_run(home, f"{plan_file}:plan", f"path={gate}")
    state = wait_until(home, lambda s: len(s.nodes["wait"].journal) >= 1)
    sigkill(proc)
    plan_file.write_text(WAITING_SOURCE.replace("count=1", "count=2"))
    gate.write_text("open")
    resumed = cli(home, "resume", "-q", state.run_id)
    assert resumed.returncode == 0, resumed.stderr
    with Runtime(home=home) as rt:
        assert rt.state(state.run_id).nodes["count"].outputs == {"count": 2}
        events = [decode(r.body) for r in rt.store.read(state.run_id)]
    stored = [e for e in events if e.kind == "PlanSourceRecorded"]
    assert len(stored) == 2 and stored[0].seq == 1
    plan_file.write_text(WAITING_SOURCE.replace("count=1", "count=3"))
    today = cli(home, "replay", state.run_id)
    assert today.returncode == 1 and "outputs.count: 2 → 3" in today.stdout
    recorded = cli(home, "replay", "--recorded", state.run_id)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "code changed" not in recorded.stdout


async def test_replay_is_ok_on_a_run_aborted_by_an_overrun_and_resumed(
    rt: Runtime, tmp_path: Path
) -> None:
    from orchestrator import Budget, RunConfig
    from tests.plans.overrun import TALK_SCRIPT, talking_plan

    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(line) + "\n" for line in TALK_SCRIPT))
    envelope = Budget(tokens=1000, compute_h=1, spend_usd=1)
    config = RunConfig(budget=envelope, llm=f"scripted:{script}", model="m")
    state = await rt.start(talking_plan(), {"tally": str(tmp_path / "tally")}, config)
    assert state.status == "aborted"
    aborted = await rt.replay(state.run_id, talking_plan())
    assert aborted.ok, aborted.divergence
    state = await rt.resume(state.run_id, talking_plan(), budget=envelope)
    assert state.status == "succeeded"
    report = await rt.replay(state.run_id, talking_plan())
    assert report.ok, report.divergence
    assert report.head_hash == rt.store.read(state.run_id)[-1].hash


async def test_replay_catches_an_overrun_recorded_for_a_node_that_was_not_running(
    rt: Runtime, tmp_path: Path
) -> None:
    from orchestrator import Budget, RunConfig
    from tests.plans.overrun import TALK_SCRIPT, talking_plan

    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(line) + "\n" for line in TALK_SCRIPT))
    envelope = Budget(tokens=1000, compute_h=1, spend_usd=1)
    config = RunConfig(budget=envelope, llm=f"scripted:{script}", model="m")
    state = await rt.start(talking_plan(), {"tally": str(tmp_path / "tally")}, config)
    assert state.status == "aborted"

    def forge(bodies: list[dict[str, Any]]) -> None:
        overrun = next(b for b in bodies if b["kind"] == "BudgetOverrun")
        overrun["node"] = "echo"  # pending, never dispatched
        forged.append(overrun["seq"])

    forged: list[int] = []
    _rewrite(rt, state.run_id, forge)
    report = await rt.replay(state.run_id, talking_plan())
    d = report.divergence
    assert d is not None and d.seq == forged[0] and d.node == "echo"
    assert "BudgetOverrun" in d.expected and "nothing" in d.got
