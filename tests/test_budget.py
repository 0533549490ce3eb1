"""Receipted budgets: reservations, refusals before dispatch and before a model call, the
drain and signed abort at the ceiling, and resuming with a fresh envelope."""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from orchestrator import Budget, NodeContext, Plan, Retry, RunConfig, Runtime, define_node
from orchestrator.budget import ModelPrice, Prices
from orchestrator.errors import ConfigError, PlanInvalid, RunStateError
from orchestrator.ledger.events import (
    BudgetOverrun,
    BudgetRefused,
    BudgetReplaced,
    BudgetReserved,
    CheckpointTaken,
    EffectRecorded,
    NodeDispatched,
    NodeFailed,
    NodeResumed,
    NodeSucceeded,
    ReceiptIssued,
    RunAborted,
    RunResumed,
    RunStarted,
    abort_payload,
    decode,
)
from orchestrator.ledger.state import RunState
from orchestrator.signing import verify
from tests.backends import needs
from tests.conftest import PLANS, cli
from tests.crashing import processes_with
from tests.llm_peers import Peer
from tests.plans.gated import BURN_SCRIPT, asking_plan, burning_plan
from tests.plans.overrun import TALK_SCRIPT, crunching_plan

GATED = PLANS / "gated.py"
OVERRUN = PLANS / "overrun.py"
# Expensive on purpose, so spend ceilings bite: $0.0001 per input, $0.0003 per output token.
PRICES = Prices(
    models={"scripted/*": ModelPrice(input_per_mtok=100, output_per_mtok=300)},
    compute_h_usd=0.0,
)
EPS = 1e-9


def events_of(rt: Runtime, run_id: str) -> list[Any]:
    return [decode(r.body) for r in rt.store.read(run_id)]


def script_file(where: Path, lines: list[dict[str, Any]]) -> Path:
    path = where / "script.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def fits(used: Budget, ceiling: Budget) -> bool:
    """``used`` within ``ceiling`` in tokens and spend (up to float rounding)."""
    return used.tokens <= ceiling.tokens and used.spend_usd <= ceiling.spend_usd + EPS


# ---- 1. property: usage never passes the ceiling ------------------------------------------


class Call(BaseModel):
    max_tokens: int
    pad: int
    input_tokens: int
    output_tokens: int


class Job(BaseModel):
    tag: str
    calls: list[Call]
    fail_first: int = 0


class Work(BaseModel):
    job: Job
    items: list[Job] = []
    after: Any = None


class Done(BaseModel):
    tag: str
    items: list[Job]


def prompt_of(tag: str, k: int, pad: int) -> str:
    return f"<{tag}#{k}>" + "." * pad


async def work(ctx: NodeContext, inputs: Work) -> Done:
    """Makes the job's model calls, then fails if this attempt is one of its first few."""
    job = inputs.job
    for k, call in enumerate(job.calls):
        await ctx.llm.complete(prompt_of(job.tag, k, call.pad), max_tokens=call.max_tokens)
    if ctx.attempt <= job.fail_first:
        raise RuntimeError(f"{job.tag}: attempt {ctx.attempt} fails on purpose")
    return Done(tag=job.tag, items=inputs.items)


@dataclass
class NodeDraw:
    jobs: list[Job]  # one for a plain node, the items for a mapped one
    budget: Budget
    attempts: int
    max_items: int = 0


@dataclass
class Segment:
    plain: NodeDraw
    mapped: NodeDraw | None
    after_previous: bool


@st.composite
def calls(draw: st.DrawFn) -> Call:
    max_tokens = draw(st.integers(1, 120))
    pad = draw(st.integers(0, 60))
    bound = len(prompt_of("j00", 0, pad).encode()) + 16  # the request's max_input_tokens
    # usage up to what the call may cost at most: it may still not fit the allowance
    return Call(
        max_tokens=max_tokens,
        pad=pad,
        input_tokens=draw(st.just(bound) | st.integers(0, bound)),
        output_tokens=draw(st.just(max_tokens) | st.integers(0, max_tokens)),
    )


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    return Job(
        tag="",
        calls=draw(st.lists(calls(), max_size=3)),
        fail_first=draw(st.sampled_from([0, 0, 1, 1, 2])),
    )


