"""Human gates end to end: parking, notices, signed decisions, refusals, long waits.

A gated node's outputs are held (GateParked) until an approver's signed decision is
recorded (GateDecided); the run parks when nothing else can run, a notice goes to the
run's sinks, and a decision made later, from another process or after a restart,
continues the run. Anything forged, altered, replayed or misaddressed is refused and
changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator import Runtime, gates, signing
from orchestrator.clock import ManualClock, iso, parse_iso
from orchestrator.config import RunConfig
from orchestrator.errors import DecisionRefused
from orchestrator.gates import Decision
from orchestrator.ledger.events import (
    BaseEvent,
    GateDecided,
    GateParked,
    NodeDispatched,
    NodeSucceeded,
    NoticeDelivered,
    RetryScheduled,
    RunParked,
    RunResumed,
    decode,
)
from orchestrator.ledger.state import RunState
from orchestrator.plan import Plan
from orchestrator.runtime.lock import RunLock
from orchestrator.sinks import GateNotice, SinkConfig
from tests.conftest import PLANS, cli
from tests.http_peer import HttpPeer, unused_port
from tests.plans.gated import live, once, plan

GATED = PLANS / "gated.py"
PLAN_REF = f"{GATED}:plan"
LIVE_REF = f"{GATED}:live"
ONCE_REF = f"{GATED}:once"

E = TypeVar("E", bound=BaseEvent)


# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def approver() -> signing.Signer:
    return signing.generate()


@pytest.fixture
def stranger() -> signing.Signer:
    """A well-formed key that is nobody's approver."""
    return signing.generate()


def config(*keys: signing.Signer, notify: list[SinkConfig] | None = None) -> RunConfig:
    return RunConfig(approvers={"review": [k.public for k in keys]}, notify=notify or [])


def events(rt: Runtime, run_id: str) -> list[BaseEvent]:
    return [decode(row.body) for row in rt.store.read(run_id)]


def of(kind: type[E], evs: list[BaseEvent]) -> list[E]:
    return [e for e in evs if isinstance(e, kind)]


def head(rt: Runtime, run_id: str) -> int:
    return rt.store.read(run_id)[-1].seq


def gate_notices(evs: list[BaseEvent]) -> list[NoticeDelivered]:
    return [e for e in of(NoticeDelivered, evs) if e.notice.startswith("gate ")]


async def start(rt: Runtime, the_plan: Plan, cfg: RunConfig, ref: str, **inputs: Any) -> RunState:
    return await rt.start(the_plan, inputs or {"topic": "docs"}, cfg, plan_ref=ref)


async def replay_ok(rt: Runtime, run_id: str) -> None:
    report = await rt.replay(run_id)
    assert report.ok, report.divergence
    assert report.head_hash == rt.store.read(run_id)[-1].hash


