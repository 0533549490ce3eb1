"""``rerun-planner`` splits the reruns into batches of recorded seeds; ``flake-rerunner``
runs one batch in a sandbox, each run a fresh process; ``flake-report`` gives per-test
failure rates with 95% intervals and the failing seeds."""

from __future__ import annotations

import random

from pydantic import BaseModel

from orchestrator.agents.budgets import worst_case
from orchestrator.agents.intake import Intake
from orchestrator.node import node
from orchestrator.runtime.context import NodeContext
from orchestrator.workloads.flaky_hunt import stats
from orchestrator.workloads.flaky_hunt.ports import (
    Batch,
    Batches,
    BatchOut,
    BatchResult,
    Report,
    ReportOut,
    RunOutcome,
)
from orchestrator.workloads.flaky_hunt.seeded_runs import failed_ids, run_seeds


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
    records = await run_seeds(ctx, inputs.intake, inputs.batch.seeds)
    runs = [
        RunOutcome(
            seed=r.seed, code=r.code, failed=failed_ids(inputs.intake, r), duration=r.duration
        )
        for r in records
    ]
    tail = next((r.output_tail for r in records if r.code != 0), "")
    return BatchOut(result=BatchResult(index=inputs.batch.index, runs=runs, tail=tail[-2000:]))


class ReportInputs(BaseModel):
    results: list[BatchResult]


@node("flake-report")
async def flake_report(ctx: NodeContext, inputs: ReportInputs) -> ReportOut:
    """Per-test failure rates with 95% intervals, and the seeds of the failing runs."""
    runs = [run for result in inputs.results for run in result.runs]
    rates = stats.rates([run.failed for run in runs], len(runs))
    target = rates[0].test if rates else None
    failing = [run.seed for run in runs if target is not None and target in run.failed]
    sample = next((r.tail for r in inputs.results if r.tail), "")
    report = Report(
        runs=len(runs),
        failures=sum(1 for run in runs if run.failed),
        rates=rates,
        target=target,
        failing_seeds=failing,
        sample_output=sample,
    )
    await ctx.log("reruns", runs=report.runs, failures=report.failures, target=target or "none")
    return ReportOut(report=report)
