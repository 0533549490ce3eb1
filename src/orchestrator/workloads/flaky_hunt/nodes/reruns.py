"""``rerun-planner`` splits the reruns into batches of recorded seeds; ``rerun-probe`` runs
the first batch and stops the hunt there when no run reached the test; ``flake-rerunner``
runs one of the other batches in a sandbox, each run a fresh process; ``flake-report``
gives per-test failure rates with 95% intervals and the failing seeds, and stops the hunt
when the test failed on every run (consistently failing, not flaky) unless it is hunted as
a regression."""

from __future__ import annotations

import random
import shlex
import textwrap
from collections import Counter

from pydantic import BaseModel

from orchestrator.agents import runners
from orchestrator.agents.budgets import worst_case
from orchestrator.agents.intake import Intake
from orchestrator.errors import ConsistentlyFailing, NoRunReachedTest
from orchestrator.node import node
from orchestrator.runtime.context import NodeContext
from orchestrator.workloads.flaky_hunt import stats
from orchestrator.workloads.flaky_hunt.ports import (
    Batch,
    Batches,
    BatchOut,
    BatchResult,
    ProbeOut,
    Report,
    ReportOut,
    RunOutcome,
)
from orchestrator.workloads.flaky_hunt.seeded_runs import failed_ids, run_seeds

EXCERPT_LINES = 15


class BatchPlanInputs(BaseModel):
    runs: int
    batch: int
    seed: int | None


@node("rerun-planner")
async def rerun_planner(ctx: NodeContext, inputs: BatchPlanInputs) -> Batches:
    """Split the reruns into batches, each with its own recorded seeds."""
    base = inputs.seed if inputs.seed is not None else int(await ctx.random() * 2**31)
    size = max(1, inputs.batch)
    # independent draws, not a progression: PYTHONHASHSEED feeds an LCG, and evenly
    # spaced seeds give correlated hash keys (a biased sample of the flake's rate)
    draw = random.Random(base)
    seeds = [draw.randrange(1, 4_294_967_295) for _ in range(max(0, inputs.runs))]
    return Batches(
        batches=[
            Batch(index=i // size, seeds=seeds[i : i + size]) for i in range(0, len(seeds), size)
        ]
    )


class RerunnerPorts(BaseModel):
    batch: Batch
    intake: Intake
    prepared_dir: str


@node(
    "flake-rerunner",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=900,
    budget=worst_case(900),
)
async def flake_rerunner(ctx: NodeContext, inputs: RerunnerPorts) -> BatchOut:
    """Run the test command once per seed of the batch, each in a fresh process."""
    return BatchOut(result=await _run_batch(ctx, inputs.intake, inputs.batch))


async def _run_batch(ctx: NodeContext, intake: Intake, batch: Batch) -> BatchResult:
    records = await run_seeds(ctx, intake, batch.seeds)
    runs = [
        RunOutcome(
            seed=r.seed,
            code=r.code,
            failed=failed_ids(intake, r),
            duration=r.duration,
            outcome=runners.classify(intake.runner, r.code, r.output_tail, r.timed_out),
        )
        for r in records
    ]
    # the first run that did not pass (a unittest run of no tests may still exit 0)
    pairs = zip(records, runs, strict=True)
    tail = next((r.output_tail for r, run in pairs if run.outcome != "passed"), "")
    return BatchResult(index=batch.index, runs=runs, tail=tail[-2000:])


class ProbeInputs(BaseModel):
    batches: list[Batch]
    intake: Intake
    prepared_dir: str


@node(
    "rerun-probe",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=900,
    budget=worst_case(900),
)
async def rerun_probe(ctx: NodeContext, inputs: ProbeInputs) -> ProbeOut:
    """Run the first batch; when none of its runs reached the test (command not found,
    tests not collected), stop the hunt there, naming the cause. The other batches come
    after it."""
    if not inputs.batches:
        return ProbeOut(first=BatchResult(index=0, runs=[], tail=""), rest=[])
    first = await _run_batch(ctx, inputs.intake, inputs.batches[0])
    if first.runs and all(run.outcome in runners.NOT_REACHED for run in first.runs):
        raise NoRunReachedTest(never_reached(inputs.intake, first))
    return ProbeOut(first=first, rest=inputs.batches[1:])


def never_reached(intake: Intake, first: BatchResult) -> str:
    """One paragraph: why no run of the first batch reached the test, with an excerpt."""
    runs = len(first.runs)
    outcomes = Counter(run.outcome for run in first.runs)
    codes = sorted({run.code for run in first.runs})
    cause = runners.cause(first.tail)
    if outcomes["command-not-found"] == runs:
        program = intake.argv[0] if intake.argv else "?"
        head = f"the test command could not run: `{program}`: command not found"
    else:
        head = "the tests could not be collected" + (f": `{cause}`" if cause else "")
    lines = [line for line in first.tail.splitlines() if line.strip()][-EXCERPT_LINES:]
    excerpt = textwrap.indent("\n".join(lines), "    ")
    return (
        f"{head} (all {runs} run(s) of the first batch, exit {', '.join(map(str, codes))}; "
        f"no later batch was run). Check --test ({shlex.join(intake.argv)}) and that the "
        f"project's test dependencies install. The first failing run's output ends:\n{excerpt}"
    )


class ReportInputs(BaseModel):
    first: BatchResult
    results: list[BatchResult]
    regression: bool = False


@node("flake-report")
async def flake_report(ctx: NodeContext, inputs: ReportInputs) -> ReportOut:
    """Per-test failure rates with 95% intervals, and the seeds of the failing runs."""
    results = [inputs.first, *inputs.results]
    runs = [run for result in results for run in result.runs]
    rates = stats.rates([run.failed for run in runs], len(runs))
    target = rates[0].test if rates else None
    failing = [run.seed for run in runs if target is not None and target in run.failed]
    sample = next((r.tail for r in results if r.tail), "")
    report = Report(
        runs=len(runs),
        failures=sum(1 for run in runs if run.failed),
        rates=rates,
        target=target,
        failing_seeds=failing,
        sample_output=sample,
    )
    await ctx.log("reruns", runs=report.runs, failures=report.failures, target=target or "none")
    if rates and rates[0].failures == len(runs) and not inputs.regression:
        raise ConsistentlyFailing(consistently_failing(rates[0].test, runs, sample))
    return ReportOut(report=report)


def consistently_failing(test: str, runs: list[RunOutcome], sample: str) -> str:
    """One paragraph: the test failed on every run, so it is not flaky."""
    outcomes = Counter(run.outcome for run in runs).most_common()
    how = ", ".join(f"{n} {outcome}" for outcome, n in outcomes)
    lines = [line for line in sample.splitlines() if line.strip()][-EXCERPT_LINES:]
    return (
        f"consistently failing, not flaky: {test} failed in all {len(runs)} runs ({how}). "
        "No flaky-test pull request is made for it; hunt it with --regression to bisect "
        "it as a plain regression. A failing run's output ends:\n"
        + textwrap.indent("\n".join(lines), "    ")
    )