def attempt_bound(job: Job) -> Budget:
    """What the job's calls may cost at most (the bound each call is checked against)."""
    price = PRICES.for_model("scripted/m")
    tokens, spend = 0, 0.0
    for call in job.calls:
        bound = len(prompt_of(job.tag or "j00", 0, call.pad).encode()) + 16
        tokens += bound + call.max_tokens
        spend += (bound * price.input_per_mtok + call.max_tokens * price.output_per_mtok) / 1e6
    return Budget(tokens=tokens, spend_usd=spend)


@st.composite
def node_draws(draw: st.DrawFn, mapped: bool) -> NodeDraw:
    attempts = draw(st.integers(1, 3))
    if mapped:
        items = draw(st.lists(jobs(), max_size=3))
        max_items = max(1, len(items) + draw(st.sampled_from([0, 0, 1])))
    else:
        items, max_items = [draw(jobs())], 0
    # a declared worst case around what the calls may cost: short of it (a call is
    # refused part-way), about right, or generous; now and then nothing at all
    need = Budget()
    for job in items:
        most = attempt_bound(job)
        need = Budget(
            tokens=max(need.tokens, most.tokens), spend_usd=max(need.spend_usd, most.spend_usd)
        )
    factor = draw(st.sampled_from([0.0, 0.6, 1.0, 1.0, 1.0, 1.0, 1.5]))
    budget = Budget(
        tokens=math.ceil(need.tokens * factor),
        spend_usd=round(need.spend_usd * factor * draw(st.sampled_from([0.6, 1.0, 1.0, 1.2])), 6),
    )
    return NodeDraw(items, budget, attempts, max_items=max_items)


@st.composite
def segments(draw: st.DrawFn) -> list[Segment]:
    found = []
    for _ in range(draw(st.integers(1, 3))):
        plain = draw(node_draws(mapped=False))
        mapped = draw(st.none() | node_draws(mapped=True))
        found.append(Segment(plain, mapped, draw(st.booleans())))
    n = 0
    for seg in found:  # unique tags, so each call has its own scripted answer
        for job in seg.plain.jobs + (seg.mapped.jobs if seg.mapped else []):
            job.tag, n = f"j{n:02d}", n + 1
    return found


def build(segs: list[Segment]) -> tuple[Plan, list[dict[str, Any]]]:
    """The plan, and the scripted answers carrying each call's drawn usage."""
    plan = Plan("random")
    lines = []
    previous: Any = None
    for i, seg in enumerate(segs):
        spec = define_node(
            f"p{i}",
            work,
            effects={"llm"},
            budget=seg.plain.budget,
            retry=Retry(max_attempts=seg.plain.attempts, backoff="none", base_delay=0),
        )
        wiring: dict[str, Any] = {
            "job": seg.plain.jobs[0].model_dump(),
            "items": [j.model_dump() for j in seg.mapped.jobs] if seg.mapped else [],
        }
        if seg.after_previous and previous is not None:
            wiring["after"] = previous
        handle = plan.add(spec, **wiring)
        previous = handle.out.tag
        if seg.mapped is not None:
            mapped = define_node(
                f"m{i}",
                work,
                effects={"llm"},
                budget=seg.mapped.budget,
                retry=Retry(max_attempts=seg.mapped.attempts, backoff="none", base_delay=0),
            )
            each = plan.map(
                mapped, over=handle.out.items, item="job", max_items=seg.mapped.max_items
            )
            previous = each.out.tag
        for job in seg.plain.jobs + (seg.mapped.jobs if seg.mapped else []):
            for k, call in enumerate(job.calls):
                lines.append(
                    {
                        "text": f"answer {job.tag}#{k}",
                        "match": f"<{job.tag}#{k}>",
                        "input_tokens": call.input_tokens,
                        "output_tokens": call.output_tokens,
                    }
                )
    lines.append({"text": "never matched", "match": "no prompt says this"})
    return plan, lines


