"""Scheduler behaviour: parallel dispatch, limits, retries, timeouts, failure, maps, pause."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, RunConfig, Runtime, node
from orchestrator.clock import ManualClock
from orchestrator.ledger.events import (
    NodeDispatched,
    NodeFailed,
    NodeSucceeded,
    RetryScheduled,
    RunParked,
    decode,
)
from orchestrator.ledger.state import RunState
from tests.backends import needs


class N(BaseModel):
    n: int


class Ns(BaseModel):
    ns: list[int]


class Nothing(BaseModel):
    pass


def events(rt: Runtime, run_id: str) -> list:  # type: ignore[type-arg]
    return [decode(r.body) for r in rt.store.read(run_id)]


def fan(body, width: int, name: str = "fan") -> Plan:  # type: ignore[no-untyped-def]
    @node("numbers")
    async def numbers(ctx: NodeContext, inputs: Nothing) -> Ns:
        return Ns(ns=list(range(width)))

    plan = Plan(name)
    nums = plan.add(numbers)
    plan.map(body, over=nums.out.ns, item="n", max_items=width)
    return plan


async def test_every_ready_node_is_dispatched_at_once(rt: Runtime) -> None:
    width = 20
    barrier = asyncio.Barrier(width)

    @node("meet")
    async def meet(ctx: NodeContext, inputs: N) -> N:
        # Completes only if all `width` bodies are running at the same time.
        await asyncio.wait_for(barrier.wait(), timeout=10)
        return inputs

    state = await rt.start(fan(meet, width))
    assert state.status == "succeeded"
    assert [state.nodes[f"meet[{i}]"].outputs for i in range(width)] == [
        {"n": i} for i in range(width)
    ]


async def test_concurrency_limit_is_respected(rt: Runtime) -> None:
    running, peak = 0, 0

    @node("busy")
    async def busy(ctx: NodeContext, inputs: N) -> N:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return inputs

    state = await rt.start(fan(busy, 12), config=RunConfig(concurrency=3))
    assert state.status == "succeeded"
    assert peak == 3


async def test_retries_follow_backoff_and_record_reasons(home: Path) -> None:
    clock = ManualClock()
    rt = Runtime(home=home, clock=clock)

    @node("flaky", retry=Retry(max_attempts=4, backoff="exp", base_delay=2.0, jitter=0.1))
    async def flaky(ctx: NodeContext, inputs: Nothing) -> N:
        if ctx.attempt < 3:
            raise ConnectionError(f"boom {ctx.attempt}")
        return N(n=ctx.attempt)

    plan = Plan("retry")
    plan.add(flaky)
    state = await rt.start(plan)
    assert state.status == "succeeded"
    assert state.nodes["flaky"].outputs == {"n": 3}
    retries = [e for e in events(rt, state.run_id) if isinstance(e, RetryScheduled)]
    assert [(r.attempt, r.next_attempt) for r in retries] == [(1, 2), (2, 3)]
    assert [r.reason.type for r in retries] == ["ConnectionError", "ConnectionError"]
    assert [r.reason.message for r in retries] == ["boom 1", "boom 2"]
    assert 1.8 <= retries[0].delay <= 2.2
    assert 3.6 <= retries[1].delay <= 4.4
    # The scheduler waited exactly the recorded delays on the injected clock.
    assert clock.slept == [r.delay for r in retries]
    # Jitter is drawn from the run's recorded seed: recomputable, not ambient randomness.
    from orchestrator.runtime.transitions import unit_random

    rand = unit_random(state.seed, "flaky", 1)
    assert retries[0].delay == flaky.retry.delay(1, rand)
    rt.close()


async def test_non_retryable_error_fails_at_once(rt: Runtime) -> None:
    @node("picky", retry=Retry(max_attempts=5, on=(ConnectionError,)))
    async def picky(ctx: NodeContext, inputs: Nothing) -> N:
        raise KeyError("not retryable")

    plan = Plan("picky")
    plan.add(picky)
    state = await rt.start(plan)
    assert state.status == "failed"
    failed = [e for e in events(rt, state.run_id) if isinstance(e, NodeFailed)]
    assert [(f.node, f.attempt, f.cause, f.reason.type) for f in failed] == [
        ("picky", 1, "error", "KeyError")
    ]


async def test_exhausted_retries_are_recorded_as_such(home: Path) -> None:
    rt = Runtime(home=home, clock=ManualClock())

    @node("doomed", retry=Retry(max_attempts=2, base_delay=1))
    async def doomed(ctx: NodeContext, inputs: Nothing) -> N:
        raise RuntimeError(f"attempt {ctx.attempt}")

    plan = Plan("doomed")
    plan.add(doomed)
    state = await rt.start(plan)
    ns = state.nodes["doomed"]
    assert (ns.status, ns.attempt, ns.cause, str(ns.error)) == (
        "failed",
        2,
        "retries_exhausted",
        "RuntimeError: attempt 2",
    )
    rt.close()


async def test_timeout_fails_the_attempt_with_the_reason(rt: Runtime) -> None:
    @node("slow", timeout=0.05)
    async def slow(ctx: NodeContext, inputs: Nothing) -> N:
        await asyncio.sleep(30)
        return N(n=0)

    plan = Plan("slow")
    plan.add(slow)
    state = await rt.start(plan)
    ns = state.nodes["slow"]
    assert (ns.status, ns.cause) == ("failed", "timeout")
    assert ns.error is not None and ns.error.type == "NodeTimeout"
    assert "0.05s" in ns.error.message
    report = await asyncio.wait_for(rt.replay(state.run_id, plan), 5)
    assert report.ok, report.divergence


async def test_failure_fails_dependents_and_independent_branches_go_on(rt: Runtime) -> None:
    @node("source")
    async def source(ctx: NodeContext, inputs: Nothing) -> N:
        return N(n=1)

    @node("bad")
    async def bad(ctx: NodeContext, inputs: N) -> N:
        raise ValueError("broken input")

    @node("inc")
    async def inc(ctx: NodeContext, inputs: N) -> N:
        return N(n=inputs.n + 1)

    plan = Plan("branches")
    src = plan.add(source)
    b = plan.add(bad, n=src.out.n)
    plan.add(inc, name="after-bad", n=b.out.n)
    c = plan.add(inc, name="good-1", n=src.out.n)
    plan.add(inc, name="good-2", n=c.out.n)
    state = await rt.start(plan)
    assert state.status == "failed"
    assert state.nodes["good-2"].outputs == {"n": 3}
    after = state.nodes["after-bad"]
    assert (after.status, after.cause) == ("failed", "upstream")
    assert after.error is not None and "bad failed" in after.error.message
    assert after.attempt == 0  # never dispatched
    assert set(state.summary["failed"]) == {"bad", "after-bad"}
    assert state.summary["succeeded"] == 3


async def test_dispatch_only_after_upstream_completion_is_on_the_ledger(rt: Runtime) -> None:
    from tests.plans.basic import words_plan

    state = await rt.start(words_plan(), {"text": "a b c d"})
    assert state.status == "succeeded"
    seen: set[str] = set()
    for event in events(rt, state.run_id):
        if isinstance(event, NodeSucceeded):
            seen.add(event.node)
        if isinstance(event, NodeDispatched):
            if event.node.startswith("shout"):
                assert "split" in seen
            if event.node == "join":
                assert {f"shout[{i}]" for i in range(4)} <= seen
    assert state.nodes["join"].outputs == {"count": 4}
    assert [state.nodes[f"shout[{i}]"].outputs for i in range(4)] == [{"text": w} for w in "ABCD"]


async def test_map_over_nothing_and_over_too_much(rt: Runtime) -> None:
    @node("make")
    async def make(ctx: NodeContext, inputs: N) -> Ns:
        return Ns(ns=list(range(inputs.n)))

    @node("double")
    async def double(ctx: NodeContext, inputs: N) -> N:
        return N(n=inputs.n * 2)

    @node("total")
    async def total(ctx: NodeContext, inputs: Ns) -> N:
        return N(n=sum(inputs.ns))

    def build(count: int) -> Plan:
        plan = Plan("maps")
        m = plan.add(make, n=count)
        d = plan.map(double, over=m.out.ns, item="n", max_items=5)
        plan.add(total, ns=d.out.n)
        return plan

    empty = await rt.start(build(0))
    assert empty.status == "succeeded"
    assert empty.nodes["total"].outputs == {"n": 0}
    full = await rt.start(build(5))
    assert full.nodes["total"].outputs == {"n": 20}
    over = await rt.start(build(6))
    assert over.status == "failed"
    assert over.nodes["double"].cause == "map_too_large"
    assert "6 items exceeds max_items 5" in str(over.nodes["double"].error)
    assert over.nodes["total"].cause == "upstream"


async def test_pause_drains_in_flight_nodes_then_parks_and_resume_finishes(
    rt: Runtime, tmp_path: Path
) -> None:
    from tests.plans.basic import gated_plan

    gate = tmp_path / "gate"
    plan = gated_plan()
    started: list[str] = []
    task = asyncio.ensure_future(rt.start(plan, {"path": str(gate)}, on_start=started.append))
    while not started:
        await asyncio.sleep(0.01)
    run_id = started[0]
    while rt.state(run_id).nodes["wait-for-file"].status != "running":
        await asyncio.sleep(0.01)
    rt.pause(run_id)
    async with asyncio.timeout(10):  # the pause is on record while the node still works
        while (pausing := rt.state(run_id)).status == "running":
            await asyncio.sleep(0.01)
    assert pausing.nodes["wait-for-file"].status == "running"
    assert not task.done()
    gate.write_text("hello")
    parked = await asyncio.wait_for(task, 10)
    assert parked.status == "parked"
    assert parked.nodes["wait-for-file"].status == "succeeded"
    assert parked.nodes["after"].status == "pending"  # nothing new dispatched while pausing
    evs = events(rt, run_id)
    assert RunState.fold(evs).status == "parked"
    ends = [e for e in evs if isinstance(e, NodeSucceeded | RunParked)]
    assert [(e.kind, getattr(e, "node", "")) for e in ends[-2:]] == [
        ("NodeSucceeded", "wait-for-file"),
        ("RunParked", ""),
    ], "pause must let the in-flight node finish first"
    done = await rt.resume(run_id, plan)
    assert done.status == "succeeded"
    assert done.nodes["after"].outputs == {"count": 5}
    assert done.nodes["before"].attempt == 1


async def test_state_is_a_pure_fold_of_the_ledger(rt: Runtime) -> None:
    from tests.plans.basic import words_plan

    state = await rt.start(words_plan(), {"text": "x y"})
    folded = RunState.fold(events(rt, state.run_id))
    assert folded.outputs() == state.outputs()
    assert folded.counts() == state.counts()
    assert folded.summary == state.summary
    assert folded.status == state.status == "succeeded"


async def test_bad_inputs_are_refused_before_anything_is_written(rt: Runtime) -> None:
    from orchestrator.errors import InputError
    from tests.plans.basic import words_plan

    with pytest.raises(InputError, match="text"):
        await rt.start(words_plan(), {"wrong": "x"})
    assert rt.store.runs() == []


async def test_a_failed_ledger_write_stops_the_run_even_if_the_body_swallows_it(
    home: Path,
) -> None:
    from orchestrator.errors import LedgerError
    from orchestrator.ledger.sqlite import SqliteLedgerStore

    store = SqliteLedgerStore(home / "ledger.db")

    def fill_the_disk() -> str:
        # A real SQLITE_FULL: cap this connection's file at the pages it already has.
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")
        return "full"

    @node("stubborn")
    async def stubborn(ctx: NodeContext, inputs: Nothing) -> N:
        await ctx.tool("fill", fill_the_disk)
        # A careless body swallows the error; it must not get to finish on a lost journal.
        with contextlib.suppress(Exception):
            await ctx.tool("big", lambda: "x" * 200_000)
        return N(n=2)

    plan = Plan("stubborn")
    plan.add(stubborn)
    rt = Runtime(home=home, ledger=store)
    with pytest.raises(LedgerError, match="full"):
        await rt.start(plan)
    run_id = rt.store.runs()[-1].run_id
    rt.close()
    with Runtime(home=home) as fresh:  # a new connection has no page cap
        durable = fresh.state(run_id)
        assert durable.nodes["stubborn"].status == "running"
        assert [e.request["name"] for e in durable.nodes["stubborn"].journal] == ["fill"]
        done = await fresh.resume(run_id, plan)
        assert done.status == "succeeded"
        assert fresh.verify(run_id).ok


@needs("bwrap")
async def test_ctx_vm_is_the_sandbox_door(home: Path) -> None:
    @node("vm-user", effects={"fs"})
    async def vm_user(ctx: NodeContext, inputs: Nothing) -> N:
        await ctx.vm.write("n.txt", "41")
        got = await ctx.vm.exec(["sh", "-c", "echo $(( $(cat n.txt) + 1 ))"], check=True)
        assert await ctx.vm.read("n.txt") == "41"
        return N(n=int(got.stdout))

    plan = Plan("vm")
    plan.add(vm_user)
    with Runtime(home=home, sandbox="bwrap") as rt:
        state = await rt.start(plan)
        assert state.status == "succeeded"
        assert state.nodes["vm-user"].outputs == {"n": 42}
        kinds = [e.effect for e in state.nodes["vm-user"].journal]
        assert kinds == ["write", "exec", "read"]


class Flag(BaseModel):
    path: str


@node("publish", effects={"fs"}, retry=Retry(max_attempts=2, base_delay=0, exhausted="park"))
async def publish_when_writable(ctx: NodeContext, inputs: Flag) -> N:
    ok = await ctx.tool("look", lambda: Path(inputs.path).exists())
    if not ok:
        raise PermissionError(f"{inputs.path} is missing")
    return N(n=1)


@node("after-publish")
async def after_publish(ctx: NodeContext, inputs: N) -> N:
    return N(n=inputs.n + 1)


@node("measured")
async def measured(ctx: NodeContext, inputs: Flag) -> Flag:
    return inputs


def parking_plan() -> Plan:
    plan = Plan("parking", inputs=Flag)
    first = plan.add(measured, path=plan.input("path"))
    published = plan.add(publish_when_writable, path=first.out.path)
    plan.add(after_publish, n=published.out.n)
    return plan


async def test_a_node_that_parks_on_failure_leaves_the_run_resumable(
    rt: Runtime, tmp_path: Path
) -> None:
    flag = tmp_path / "writable"
    plan = parking_plan()
    parked = await rt.start(plan, {"path": str(flag)})
    assert parked.status == "parked"
    assert parked.nodes["measured"].status == "succeeded"
    assert parked.nodes["publish"].status == "retrying"
    assert parked.nodes["publish"].attempt == 2
    assert parked.nodes["after-publish"].status == "pending"
    run_id = parked.run_id
    evs = events(rt, run_id)
    assert not any(isinstance(e, NodeFailed) for e in evs)
    assert [e.reason for e in evs if isinstance(e, RunParked)] == [
        "publish failed; fix the cause, then resume the run"
    ]
    assert (await rt.replay(run_id, plan)).ok

    # resumed before the cause is fixed: one more attempt, parked again
    again = await rt.resume(run_id, plan)
    assert (again.status, again.nodes["publish"].attempt) == ("parked", 3)

    flag.write_text("")
    done = await rt.resume(run_id, plan)
    assert done.status == "succeeded"
    assert done.nodes["after-publish"].outputs == {"n": 2}
    evs = events(rt, run_id)
    resumed_at = max(i for i, e in enumerate(evs) if e.kind == "RunResumed")
    rerun = [e.node for e in evs[resumed_at:] if isinstance(e, NodeDispatched)]
    assert rerun == ["publish", "after-publish"]  # what succeeded before is not run again
    assert sum(isinstance(e, NodeDispatched) and e.node == "measured" for e in evs) == 1
    report = await rt.replay(run_id, plan)
    assert report.ok, report.divergence
