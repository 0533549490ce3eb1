"""Run outcome notices: a gate waits, the run aborted, failed or succeeded. Each notify
sink gets the events it subscribed to (all four by default), over a real HTTP server on
loopback; the notice names the run, the outcome, the reason and the command to act; a
sink that cannot be reached is recorded and never fails or holds up the run."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, gates, node, signing
from orchestrator.config import RunConfig
from orchestrator.errors import ConfigError
from orchestrator.ledger.events import NoticeDelivered, RunCompleted, decode
from orchestrator.sinks import NOTICE, OutcomeNotice, SinkConfig, slack_payload
from tests.conftest import PLANS, cli
from tests.http_peer import HttpPeer, unused_port
from tests.plans.basic import words_plan
from tests.plans.gated import plan as gated_plan
from tests.plans.overrun import TALK_SCRIPT

OVERRUN = PLANS / "overrun.py"


class Nothing(BaseModel):
    pass


@node("fall")
async def fall(ctx: NodeContext, inputs: Nothing) -> Nothing:
    raise RuntimeError("the floor gave way")


def falling_plan() -> Plan:
    plan = Plan("falling")
    plan.add(fall)
    return plan


def delivered(rt: Runtime, run_id: str) -> list[NoticeDelivered]:
    """The recorded deliveries of outcome notices (not receipts)."""
    events = [decode(r.body) for r in rt.store.read(run_id)]
    return [e for e in events if isinstance(e, NoticeDelivered) and e.notice.startswith("run ")]


def outcomes(peer: HttpPeer, path: str) -> list[OutcomeNotice]:
    return [
        OutcomeNotice.model_validate(r.json)
        for r in peer.requests
        if r.path == path and r.json.get("kind") == "outcome"
    ]


def kinds(peer: HttpPeer, path: str) -> list[str]:
    return [
        r.json["kind"] if r.json["kind"] != "outcome" else r.json["outcome"]
        for r in peer.requests
        if r.path == path
    ]


# ---- configuration ----------------------------------------------------------------------------


def test_a_sink_subscribes_to_every_event_unless_narrowed() -> None:
    every = SinkConfig.parse("webhook=https://hooks.example/x")
    assert every.events == ("gate", "abort", "failure", "success")
    assert every.describe() == "webhook https://hooks.example"
    # recorded as before: the default is not written into the run's config
    assert every.model_dump(mode="json") == {"kind": "webhook", "url": "https://hooks.example/x"}
    some = SinkConfig.parse("webhook=https://hooks.example/x#events=failure, abort")
    assert some.url == "https://hooks.example/x" and some.events == ("abort", "failure")
    assert some.wants("abort") and not some.wants("gate") and not some.wants("success")
    assert some.describe() == "webhook https://hooks.example (abort, failure)"
    assert SinkConfig.model_validate(some.model_dump(mode="json")) == some
    slack = SinkConfig.parse("slack=env:SLACK_URL#events=gate")
    assert (slack.url, slack.events) == ("env:SLACK_URL", ("gate",))
    for bad, says in (
        ("webhook=https://h/x#events=abrt", "unknown event(s) 'abrt'"),
        ("webhook=https://h/x#events=", "no events"),
    ):
        with pytest.raises(ConfigError, match="gate, abort, failure, success") as caught:
            SinkConfig.parse(bad)
        assert says in str(caught.value) and "https://h/x" not in str(caught.value)


def test_outcome_notices_parse_back_and_fit_slack() -> None:
    notice = OutcomeNotice(
        run_id="r1",
        plan="p",
        outcome="abort",
        reason="node <x> used up its own budget (tokens)" * 200,
        command="orchestrator --home /h resume r1 --budget tokens=N,compute_h=H,spend=USD",
        at="2026-01-01T00:00:00Z",
        text="...",
    )
    assert NOTICE.validate_json(notice.model_dump_json()) == notice
    payload = slack_payload(notice)
    assert payload["text"].startswith("Run aborted: run r1")
    assert all(len(json.dumps(b)) < 3500 for b in payload["blocks"])
    assert "&lt;x&gt;" in json.dumps(payload["blocks"])
    assert "resume r1 --budget" in json.dumps(payload["blocks"])


# ---- each outcome, end to end -----------------------------------------------------------------


async def test_success_and_failure_reach_a_webhook_with_the_command_to_act(
    rt: Runtime, http_peer: HttpPeer
) -> None:
    hook = SinkConfig(kind="webhook", url=f"{http_peer.url}/all")
    state = await rt.start(words_plan(), {"text": "a b"}, RunConfig(notify=[hook]))
    assert state.status == "succeeded"
    [won] = outcomes(http_peer, "/all")
    assert (won.run_id, won.plan, won.outcome) == (state.run_id, "words", "success")
    assert won.reason == "all 4 node(s) succeeded"
    assert won.command == f"orchestrator --home {rt.home} status {state.run_id}"
    assert won.text.startswith(f"run {state.run_id} (words) succeeded: all 4")
    [request] = http_peer.requests
    assert request.headers["x-orchestrator-event"] == "outcome"
    [sent] = delivered(rt, state.run_id)
    assert (sent.notice, sent.ok, sent.attempts) == ("run succeeded", True, 1)
    # the notice is delivered before the run's last checkpoint, which then holds it
    recorded = [decode(r.body) for r in rt.store.read(state.run_id)]
    assert recorded[-1].kind == "CheckpointTaken"
    ended = next(i for i, e in enumerate(recorded) if isinstance(e, RunCompleted))
    assert any(
        isinstance(e, NoticeDelivered) and e.notice == "run succeeded" for e in recorded[ended:-1]
    )

    http_peer.clear()
    state = await rt.start(falling_plan(), {}, RunConfig(notify=[hook]))
    assert state.status == "failed"
    [lost] = outcomes(http_peer, "/all")
    assert lost.outcome == "failure" and lost.run_id == state.run_id
    assert "1 node(s) failed: fall: error: RuntimeError: the floor gave way" in lost.reason
    assert lost.command == f"orchestrator --home {rt.home} status {state.run_id}"
    report = await rt.replay(state.run_id, falling_plan())
    assert report.ok, report.divergence


def test_an_abort_reaches_the_sinks_from_the_cli_with_a_complete_resume_command(
    home: Path, tmp_path: Path, http_peer: HttpPeer
) -> None:
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(line) + "\n" for line in TALK_SCRIPT))
    objects = tmp_path / "elsewhere"
    ran = cli(
        home,
        "--objects",
        str(objects),
        "run",
        f"{OVERRUN}:talking",
        "--input",
        f"tally={tmp_path / 'tally'}",
        "--budget",
        "tokens=1000,compute_h=1,spend=1",
        "--llm",
        f"scripted:{script}",
        "--model",
        "m",
        "--notify",
        f"webhook={http_peer.url}/all",
        "--notify",
        f"webhook={http_peer.url}/bad-news#events=abort,failure",
        "--notify",
        f"webhook={http_peer.url}/good-news#events=success",
    )
    assert ran.returncode == 4, ran.stdout + ran.stderr
    run_id = ran.stderr.split("run ", 1)[1].split()[0]
    for path in ("/all", "/bad-news"):
        [aborted] = outcomes(http_peer, path)
        assert aborted.outcome == "abort" and aborted.run_id == run_id
        assert "node talk used up its own budget (tokens)" in aborted.reason
        assert aborted.command == (
            # the run recorded its object store: the home finds it
            f"orchestrator --home {home.absolute()} resume {run_id} "
            "--budget tokens=N,compute_h=H,spend=USD"
        )
    assert outcomes(http_peer, "/good-news") == []
    # the command as sent, typed in another directory, continues the run
    argv = shlex.split(aborted.command)
    argv[-1] = "tokens=1000,compute_h=1,spend=1"
    elsewhere = tmp_path / "elsewhere-cwd"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=elsewhere,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert kinds(http_peer, "/all") == ["abort", "success"]
    assert kinds(http_peer, "/bad-news") == ["abort"]
    assert kinds(http_peer, "/good-news") == ["success"]
    with Runtime(home=home, objects=str(objects)) as rt:
        sent = sorted((d.notice, d.sink, d.ok) for d in delivered(rt, run_id))
    origin = http_peer.url
    assert sent == [
        ("run aborted", f"webhook {origin}", True),
        ("run aborted", f"webhook {origin} (abort, failure)", True),
        ("run succeeded", f"webhook {origin}", True),
        ("run succeeded", f"webhook {origin} (success)", True),
    ]
    assert list(elsewhere.iterdir()) == []  # nothing was created where it was typed


async def test_a_sink_gets_only_the_events_it_subscribed_to(
    rt: Runtime, http_peer: HttpPeer
) -> None:
    approver = signing.generate()
    sinks = [
        SinkConfig(kind="webhook", url=f"{http_peer.url}/all"),
        SinkConfig.parse(f"webhook={http_peer.url}/gates#events=gate"),
        SinkConfig.parse(f"webhook={http_peer.url}/ends#events=success,failure"),
    ]
    config = RunConfig(approvers={"review": [approver.public]}, notify=sinks)
    ref = f"{PLANS / 'gated.py'}:plan"
    state = await rt.start(gated_plan, {"topic": "docs"}, config, plan_ref=ref)
    assert state.status == "parked"
    assert (kinds(http_peer, "/all"), kinds(http_peer, "/gates")) == (["gate"], ["gate"])
    assert kinds(http_peer, "/ends") == []
    yes = gates.decide(state, "review", True, "fine", approver, rt.clock.now())
    await rt.decide(state.run_id, yes)
    assert rt.state(state.run_id).status == "succeeded"
    assert kinds(http_peer, "/all") == ["gate", "success"]
    assert kinds(http_peer, "/gates") == ["gate"]
    assert kinds(http_peer, "/ends") == ["success"]


async def test_a_sink_that_cannot_be_reached_is_recorded_and_the_run_ends_anyway(
    rt: Runtime,
) -> None:
    down = SinkConfig(kind="webhook", url=f"http://127.0.0.1:{unused_port()}/x")
    config = RunConfig(notify=[down], delivery_attempts=3, delivery_backoff=0.01)
    began = time.monotonic()
    state = await rt.start(falling_plan(), {}, config)
    assert time.monotonic() - began < 20
    assert state.status == "failed"
    [sent] = delivered(rt, state.run_id)
    assert sent.notice == "run failed" and not sent.ok and sent.attempts == 3
    assert sent.error and "/x" not in sent.error
    events = [decode(r.body) for r in rt.store.read(state.run_id)]
    assert any(isinstance(e, RunCompleted) for e in events)


async def test_a_sink_that_never_answers_is_given_up_on_and_the_run_ends(rt: Runtime) -> None:
    """A server that takes the connection and never replies: the HTTP timeout bounds the
    attempt, the failure is recorded, and the run's process is free to exit."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
        port = silent.getsockname()[1]
        hook = SinkConfig(kind="webhook", url=f"http://127.0.0.1:{port}/x")
        config = RunConfig(notify=[hook], delivery_attempts=1, delivery_backoff=0)
        began = time.monotonic()
        state = await rt.start(words_plan(), {"text": "a b"}, config)
        took = time.monotonic() - began
    assert state.status == "succeeded"
    assert took < 40, took
    [sent] = delivered(rt, state.run_id)
    assert sent.notice == "run succeeded" and not sent.ok and sent.error