def check_history(events: list[Any]) -> None:
    """Invariants over the whole ledger, whatever happened, envelope by envelope."""
    started = events[0]
    assert isinstance(started, RunStarted)
    state = RunState.start(started)
    refused_since: BudgetRefused | BudgetOverrun | None = None
    previous: Any = started
    for event in events[1:]:
        if isinstance(previous, NodeDispatched):  # every dispatch reserves at once
            assert isinstance(event, BudgetReserved), event
            assert (event.node, event.attempt) == (previous.node, previous.attempt)
        previous = event
        state.apply(event)
        ceiling = state.book.ceiling
        assert ceiling is not None
        # usage in this envelope plus every live reservation never passes the ceiling,
        # so nothing was ever dispatched whose reservation did not fit
        committed = state.book.committed()
        assert fits(committed, ceiling), (event, committed, ceiling)
        assert fits(state.book.epoch.as_budget(), ceiling)
        for node, meter in state.book.nodes.items():  # each attempt within its reservation
            if meter.reserved is not None:
                assert fits(meter.attempt.as_budget(), meter.reserved), (node, meter)
        if isinstance(event, BudgetRefused):
            assert event.needed.over(event.remaining), event
            assert event.over == event.needed.over(event.remaining)
            refused_since = event
        elif isinstance(event, BudgetOverrun):  # a node used up its own reservation
            assert event.reason.type == "BudgetExceeded", event
            refused_since = refused_since or event
        elif isinstance(event, NodeDispatched):
            assert refused_since is None, f"{event.node} dispatched after {refused_since}"
        elif isinstance(event, BudgetReserved):
            assert state.book.nodes[event.node].reserved == event.amount
        elif isinstance(event, RunResumed):
            refused_since = None
        elif isinstance(event, RunAborted):
            assert refused_since is not None
            assert verify(
                event.key,
                abort_payload(state.run_id, event.ts, event.reason, event.last_gate),
                event.signature,
            )
        elif isinstance(event, NodeFailed):
            assert event.reason.type in (
                "BudgetExceeded",
                "RuntimeError",
                "UpstreamFailed",
                "Unreachable",
            ), event.reason


async def run_scenario(
    home: Path, segs: list[Segment], extra: tuple[int, int], fresh: list[tuple[int, int]]
) -> str:
    plan, lines = build(segs)
    worst = plan.worst_case_budget()
    ceiling = Budget(
        tokens=max(0, worst.tokens + extra[0]),
        compute_h=1.0,
        spend_usd=max(0.0, worst.spend_usd + extra[1] / 1000),
    )
    script = script_file(home.parent, lines)
    config = RunConfig(
        budget=ceiling, prices=PRICES, llm=f"scripted:{script}", model="m", checkpoint_interval=600
    )
    problems = plan.validate(config)
    assert bool(problems) == bool(worst.over(ceiling))
    with Runtime(home=home) as rt:
        if problems:
            assert [p.kind for p in problems] == ["over_budget"]
            with pytest.raises(PlanInvalid):
                await rt.start(plan, config=config)
            assert rt.store.runs() == []
            return "invalid"
        state = await rt.start(plan, config=config)
        outcome = state.status
        assert state.status in ("succeeded", "failed", "aborted")
        assert fits(state.book.total.as_budget(), ceiling)
        events = events_of(rt, state.run_id)
        check_history(events)
        for tokens, spend in fresh:
            if state.status != "aborted":
                break
            assert [type(e) for e in events[-2:]] == [RunAborted, CheckpointTaken]
            with pytest.raises(RunStateError, match="fresh envelope"):
                await rt.resume(state.run_id, plan)  # not without a budget
            envelope = Budget(tokens=tokens, compute_h=1.0, spend_usd=spend / 1000)
            state = await rt.resume(state.run_id, plan, budget=envelope)
            outcome += f" -> {state.status}"
            events = events_of(rt, state.run_id)
            check_history(events)
            replaced = max(i for i, e in enumerate(events) if isinstance(e, BudgetReplaced))
            since = RunState.fold(events)
            assert since.book.ceiling == envelope
            assert fits(since.book.epoch.as_budget(), envelope)
            # usage since the BudgetReplaced, summed from the journal, is what the book says
            spent = sum(
                e.usage.get("input_tokens", 0) + e.usage.get("output_tokens", 0)
                for e in events[replaced:]
                if isinstance(e, EffectRecorded) and e.effect == "llm" and e.usage
            )
            assert spent == since.book.epoch.tokens <= envelope.tokens
        report = await rt.replay(state.run_id, plan)
        assert report.ok, report.divergence
    return outcome