def one_paragraph_error(result: subprocess.CompletedProcess[str], says: str) -> None:
    """Exit 1 with a single ``error: ...`` paragraph on stderr, and nothing else."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    text = result.stderr.strip()
    assert text.startswith("error:"), text
    assert "\n\n" not in text and "Traceback" not in result.stdout + result.stderr
    assert says in " ".join(text.split()), text


async def refused(rt: Runtime, run_id: str, decision: Decision, says: str) -> None:
    """The decision is refused by both ways in, and the ledger does not move."""
    before, status = head(rt, run_id), rt.state(run_id).status
    with pytest.raises(DecisionRefused, match=re.escape(says)):
        await rt.decide(run_id, [decision])
    with pytest.raises(DecisionRefused, match=re.escape(says)):
        await rt.resume(run_id, decisions=[decision])
    assert head(rt, run_id) == before
    assert rt.state(run_id).status == status


# ---- 1. the command line, end to end, in real processes ---------------------------------------


def test_cli_parks_notifies_slack_and_an_approval_from_another_process_finishes(
    home: Path, tmp_path: Path, http_peer: HttpPeer
) -> None:
    key = tmp_path / "keys" / "me.key"
    made = cli(home, "keys", "init", "--key", str(key))
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    assert public == key.with_suffix(".pub").read_text().strip()
    assert signing.load(key).public == public and oct(key.stat().st_mode & 0o777) == "0o600"

    ran = cli(
        home,
        "run",
        PLAN_REF,
        "--approver",
        f"review={public}",
        "--notify",
        f"slack={http_peer.url}/services/T0/B0/not-a-secret",
    )
    assert ran.returncode == 3, ran.stdout + ran.stderr
    found = re.search(r"run (\S+) started", ran.stderr)
    assert found, ran.stderr
    run_id = found.group(1)
    assert f" approve {run_id} review" in ran.stdout and "orchestrator --home " in ran.stdout

    with Runtime(home=home) as rt:
        assert rt.owner(run_id) is None  # the run's process exited while the gate waits
        state = rt.state(run_id)
        assert state.status == "parked"
        assert state.nodes["propose"].status == "awaiting"
        assert state.nodes["ship"].status == "pending"
        assert state.nodes["side"].status == "succeeded"
        evs = events(rt, run_id)
        [parked] = of(RunParked, evs)
        assert parked.reason == "awaiting approval: propose at gate review"
        [side_done] = [e for e in of(NodeSucceeded, evs) if e.node == "side"]
        assert side_done.seq < parked.seq
        [held] = of(GateParked, evs)
        [sent] = gate_notices(evs)
        assert sent.ok and sent.attempts == 1 and sent.notice == "gate review propose#1"
        assert "not-a-secret" not in sent.sink  # the webhook path never reaches the ledger

    [request] = http_peer.requests
    assert request.path == "/services/T0/B0/not-a-secret"
    message = request.json
    assert {b["type"] for b in message["blocks"]} == {"header", "section"}
    assert "gate review" in message["blocks"][0]["text"]["text"]
    shown = "\n".join(
        [message["text"]]
        + [f["text"] for b in message["blocks"] for f in b.get("fields", [])]
        + [b["text"]["text"] for b in message["blocks"] if "text" in b]
    )
    for needle in (
        run_id,
        "*Node*\n`propose`",
        held.digest,
        "+docs: attempt 1",  # the diff excerpt
        # complete: it works from any directory
        f"orchestrator --home {home.absolute()} approve {run_id} review",
        f"orchestrator --home {home.absolute()} approve {run_id} review --reject --comment WHY",
    ):
        assert needle in shown, needle

    approved = cli(home, "approve", run_id, "review", "--key", str(key), "-m", "lgtm")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    with Runtime(home=home) as rt:
        done = rt.state(run_id, verify=True)
        assert done.status == "succeeded"
        assert done.nodes["ship"].outputs == {"shipped": "docs: attempt 1"}
        [decided] = of(GateDecided, events(rt, run_id))
        assert (decided.decision, decided.comment, decided.approver) == ("approve", "lgtm", public)
        assert decided.digest == held.digest
    # nothing more to approve: what follows the gate notice is the run's success
    first, last = http_peer.requests
    assert first.json["blocks"][0]["text"]["text"] == message["blocks"][0]["text"]["text"]
    assert last.json["text"] == f"Run succeeded: run {run_id}"

    replayed = cli(home, "replay", run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay OK" in replayed.stdout


# ---- 2. rejection ------------------------------------------------------------------------------


async def test_rejection_reruns_the_node_with_the_comment_then_approval_succeeds(
    rt: Runtime, approver: signing.Signer
) -> None:
    state = await start(rt, plan, config(approver), PLAN_REF)
    run_id = state.run_id
    first_held = state.nodes["propose"].held
    assert first_held is not None and first_held.outputs["title"] == "docs: attempt 1"

    no = gates.decide(state, "review", False, "mention the changelog", approver, rt.clock.now())
    assert await rt.decide(run_id, no) == "resumed"
    again = rt.state(run_id)
    assert again.status == "parked"
    ns = again.nodes["propose"]
    assert (ns.status, ns.attempt, ns.feedback) == ("awaiting", 2, ["mention the changelog"])
    assert ns.held is not None and ns.held.attempt == 2
    # the second attempt saw ctx.feedback == ("mention the changelog",)
    assert ns.held.outputs["title"] == "docs: attempt 2 (after: mention the changelog)"
    assert "+docs: attempt 2 (after: mention the changelog)" in ns.held.review
    assert again.nodes["ship"].status == "pending"
    evs = events(rt, run_id)
    [decided] = of(GateDecided, evs)
    assert (decided.decision, decided.attempt, decided.comment) == (
        "reject",
        1,
        "mention the changelog",
    )
    [retry] = of(RetryScheduled, evs)
    assert retry.seq > decided.seq and (retry.node, retry.next_attempt) == ("propose", 2)
    assert (retry.reason.type, retry.reason.message) == ("GateRejected", "mention the changelog")
    assert [(d.node, d.attempt) for d in of(NodeDispatched, evs) if d.node == "propose"] == [
        ("propose", 1),
        ("propose", 2),
    ]

    yes = gates.decide(again, "review", True, "", approver, rt.clock.now())
    assert [d.attempt for d in yes] == [2]
    assert await rt.decide(run_id, yes) == "resumed"
    done = rt.state(run_id)
    assert done.status == "succeeded"
    assert done.nodes["ship"].outputs == {
        "shipped": "docs: attempt 2 (after: mention the changelog)"
    }
    assert [d.decision for d in of(GateDecided, events(rt, run_id))] == ["reject", "approve"]
    await replay_ok(rt, run_id)


async def test_rejection_without_a_retry_fails_the_node_and_its_dependents(
    rt: Runtime, approver: signing.Signer
) -> None:
    state = await start(rt, once, config(approver), ONCE_REF)
    run_id = state.run_id
    assert state.nodes["propose-once"].status == "awaiting"
    no = gates.decide(state, "review", False, "wrong file", approver, rt.clock.now())
    assert await rt.decide(run_id, no) == "resumed"
    done = rt.state(run_id)
    assert done.status == "failed"
    failed = done.nodes["propose-once"]
    assert (failed.status, failed.cause, failed.attempt) == ("failed", "rejected", 1)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("GateRejected", "wrong file")
    assert (done.nodes["ship"].status, done.nodes["ship"].cause) == ("failed", "upstream")
    assert done.nodes["side"].status == "succeeded"
    evs = events(rt, run_id)
    assert not of(RetryScheduled, evs)
    assert not [e for e in of(NodeSucceeded, evs) if e.node == "propose-once"]
    assert done.summary["failed"]["propose-once"] == "rejected: GateRejected: wrong file"
    await replay_ok(rt, run_id)


# ---- 3. forged and mismatched decisions ------------------------------------------------------


async def test_forged_altered_misaddressed_and_replayed_decisions_change_nothing(
    rt: Runtime, approver: signing.Signer, stranger: signing.Signer
) -> None:
    a = await start(rt, plan, config(approver), PLAN_REF)
    b = await start(rt, plan, config(approver), PLAN_REF)
    now = rt.clock.now()
    held = a.nodes["propose"].held
    assert held is not None and a.status == b.status == "parked"
    [good] = gates.decide(a, "review", True, "fine", approver, now)

    def signed(**changes: Any) -> Decision:
        return good.model_copy(update=changes).signed_by(approver)

    # a key that is not among the gate's approvers
    [theirs] = gates.decide(a, "review", True, "fine", stranger, now)
    await refused(rt, a.run_id, theirs, "is not an approver of gate 'review'")
    # an approver's decision altered after signing, or a stranger's claiming to be one
    altered = good.model_copy(update={"comment": "fine, and also deploy to prod"})
    await refused(rt, a.run_id, altered, "does not verify against the key")
    claimed = theirs.model_copy(update={"approver": approver.public})
    await refused(rt, a.run_id, claimed, "does not verify against the key")
    # signed for run A, handed to run B (same plan, same gate, same outputs)
    assert b.nodes["propose"].held is not None
    assert b.nodes["propose"].held.digest == held.digest
    await refused(rt, b.run_id, good, f"this decision is for run {a.run_id}, not {b.run_id}")
    # signed by an approver, but for outputs other than the ones held
    await refused(rt, a.run_id, signed(digest="0" * 64), "was signed for outputs with digest")
    # a gate the run does not have, and a node that is not waiting
    await refused(rt, a.run_id, signed(gate="deploy"), "has no gate 'deploy'")
    with pytest.raises(DecisionRefused, match="has no gate 'deploy'"):
        gates.decide(a, "deploy", True, "", approver, now)
    await refused(rt, a.run_id, signed(node="side"), "node side is not waiting at gate 'review'")
    # dated before the outputs it claims to be about were parked
    early = iso(parse_iso(held.ts) - timedelta(seconds=1))
    await refused(rt, a.run_id, signed(decided_at=early), "before node propose parked")

    # a rejection is recorded; reusing it, or any decision on attempt 1, is refused
    [no] = gates.decide(a, "review", False, "try again", approver, now)
    assert await rt.decide(a.run_id, [no]) == "resumed"
    a2 = rt.state(a.run_id)
    assert a2.nodes["propose"].attempt == 2 and a2.status == "parked"
    await refused(rt, a.run_id, no, "was already recorded; a decision counts once")
    await refused(rt, a.run_id, good, "is for attempt 1 of node propose, but attempt 2")

    # the real decisions still go through, each once
    [yes] = gates.decide(a2, "review", True, "", approver, rt.clock.now())
    assert await rt.decide(a.run_id, [yes]) == "resumed"
    assert rt.state(a.run_id).status == "succeeded"
    with pytest.raises(DecisionRefused, match="already recorded"):
        await rt.decide(a.run_id, [yes])
    [b_yes] = gates.decide(b, "review", True, "", approver, rt.clock.now())
    assert await rt.decide(b.run_id, [b_yes]) == "resumed"
    assert rt.state(b.run_id).status == "succeeded"
    await replay_ok(rt, a.run_id)


async def test_cli_refuses_bad_decisions_with_one_paragraph_and_writes_nothing(
    home: Path, tmp_path: Path, approver: signing.Signer, stranger: signing.Signer
) -> None:
    mine, theirs = tmp_path / "mine.key", tmp_path / "theirs.key"
    signing.save(approver, mine)
    signing.save(stranger, theirs)
    with Runtime(home=home) as rt:
        run_id = (await start(rt, plan, config(approver), PLAN_REF)).run_id
        before = head(rt, run_id)

    not_theirs = cli(home, "approve", run_id, "review", "--key", str(theirs))
    one_paragraph_error(not_theirs, "is not an approver of gate 'review'")
    assert "approved" not in not_theirs.stderr  # nothing claims success before the refusal
    no_gate = cli(home, "approve", run_id, "deploy", "--key", str(mine))
    one_paragraph_error(no_gate, "has no gate 'deploy' (its gates: review)")
    no_node = cli(home, "approve", run_id, "review", "--node", "side", "--key", str(mine))
    one_paragraph_error(no_node, "node side is not waiting at gate 'review'")
    no_key = cli(home, "approve", run_id, "review", "--key", str(tmp_path / "missing.key"))
    one_paragraph_error(no_key, "missing")

    with Runtime(home=home) as rt:
        assert head(rt, run_id) == before
        assert rt.state(run_id).status == "parked"
        assert not of(GateDecided, events(rt, run_id))

    shown = cli(home, "approve", run_id, "review", "--show")
    assert shown.returncode == 0 and "+docs: attempt 1" in shown.stdout
    wrong_gate = cli(home, "approve", run_id, "deploy", "--show")
    one_paragraph_error(wrong_gate, "has no gate 'deploy' (its gates: review)")
    wrong_node = cli(home, "approve", run_id, "review", "--node", "side", "--show")
    one_paragraph_error(wrong_node, "node side is not waiting at gate 'review'")
    assert "waiting: " in wrong_node.stderr and not wrong_node.stdout
    with Runtime(home=home) as rt:
        assert head(rt, run_id) == before


# ---- 4. waits that outlast processes -----------------------------------------------------------


async def test_a_gate_waits_three_weeks_across_restarts(
    home: Path, approver: signing.Signer
) -> None:
    clock = ManualClock()
    with Runtime(home=home, clock=clock) as first:
        run_id = (await start(first, plan, config(approver), PLAN_REF)).run_id
        assert first.state(run_id).status == "parked"
        [parked] = of(GateParked, events(first, run_id))

    later_clock = ManualClock(clock.now() + timedelta(days=21))
    with Runtime(home=home, clock=later_clock) as later:
        state = later.state(run_id, verify=True)
        assert state.status == "parked" and later.owner(run_id) is None
        backdated = gates.decide(
            state, "review", True, "", approver, parse_iso(parked.ts) - timedelta(minutes=5)
        )
        await refused(later, run_id, backdated[0], "before node propose parked")

        decisions = gates.decide(
            state, "review", True, "three weeks on", approver, later.clock.now()
        )
        assert await later.decide(run_id, decisions) == "resumed"
        done = later.state(run_id)
        assert done.status == "succeeded"
        assert done.nodes["ship"].outputs == {"shipped": "docs: attempt 1"}
        evs = events(later, run_id)
        [decided] = of(GateDecided, evs)
        assert parse_iso(decided.decided_at) - parse_iso(parked.ts) == timedelta(days=21)
        assert parse_iso(decided.ts) - parse_iso(parked.ts) == timedelta(days=21)
        [resumed] = of(RunResumed, evs)
        assert resumed.reason == "gate decision" and resumed.seq < decided.seq
        await replay_ok(later, run_id)


# ---- 5. a decision for a run whose process is still alive ---------------------------------------


async def _live_run(
    rt: Runtime, approver: signing.Signer, release: Path
) -> tuple[str, asyncio.Future[RunState]]:
    """Start the live plan and return once its gate waits while side-wait still runs."""
    started: list[str] = []
    task = asyncio.ensure_future(
        rt.start(
            live,
            {"topic": "docs", "path": str(release)},
            config(approver),
            plan_ref=LIVE_REF,
            on_start=started.append,
        )
    )
    async with asyncio.timeout(10):
        while not started:
            await asyncio.sleep(0.01)
        while True:
            state = rt.state(started[0])
            if (state.nodes["propose"].status, state.nodes["side-wait"].status) == (
                "awaiting",
                "running",
            ):
                break
            await asyncio.sleep(0.01)
    return started[0], task


async def test_a_decision_reaches_the_live_process_through_the_control_channel(
    home: Path,
    tmp_path: Path,
    approver: signing.Signer,
    stranger: signing.Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = tmp_path / "release"
    with Runtime(home=home) as owner:
        run_id, task = await _live_run(owner, approver, release)
        with Runtime(home=home) as other:
            assert other.owner(run_id) == os.getpid()
            state = other.state(run_id)
            assert state.status == "running"
            before = head(other, run_id)
            # refused before it is sent; and one slipped into the channel is refused there
            [theirs] = gates.decide(state, "review", True, "", stranger, other.clock.now())
            with pytest.raises(DecisionRefused, match="is not an approver"):
                await other.decide(run_id, [theirs])
            other.store.send_control(run_id, "decide", theirs.model_dump_json())
            async with asyncio.timeout(10):  # until the live process has read it, and said no
                while not [r for r in caplog.records if "is not an approver" in r.getMessage()]:
                    await asyncio.sleep(0.02)
            assert not of(GateDecided, events(other, run_id))
            assert other.state(run_id).nodes["propose"].status == "awaiting"

            decisions = gates.decide(state, "review", True, "ship it", approver, other.clock.now())
            assert await other.decide(run_id, decisions) == "delivered"
            mid = other.state(run_id)
            assert mid.nodes["propose"].status == "succeeded"
            assert mid.nodes["side-wait"].status == "running"  # the branch never stopped
            assert not task.done()
            async with asyncio.timeout(10):
                while other.state(run_id).nodes["ship"].status != "succeeded":
                    await asyncio.sleep(0.02)
            assert head(other, run_id) > before

        release.write_text("go")
        final = await asyncio.wait_for(task, 10)
        assert final.status == "succeeded"
        assert final.nodes["ship"].outputs == {"shipped": "docs: attempt 1"}
        evs = events(owner, run_id)
        assert not of(RunParked, evs) and not of(RunResumed, evs)  # one process, throughout
        [decided] = of(GateDecided, evs)
        assert decided.comment == "ship it"
        await replay_ok(owner, run_id)


async def test_cli_approve_hands_the_decision_to_the_live_process(
    home: Path, tmp_path: Path, approver: signing.Signer
) -> None:
    key = tmp_path / "me.key"
    signing.save(approver, key)
    release = tmp_path / "release"
    with Runtime(home=home) as owner:
        run_id, task = await _live_run(owner, approver, release)
        # the child process polls the ledger while this process (the owner) keeps running
        approved = await asyncio.to_thread(
            cli, home, "approve", run_id, "review", "--key", str(key), "-m", "from afar"
        )
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert "the live run continues" in approved.stderr
        assert owner.state(run_id).nodes["propose"].status == "succeeded"
        assert not task.done()
        release.write_text("go")
        final = await asyncio.wait_for(task, 10)
        assert final.status == "succeeded"
        assert not of(RunResumed, events(owner, run_id))


async def test_a_decision_sent_to_a_process_that_exits_without_reading_it_still_counts(
    rt: Runtime, home: Path, tmp_path: Path, approver: signing.Signer
) -> None:
    """The race `approve` can lose: the run's owner is alive when the decision is sent,
    then parks and exits before its next control poll. The decision must not be lost
    (nor the approver told, 30 s later, that it is queued for a process that is gone)."""
    run_id = (await start(rt, plan, config(approver), PLAN_REF)).run_id
    decisions = gates.decide(rt.state(run_id), "review", True, "", approver, rt.clock.now())
    owner = RunLock(home, run_id)  # stands in for a live process that never polls again
    owner.acquire()
    try:
        deciding = asyncio.ensure_future(rt.decide(run_id, decisions, wait=5))
        async with asyncio.timeout(10):  # until the decision is sent...
            while not (sent := rt.store.take_controls(run_id)):
                await asyncio.sleep(0.02)
        for control in sent:  # ...where it stays: the owner never reads it
            rt.store.send_control(run_id, control.command, control.source)
        assert not deciding.done()
        assert not of(GateDecided, events(rt, run_id))
    finally:
        owner.release()  # ...and it exits
    assert await asyncio.wait_for(deciding, 5) == "resumed"
    done = rt.state(run_id)
    assert done.status == "succeeded"
    assert len(of(GateDecided, events(rt, run_id))) == 1

    # the same race through `orchestrator approve` in a child process
    key = tmp_path / "me.key"
    signing.save(approver, key)
    run_id = (await start(rt, plan, config(approver), PLAN_REF)).run_id
    owner = RunLock(home, run_id)
    owner.acquire()
    try:
        approving = asyncio.ensure_future(
            asyncio.to_thread(cli, home, "approve", run_id, "review", "--key", str(key))
        )
        async with asyncio.timeout(10):  # until the child has sent its decision
            while not approving.done() and not rt.store.take_controls(run_id):
                await asyncio.sleep(0.05)
    finally:
        owner.release()
    approved = await approving
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "continued here" in approved.stderr and "live run continues" not in approved.stderr
    assert rt.state(run_id).status == "succeeded"


# ---- 6. notices ---------------------------------------------------------------------------------


async def test_each_parking_sends_the_gate_notice_to_a_webhook(
    rt: Runtime, approver: signing.Signer, http_peer: HttpPeer
) -> None:
    hook = SinkConfig(kind="webhook", url=f"{http_peer.url}/hooks/gates")
    state = await start(rt, plan, config(approver, notify=[hook]), PLAN_REF)
    run_id = state.run_id
    [first] = http_peer.requests
    assert first.method == "POST" and first.path == "/hooks/gates"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-orchestrator-event"] == "gate"
    notice = GateNotice.model_validate(first.json)
    held = state.nodes["propose"].held
    assert held is not None
    assert notice == GateNotice(
        run_id=run_id,
        node="propose",
        attempt=1,
        gate="review",
        digest=held.digest,
        review=held.review,
        approve=f"orchestrator --home {rt.home} approve {run_id} review",
        reject=f"orchestrator --home {rt.home} approve {run_id} review --reject --comment WHY",
        parked_at=held.ts,
    )
    [sent] = gate_notices(events(rt, run_id))
    assert (sent.notice, sent.ok, sent.attempts, sent.error) == (
        "gate review propose#1",
        True,
        1,
        None,
    )

    no = gates.decide(state, "review", False, "smaller please", approver, rt.clock.now())
    await rt.decide(run_id, no)
    _, second = http_peer.requests
    renotice = GateNotice.model_validate(second.json)
    assert renotice.attempt == 2 and "after: smaller please" in renotice.review
    assert renotice.digest != notice.digest
    assert [n.notice for n in gate_notices(events(rt, run_id))] == [
        "gate review propose#1",
        "gate review propose#2",
    ]


async def test_sinks_that_always_fail_leave_the_gate_parked_and_approvable(
    rt: Runtime, approver: signing.Signer, http_peer: HttpPeer
) -> None:
    http_peer.fail_next(100, 500)
    sinks = [
        SinkConfig(kind="webhook", url=f"{http_peer.url}/always-500"),
        SinkConfig(kind="slack", url=f"http://127.0.0.1:{unused_port()}/closed"),
    ]
    # five attempts each, with a 10 ms backoff base instead of 0.5 s (7.5 s per sink)
    quick = config(approver, notify=sinks).model_copy(update={"delivery_backoff": 0.01})
    state = await start(rt, plan, quick, PLAN_REF)
    run_id = state.run_id
    assert state.status == "parked" and state.nodes["propose"].status == "awaiting"
    sent = {n.sink: n for n in gate_notices(events(rt, run_id))}
    assert len(sent) == 2 and all(not n.ok and n.attempts == 5 for n in sent.values())
    webhook = sent[f"webhook {http_peer.url}"]
    assert webhook.error is not None and "HTTP 500" in webhook.error
    assert len(http_peer.requests) == 5
    assert all(n.error and "closed" not in n.error for n in sent.values())

    yes = gates.decide(state, "review", True, "", approver, rt.clock.now())
    assert await rt.decide(run_id, yes) == "resumed"
    assert rt.state(run_id).status == "succeeded"
    await replay_ok(rt, run_id)


# ---- 7. a notice lost to a crash is sent on resume -----------------------------------------------


def _spawn(home: Path, *args: str) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.cli", "--home", str(home), "run", "-q", *args]
    with open(home / "child.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _killed_after_parking(
    home: Path, approver: signing.Signer, peer: HttpPeer, procs: list[subprocess.Popen[bytes]]
) -> str:
    """Run in a child whose gate notice keeps failing; SIGKILL it mid-delivery."""
    peer.fail_next(1000, 503)
    proc = _spawn(
        home,
        PLAN_REF,
        "--approver",
        f"review={approver.public}",
        "--notify",
        f"webhook={peer.url}/hook",
    )
    procs.append(proc)
    await asyncio.to_thread(peer.wait_for, 1, 30)  # the notice went out once and failed
    with Runtime(home=home) as rt:
        [run] = rt.store.runs()
        assert rt.state(run.run_id).nodes["propose"].status == "awaiting"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    with Runtime(home=home) as rt:
        evs = events(rt, run.run_id)
        assert of(GateParked, evs) and not gate_notices(evs) and not of(RunParked, evs)
        assert rt.owner(run.run_id) is None
    peer.clear()  # the sink works again
    return run.run_id


async def test_a_notice_lost_to_sigkill_is_sent_again_on_resume(
    home: Path,
    approver: signing.Signer,
    http_peer: HttpPeer,
    children: list[subprocess.Popen[bytes]],
) -> None:
    run_id = await _killed_after_parking(home, approver, http_peer, children)
    with Runtime(home=home) as rt:
        again = await rt.resume(run_id)
        assert again.status == "parked"
        [request] = http_peer.requests
        notice = GateNotice.model_validate(request.json)
        assert (notice.run_id, notice.node, notice.attempt) == (run_id, "propose", 1)
        [sent] = gate_notices(events(rt, run_id))
        assert sent.ok and sent.notice == "gate review propose#1"

        # delivered and recorded now: a further resume does not send it a second time
        assert (await rt.resume(run_id)).status == "parked"
        assert len(http_peer.requests) == 1

        yes = gates.decide(again, "review", True, "", approver, rt.clock.now())
        assert await rt.decide(run_id, yes) == "resumed"
        assert rt.state(run_id).status == "succeeded"
        await replay_ok(rt, run_id)


async def test_an_approval_on_resume_does_not_resend_the_notice_it_answers(
    home: Path,
    approver: signing.Signer,
    http_peer: HttpPeer,
    children: list[subprocess.Popen[bytes]],
) -> None:
    run_id = await _killed_after_parking(home, approver, http_peer, children)
    with Runtime(home=home) as rt:
        yes = gates.decide(rt.state(run_id), "review", True, "", approver, rt.clock.now())
        assert await rt.decide(run_id, yes) == "resumed"
        assert rt.state(run_id).status == "succeeded"
        # no "approval needed" for what was just approved; only the run's success
        assert [r.json["kind"] for r in http_peer.requests] == ["outcome"]
        assert not gate_notices(events(rt, run_id))


async def test_status_shows_the_waiting_node_and_how_to_decide(
    rt: Runtime, home: Path, approver: signing.Signer
) -> None:
    state = await start(rt, plan, config(approver), PLAN_REF)
    shown = cli(home, "status", state.run_id, "--once")
    assert shown.returncode == 0, shown.stderr
    assert "1 awaiting" in shown.stdout
    line = next(row for row in shown.stdout.splitlines() if row.startswith("propose"))
    assert "awaiting" in line
    assert f" approve {state.run_id} review" in shown.stdout


async def test_a_decision_dated_in_the_future_is_refused(
    rt: Runtime, approver: signing.Signer
) -> None:
    a = await start(rt, plan, config(approver), PLAN_REF)
    [good] = gates.decide(a, "review", True, "fine", approver, rt.clock.now())

    def dated(moment: str) -> Decision:
        return good.model_copy(update={"decided_at": moment}).signed_by(approver)

    await refused(
        rt,
        a.run_id,
        dated("2099-01-01T00:00:00.000000Z"),
        "is dated 2099-01-01T00:00:00.000000Z, more than 5 minutes after now",
    )
    ten_minutes = iso(rt.clock.now() + timedelta(minutes=10))
    await refused(rt, a.run_id, dated(ten_minutes), "a decision cannot be made in the future")
    # a signer's clock a little ahead of the run's is within the allowed skew
    soon = dated(iso(rt.clock.now() + timedelta(minutes=4)))
    assert await rt.decide(a.run_id, [soon]) == "resumed"
    assert rt.state(a.run_id).status == "succeeded"


def test_cli_reject_with_redo_sends_the_work_back_upstream(home: Path, tmp_path: Path) -> None:
    key = tmp_path / "me.key"
    signing.save(signing.generate(), key)
    public = signing.load(key).public
    ran = cli(home, "run", f"{GATED}:redo", "--approver", f"review={public}")
    assert ran.returncode == 3, ran.stdout + ran.stderr
    run_id = re.search(r"run (\S+) started", ran.stderr).group(1)  # type: ignore[union-attr]
    alone = cli(home, "approve", run_id, "review", "--redo", "draft", "--key", str(key))
    assert alone.returncode == 2 and "--redo NODE goes with --reject" in alone.stderr
    sent_back = cli(
        home,
        "approve",
        run_id,
        "review",
        "--reject",
        "-m",
        "cite",
        "--redo",
        "draft",
        "--key",
        str(key),
    )
    assert sent_back.returncode == 3, sent_back.stdout + sent_back.stderr  # parked again
    with Runtime(home=home) as rt:
        state = rt.state(run_id)
        held = state.nodes["propose-draft"].held
        assert held is not None and held.outputs["title"] == "docs draft 2 (cite)"
        [decided] = of(GateDecided, events(rt, run_id))
        assert decided.redo == "draft" and gates.verify_recorded(state, decided)
