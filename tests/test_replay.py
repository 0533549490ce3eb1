"""Replay: OK on finished and on crash-resumed runs; a precise report on changed code."""

from __future__ import annotations

from pathlib import Path

from orchestrator import Runtime
from orchestrator.ledger.events import NodeResumed, RetryScheduled, decode
from tests.conftest import cli
from tests.crashing import PLANS, sigkill, spawn_run, wait_until

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
    import json

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