@settings(
    max_examples=25,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    segs=segments(),
    extra=st.tuples(
        st.integers(-20, 60) | st.integers(0, 1000), st.integers(-2, 20) | st.integers(0, 200)
    ),
    fresh=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 300)), min_size=1, max_size=2),
)
def test_usage_never_passes_the_ceiling(
    segs: list[Segment], extra: tuple[int, int], fresh: list[tuple[int, int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = asyncio.run(run_scenario(Path(tmp) / "home", segs, extra, fresh))
    hypothesis.event(outcome)  # pytest --hypothesis-show-statistics shows how the runs ended


# ---- 2. pre-flight and dispatch-time refusal ------------------------------------------------


def budget_arg(b: Budget) -> str:
    return f"tokens={b.tokens},compute_h={b.compute_h},spend={b.spend_usd}"


def test_plan_over_its_ceiling_is_refused_before_it_starts(home: Path, tmp_path: Path) -> None:
    plan = asking_plan(4)
    assert plan.worst_case_budget() == Budget(tokens=1600, spend_usd=0.04)
    tight = Budget(tokens=1000, compute_h=1, spend_usd=1)
    problems = plan.validate(RunConfig(budget=tight))
    assert [p.kind for p in problems] == ["over_budget"]
    assert "tokens 1600 > 1000" in problems[0].message
    ran = cli(
        home,
        "run",
        f"{GATED}:asking",
        "--input",
        'prompts:=["a"]',
        "--budget",
        budget_arg(tight),
        "--llm",
        f"scripted:{script_file(tmp_path, BURN_SCRIPT)}",
        "--model",
        "m",
    )
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "over_budget" in ran.stdout + ran.stderr
    assert "tokens 1600 > 1000" in ran.stdout + ran.stderr
    with Runtime(home=home) as rt:
        assert rt.store.runs() == []  # nothing was recorded


def aborted_run(home: Path, tmp_path: Path) -> tuple[str, Any]:
    """Run ``burning`` under a ceiling of exactly its worst case, through the CLI."""
    ceiling = Budget(tokens=500, compute_h=1, spend_usd=0.01)
    ran = cli(
        home,
        "run",
        f"{GATED}:burning",
        "--budget",
        budget_arg(ceiling),
        "--llm",
        f"scripted:{script_file(tmp_path, BURN_SCRIPT)}",
        "--model",
        "m",
    )
    return ran.stderr.split("run ", 1)[1].split()[0], ran


def test_a_ceiling_names_any_of_its_dimensions_in_the_flags_words(
    home: Path, tmp_path: Path
) -> None:
    from orchestrator.budget import UNLIMITED_AMOUNT, UNLIMITED_TOKENS
    from orchestrator.cli.options import _parse_budget

    assert _parse_budget("spend=5") == Budget(
        tokens=UNLIMITED_TOKENS, compute_h=UNLIMITED_AMOUNT, spend_usd=5
    )
    assert _parse_budget("tokens=2e3, compute_h=1") == Budget(
        tokens=2000, compute_h=1, spend_usd=UNLIMITED_AMOUNT
    )
    for bad, says in [("spend=-1", "spend: "), ("spend=x", "spend='x'"), ("cows=3", "cows")]:
        with pytest.raises(ConfigError) as refused:
            _parse_budget(bad)
        assert says in str(refused.value) and "spend_usd" not in str(refused.value)
    # only tokens limited: the run aborts on tokens alone, and says so in the flag's words
    ran = cli(
        home,
        "run",
        f"{GATED}:burning",
        "--budget",
        "tokens=500",
        "--llm",
        f"scripted:{script_file(tmp_path, BURN_SCRIPT)}",
        "--model",
        "m",
    )
    assert ran.returncode == 4, ran.stdout + ran.stderr
    assert "then_ask needs tokens 400 > 380" in ran.stdout


def test_a_node_that_no_longer_fits_is_refused_and_the_run_aborts_signed(
    home: Path, tmp_path: Path
) -> None:
    run_id, ran = aborted_run(home, tmp_path)
    assert ran.returncode == 4, ran.stdout + ran.stderr
    assert "aborted at its budget ceiling" in ran.stdout
    assert f" resume {run_id} --budget" in ran.stdout
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
        key = rt.signer_public(run_id)
    kinds = [e.kind for e in events]
    # burn: attempt 1 (60 tokens, fails), attempt 2 (60 tokens) = 120 of its 100; then_ask
    # needs 400 of the 380 left
    refused = [e for e in events if isinstance(e, BudgetRefused)]
    assert len(refused) == 1
    assert refused[0].node == "then_ask" and refused[0].attempt == 1
    assert refused[0].needed == Budget(tokens=400, spend_usd=0.01)
    assert refused[0].remaining == Budget(tokens=380, compute_h=1, spend_usd=0.01)
    assert refused[0].over == ["tokens 400 > 380"]
    assert not any(isinstance(e, NodeDispatched) and e.node == "then_ask" for e in events)
    reserved = [(e.node, e.attempt) for e in events if isinstance(e, BudgetReserved)]
    assert reserved == [("burn", 1), ("burn", 2)]
    aborted = [e for e in events if isinstance(e, RunAborted)]
    assert len(aborted) == 1
    abort = aborted[0]
    assert "then_ask needs tokens 400" in abort.reason and "tokens 400 > 380" in abort.reason
    assert abort.key == key
    assert verify(
        key, abort_payload(run_id, abort.ts, abort.reason, abort.last_gate), abort.signature
    )
    forged = abort_payload(run_id, abort.ts, abort.reason.replace("400", "4000"), abort.last_gate)
    assert not verify(key, forged, abort.signature)
    assert kinds[-2:] == ["RunAborted", "CheckpointTaken"]  # a final checkpoint after it
    assert isinstance(events[-1], CheckpointTaken) and events[-1].reason == "run aborted"
    assert "ReceiptIssued" in kinds[kinds.index("BudgetRefused") :]


# ---- 3. drain: an in-flight sandboxed node finishes before the abort ------------------------


def sandbox_processes(home: Path) -> list[str]:
    return [c for c in processes_with(str(home)) if "bwrap" in c or "runsc" in c or "agent" in c]


@needs("bwrap")
async def test_in_flight_sandboxed_node_drains_before_the_abort(home: Path, tmp_path: Path) -> None:
    script = script_file(tmp_path, BURN_SCRIPT)
    config = RunConfig(
        budget=Budget(tokens=500, compute_h=0.011, spend_usd=0.01),
        llm=f"scripted:{script}",
        model="m",
        sandbox="bwrap",
    )
    seen: list[str] = []

    def watch(event: Any) -> None:
        if event.kind in ("NodeDispatched", "EffectRecorded") and event.node == "nap":
            seen.extend(sandbox_processes(home))

    with Runtime(home=home) as rt:
        state = await rt.start(burning_plan(with_nap=True), config=config, listeners=(watch,))
        events = events_of(rt, state.run_id)
    assert state.status == "aborted"
    kinds = [(e.kind, getattr(e, "node", None)) for e in events]
    refused = kinds.index(("BudgetRefused", "then_ask"))
    dispatched = kinds.index(("NodeDispatched", "nap"))
    succeeded = kinds.index(("NodeSucceeded", "nap"))
    aborted = kinds.index(("RunAborted", None))
    # nap was dispatched, then_ask refused at the same moment, and nap ran on to the end
    assert dispatched < refused < succeeded < aborted
    assert ("SandboxMetered", "nap") in kinds[refused:aborted]
    nap_done = events[succeeded]
    assert isinstance(nap_done, NodeSucceeded) and nap_done.outputs == {"code": 0}
    assert state.nodes["nap"].compute_h > 0
    assert state.nodes["then_ask"].status == "pending"
    assert isinstance(events[-1], CheckpointTaken)
    assert seen, "the sandbox was never seen running (the drain would prove nothing)"
    assert sandbox_processes(home) == []


# ---- 4. resume with a fresh budget ----------------------------------------------------------


def test_resume_with_a_fresh_budget_finishes_the_run(home: Path, tmp_path: Path) -> None:
    run_id, ran = aborted_run(home, tmp_path)
    assert ran.returncode == 4, ran.stdout + ran.stderr
    refused = cli(home, "resume", run_id)
    assert refused.returncode == 1
    assert "budget ceiling" in refused.stderr and "--budget" in refused.stderr
    assert "Traceback" not in refused.stderr
    negative = cli(home, "resume", run_id, "--budget", "tokens=-5")
    assert negative.returncode == 1 and "--budget 'tokens=-5': tokens: " in negative.stderr
    with Runtime(home=home) as rt:
        assert rt.state(run_id).status == "aborted"  # neither attempt wrote anything
        before = len(rt.store.read(run_id))
    resumed = cli(
        home, "resume", "--json", run_id, "--budget", "tokens=1000,compute_h=1,spend=0.05"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["nodes"]["then_ask"]["outputs"] == {
        "text": "answered",
        "tokens": 80,
    }
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
        state = rt.state(run_id)
    after = events[before:]
    assert [e.kind for e in after[:2]] == ["RunResumed", "BudgetReplaced"]
    replaced = after[1]
    assert isinstance(replaced, BudgetReplaced)
    assert replaced.ceiling == Budget(tokens=1000, compute_h=1, spend_usd=0.05)
    assert state.status == "succeeded"
    assert state.book.total.tokens == 200  # 120 before the abort, 80 after
    assert state.book.epoch.tokens == 80
    assert state.book.remaining() == Budget(tokens=920, compute_h=1, spend_usd=0.05)
    assert [e.node for e in after if isinstance(e, NodeDispatched)] == ["then_ask"]
    replayed = cli(home, "replay", run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay OK" in replayed.stdout
    again = cli(home, "resume", run_id, "--budget", "tokens=1,compute_h=1,spend=1")
    assert again.returncode == 1 and "already ended" in again.stderr


# ---- 5. a model call over the allowance is never sent ----------------------------------------


async def test_a_call_over_the_allowance_is_refused_before_it_is_sent(
    rt: Runtime, anthropic_peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    monkeypatch.setenv("ASK_MAX", "1000")  # ask declares 400 tokens; 1000 may come back
    config = RunConfig(llm=f"anthropic@{anthropic_peer.base_url}", model="claude-haiku-4-5")
    state = await rt.start(asking_plan(2), {"prompts": ["hello", "there"]}, config)
    assert state.status == "failed"
    assert anthropic_peer.requests == []
    for item, prompt in (("ask[0]", "hello"), ("ask[1]", "there")):
        error = state.nodes[item].error
        assert error is not None and error.type == "BudgetExceeded"
        bound = len(prompt) + 16 + 1000
        assert "refused a call to claude-haiku-4-5 before sending it" in error.message
        assert f"up to {bound} tokens, 400 left of 400" in error.message
        assert "lower max_tokens" in error.message
        assert state.nodes[item].journal == []
    assert state.book.total.tokens == 0
    # under a ceiling, the limit is the reservation: the same call is refused the same way
    monkeypatch.setenv("ASK_MAX", "390")
    ceiling = RunConfig(
        llm=config.llm, model=config.model, budget=Budget(tokens=800, compute_h=1, spend_usd=1)
    )
    state = await rt.start(asking_plan(2), {"prompts": ["hello", "there"]}, ceiling)
    assert state.status == "failed"
    assert anthropic_peer.requests == []
    message = state.nodes["ask[0]"].error.message  # type: ignore[union-attr]
    assert "up to 411 tokens, 400 left of 400" in message
    # and one that fits is sent
    monkeypatch.setenv("ASK_MAX", "100")
    state = await rt.start(asking_plan(2), {"prompts": ["hello", "there"]}, ceiling)
    assert state.status == "succeeded", state.summary
    assert len(anthropic_peer.requests) == 2


async def test_scripted_calls_are_checked_at_the_price_they_are_charged(
    rt: Runtime, tmp_path: Path
) -> None:
    """The scripted provider answers as "scripted/<model>" and spend is charged under that
    label, so the check before sending prices the call the same way: otherwise a call
    that looks cheap could overspend, and (at the default price of 0) a free one be refused.
    """
    script = script_file(tmp_path, [{"text": "x", "input_tokens": 18, "output_tokens": 40}] * 2)
    ceiling = Budget(tokens=500, compute_h=1, spend_usd=0.05)
    pricey = Prices(models={"scripted/*": ModelPrice(input_per_mtok=1000, output_per_mtok=1000)})
    config = RunConfig(budget=ceiling, prices=pricey, llm=f"scripted:{script}", model="m")
    # burn reserves 100 tokens and $0: "burn docs" (at most 25 tokens) + 40 may cost $0.065
    state = await rt.start(burning_plan(), config=config)
    assert state.status == "failed"
    error = state.nodes["burn"].error
    assert error is not None and error.type == "BudgetExceeded"
    assert "refused a call to scripted/m before sending it: up to $0.065000" in error.message
    assert state.nodes["burn"].journal == [] and state.book.total.spend_usd == 0
    # at the default prices scripted calls are free, so they fit a reservation of $0
    state = await rt.start(burning_plan(), config=config.model_copy(update={"prices": Prices()}))
    assert state.nodes["burn"].status == "succeeded"
    assert state.book.total.tokens == 2 * 58 and state.book.total.spend_usd == 0


# ---- unknown models: priced at the fallback, said so, recorded -----------------------------


def test_a_model_without_a_price_is_warned_about_once_and_recorded(
    home: Path, tmp_path: Path, openai_peer: Peer
) -> None:
    openai_peer.input_tokens, openai_peer.output_tokens = 10, 20
    run = [
        "run",
        f"{GATED}:asking",
        "--input",
        'prompts:=["a", "b", "c"]',
        "--llm",
        f"openai@{openai_peer.base_url}",
        "--model",
        "llama-local",
        "--json",
    ]
    env = {"OPENAI_API_KEY": "sk-local"}
    ran = cli(home, *run, env=env)
    assert ran.returncode == 0, ran.stderr
    warning = " ".join(ran.stderr.split())
    assert warning.count("no price is known for model 'llama-local'") == 1, ran.stderr
    assert "fallback list price ($15 in, $75 out" in warning and "--prices" in warning
    run_id = json.loads(ran.stdout)["run_id"]
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
    calls = [e for e in events if isinstance(e, EffectRecorded) and e.effect == "llm"]
    assert len(calls) == 3 and all(c.usage["fallback_price"] == 1.0 for c in calls)
    assert calls[0].usage["spend_usd"] == pytest.approx((10 * 15 + 20 * 75) / 1e6)
    [receipt] = [e for e in events if isinstance(e, ReceiptIssued)]
    assert receipt.body["fallback_priced"] == ["llama-local"]

    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {"llama-*": {"input_per_mtok": 0, "output_per_mtok": 0}}}')
    priced = cli(home, *run, "--prices", str(prices), env=env)
    assert priced.returncode == 0, priced.stderr
    assert "no price is known" not in priced.stderr
    with Runtime(home=home) as rt:
        events = events_of(rt, json.loads(priced.stdout)["run_id"])
    [receipt] = [e for e in events if isinstance(e, ReceiptIssued)]
    assert "fallback_priced" not in receipt.body
    help_text = " ".join(cli(home, "run", "--help").stdout.split())
    assert '"input_per_mtok"' in help_text and "fallback" in help_text


# ---- 6. a node that uses up its own allowance aborts the run, resumably ----------------------


def signed_abort(rt: Runtime, run_id: str, events: list[Any]) -> RunAborted:
    aborted = [e for e in events if isinstance(e, RunAborted)]
    assert len(aborted) == 1
    abort = aborted[0]
    key = rt.signer_public(run_id)
    assert key is not None and abort.key == key
    payload = abort_payload(run_id, abort.ts, abort.reason, abort.last_gate)
    assert verify(key, payload, abort.signature)
    return abort


def test_a_node_that_uses_up_its_tokens_aborts_signed_and_resumes_without_repeats(
    home: Path, tmp_path: Path
) -> None:
    tally = tmp_path / "tally"
    envelope = "tokens=1000,compute_h=1,spend=1"
    ran = cli(
        home,
        "run",
        f"{OVERRUN}:talking",
        "--input",
        f"tally={tally}",
        "--budget",
        envelope,
        "--llm",
        f"scripted:{script_file(tmp_path, TALK_SCRIPT)}",
        "--model",
        "m",
    )
    assert ran.returncode == 4, ran.stdout + ran.stderr
    assert "talk used up its own tokens" in ran.stdout
    run_id = ran.stderr.split("run ", 1)[1].split()[0]
    assert f" resume {run_id} --budget" in ran.stdout
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
        abort = signed_abort(rt, run_id, events)
        state = rt.state(run_id)
    overruns = [e for e in events if isinstance(e, BudgetOverrun)]
    assert [(e.node, e.attempt, e.over) for e in overruns] == [("talk", 1, ["tokens"])]
    assert overruns[0].reason.type == "BudgetExceeded"
    assert "node talk used up its own budget (tokens) in attempt 1" in abort.reason
    assert "refused a call to scripted/m" in abort.reason
    assert not any(isinstance(e, NodeFailed) for e in events)
    assert [e.kind for e in events][-2:] == ["RunAborted", "CheckpointTaken"]
    assert state.status == "aborted" and state.nodes["talk"].status == "running"
    assert tally.read_text().count("performed") == 1
    before = len(events)

    refused = cli(home, "resume", run_id)
    assert refused.returncode == 1 and "--budget" in refused.stderr
    resumed = cli(home, "resume", "--json", run_id, "--budget", envelope)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["nodes"]["echo"]["outputs"] == {"text": "one two"}
    assert tally.read_text().count("performed") == 1  # the tool call was served, not redone
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
        state = rt.state(run_id)
    after = events[before:]
    assert [e.kind for e in after[:4]] == [
        "RunResumed",
        "BudgetReplaced",
        "NodeResumed",
        "BudgetReserved",
    ]
    mark = after[2]
    assert isinstance(mark, NodeResumed) and (mark.node, mark.attempt) == ("talk", 1)
    assert mark.from_index == 2  # the mark and the first call are served from the journal
    talk_effects = [
        (e.index, e.effect) for e in events if isinstance(e, EffectRecorded) and e.node == "talk"
    ]
    assert talk_effects == [(0, "tool"), (1, "llm"), (2, "llm")]  # each performed once
    assert state.status == "succeeded"
    assert state.book.epoch.tokens == 71  # only the second call counts in the new envelope
    replayed = cli(home, "replay", run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay OK" in replayed.stdout


def test_a_renewal_that_the_fresh_envelope_cannot_hold_aborts_again(
    home: Path, tmp_path: Path
) -> None:
    tally = tmp_path / "tally"
    script = f"scripted:{script_file(tmp_path, TALK_SCRIPT)}"
    base = ("--budget", "tokens=1000,compute_h=1,spend=1", "--llm", script, "--model", "m")
    ran = cli(home, "run", f"{OVERRUN}:talking", "--input", f"tally={tally}", *base)
    assert ran.returncode == 4, ran.stdout + ran.stderr
    run_id = ran.stderr.split("run ", 1)[1].split()[0]
    small = cli(home, "resume", run_id, "--budget", "tokens=100,compute_h=1,spend=1")
    assert small.returncode == 4, small.stdout + small.stderr
    assert "talk needs tokens 120 > 100" in small.stdout
    again = cli(home, "resume", run_id, "--budget", "tokens=500,compute_h=1,spend=1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert tally.read_text().count("performed") == 1
    with Runtime(home=home) as rt:
        events = events_of(rt, run_id)
        assert [e.kind for e in events].count("RunAborted") == 2
    replayed = cli(home, "replay", run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr


@needs("bwrap")
async def test_a_node_that_uses_up_its_compute_aborts_and_resumes(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally = tmp_path / "tally"
    plan = crunching_plan()
    envelope = Budget(tokens=0, compute_h=0.01, spend_usd=1)
    config = RunConfig(budget=envelope, sandbox="bwrap")
    monkeypatch.setenv("CRUNCH_S", "30")
    with Runtime(home=home) as rt:
        state = await rt.start(plan, {"tally": str(tally)}, config)
        assert state.status == "aborted"
        run_id = state.run_id
        events = events_of(rt, run_id)
        abort = signed_abort(rt, run_id, events)
        assert "node crunch used up its own budget (compute_h) in attempt 1" in abort.reason
        assert "used the 0.0005 compute-hours it reserved" in abort.reason
        overrun = next(e for e in events if isinstance(e, BudgetOverrun))
        assert overrun.over == ["compute_h"]
        assert sandbox_processes(home) == []
        with pytest.raises(RunStateError, match="fresh envelope"):
            await rt.resume(run_id, plan)
        monkeypatch.setenv("CRUNCH_S", "0.1")
        state = await rt.resume(run_id, plan, budget=envelope)
        assert state.status == "succeeded", state.summary
        assert state.nodes["crunch"].outputs == {"code": 0}
        assert tally.read_text().count("performed") == 1
        report = await rt.replay(run_id, plan)
        assert report.ok, report.divergence
