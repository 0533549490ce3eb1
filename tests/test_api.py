"""The Python API: start a run in the background (a handle to wait on, look at and pause),
approve or reject with a key, resume and replay without naming the plan again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import RunConfig, Runtime, signing
from orchestrator.errors import DecisionRefused, PlanInvalid, RunStateError
from orchestrator.ledger.events import RunStarted
from tests.plans import basic, gated


def approvers(*keys: signing.Signer) -> RunConfig:
    return RunConfig(approvers={"review": [k.public for k in keys]})


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_submitted_run_is_recorded_at_once_and_waited_for(rt: Runtime) -> None:
    handle = await rt.submit(basic.plan, {"text": "to be or not"})
    assert [r.run_id for r in rt.runs()] == [handle.run_id]  # recorded before it ends
    final = await handle.wait()
    assert final.status == "succeeded" and handle.status() == "succeeded" and handle.done()
    assert final.nodes["join"].outputs == {"count": 4}
    started = rt.state(handle.run_id)
    assert started.plan_ref == "tests.plans.basic:plan"  # found, not passed by hand
    report = await rt.replay(handle.run_id)  # so replay needs no plan either
    assert report.ok, (report.divergence, report)


async def test_a_plan_that_fails_its_checks_raises_and_records_nothing(rt: Runtime) -> None:
    with pytest.raises(PlanInvalid):
        await rt.submit(basic.broken(), {"text": "x"})
    assert rt.runs() == []


async def test_approve_with_a_key_reaches_the_live_run(rt: Runtime, tmp_path: Path) -> None:
    key = signing.generate()
    release = tmp_path / "release"
    handle = await rt.submit(gated.live, {"path": str(release)}, approvers(key))
    await until(lambda: handle.state().nodes["propose"].status == "awaiting")
    with pytest.raises(DecisionRefused):  # not an approver: nothing changes
        await rt.approve(handle.run_id, "review", signing.generate())
    assert await rt.approve(handle.run_id, "review", key, comment="lgtm") == "delivered"
    release.write_text("go")
    final = await handle.wait()
    assert final.status == "succeeded"
    assert final.nodes["ship"].outputs == {"shipped": "docs: attempt 1"}


async def test_pause_then_resume_and_approve_from_a_key_file(rt: Runtime, tmp_path: Path) -> None:
    key = signing.generate()
    signing.save(key, tmp_path / "approver.key")
    release = tmp_path / "release"
    handle = await rt.submit(gated.live, {"path": str(release)}, approvers(key))
    await until(lambda: handle.state().nodes["side-wait"].status == "running")
    handle.pause()
    await until(lambda: handle.status() == "pausing")
    release.write_text("go")  # the in-flight node drains, then the run parks
    parked = await handle.wait()
    assert parked.status == "parked"
    again = await rt.resume(handle.run_id)  # the plan is found from its recorded ref
    assert again.status == "parked" and again.nodes["propose"].status == "awaiting"
    outcome = await rt.approve(handle.run_id, "review", tmp_path / "approver.key")
    assert outcome == "resumed"  # no process drove it: it went on here
    assert rt.state(handle.run_id).status == "succeeded"


async def test_a_plan_no_module_name_holds_must_be_passed_to_resume(rt: Runtime) -> None:
    key = signing.generate()
    built_here = gated.gated_plan()  # a local variable: no module-level name holds it
    state = await rt.start(built_here, {"topic": "docs"}, approvers(key))
    assert state.status == "parked"
    first = rt.state(state.run_id)
    assert first.plan_ref == ""
    with pytest.raises(RunStateError, match="recorded no plan reference"):
        await rt.resume(state.run_id)
    resumed = await rt.resume(state.run_id, built_here)
    assert resumed.status == "parked"  # still at its gate, now driven with the plan given
    events = rt.store.read(state.run_id)
    assert events[0].kind == RunStarted.__name__


async def test_a_rejection_sends_the_work_back_upstream_with_its_comment(rt: Runtime) -> None:
    key = signing.generate()
    first = await rt.start(gated.redo, {"topic": "docs"}, approvers(key))
    run_id = first.run_id
    assert first.status == "parked" and first.nodes["propose-draft"].status == "awaiting"
    for wrong, why in (("side", "does not depend on it"), ("ship", "does not depend on it")):
        with pytest.raises(DecisionRefused, match=why):
            await rt.approve(run_id, "review", key, reject=True, comment="x", redo=wrong)
    with pytest.raises(DecisionRefused, match="goes with a rejection"):
        await rt.approve(run_id, "review", key, redo="draft")
    outcome = await rt.approve(
        run_id, "review", key, reject=True, comment="cite the RFC", redo="draft"
    )
    assert outcome == "resumed"
    again = rt.state(run_id)
    assert again.status == "parked"  # at the same gate, with what the redone draft made
    assert again.nodes["draft"].attempt == 2 and again.nodes["draft"].feedback == ["cite the RFC"]
    held = again.nodes["propose-draft"].held
    assert held is not None and held.outputs["title"] == "docs draft 2 (cite the RFC)"
    assert again.nodes["propose-draft"].attempt == 2
    assert again.nodes["side"].attempt == 1  # not downstream of draft: not run again
    assert await rt.approve(run_id, "review", key) == "resumed"
    done = rt.state(run_id, verify=True)
    assert done.status == "succeeded"
    assert done.nodes["ship"].outputs == {"shipped": "docs draft 2 (cite the RFC)"}
    report = await rt.replay(run_id)
    assert report.ok, (report.divergence, report)
