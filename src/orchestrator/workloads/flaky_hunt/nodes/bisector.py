"""``bisector``: flaky-aware bisection with as many trials per commit as the measured
rate needs; ``repro-builder``: the smallest reproducing command, checked on the first
bad commit and its parent."""

from __future__ import annotations

import random
import shlex

from pydantic import BaseModel

from orchestrator.agents import runners
from orchestrator.agents.budgets import worst_case
from orchestrator.agents.intake import Intake
from orchestrator.node import node
from orchestrator.runtime.context import NodeContext
from orchestrator.workloads.flaky_hunt import stats
from orchestrator.workloads.flaky_hunt.bisection import Verdict, bisect, find_good
from orchestrator.workloads.flaky_hunt.ports import Bisected, BisectOut, Report, Repro, ReproOut
from orchestrator.workloads.flaky_hunt.seeded_runs import (
    KNOWN_SEEDS_FIRST,
    checkout,
    failed_ids,
    run_seeds,
    target_argv,
)

MISS = 0.01  # the chance bisection may call a bad commit good


class BisectInputs(BaseModel):
    intake: Intake
    report: Report
    good: str | None
    prepared_dir: str


@node(
    "bisector",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=2 * 3600,
    budget=worst_case(2 * 3600),
)
async def bisector(ctx: NodeContext, inputs: BisectInputs) -> BisectOut:
    """Flaky-aware bisection from a good to the bad revision (stepping back through
    history to find a good one when none is given); known failing seeds go first."""
    return BisectOut(bisected=await _bisect(ctx, inputs))


async def _bisect(ctx: NodeContext, inputs: BisectInputs) -> Bisected:
    """Flaky-aware bisection from a good to the bad revision (stepping back through
    history to find a good one when none is given); known failing seeds go first."""
    report, intake = inputs.report, inputs.intake
    if report.target is None:
        return Bisected(
            first_bad=None,
            parent=None,
            good=None,
            subject="",
            diffstat="",
            trials_per_commit=0,
            log=[],
            message=f"no failure in {report.runs} runs: nothing to bisect",
        )
    rate = next(r for r in report.rates if r.test == report.target)
    trials = stats.trials_to_detect(rate.low, MISS)
    # The whole command, not just the test: on commits before the test existed, "not
    # found" must read as good, and a build that breaks must read as skip.
    argv = intake.argv
    known = report.failing_seeds[:KNOWN_SEEDS_FIRST]
    draw = random.Random(known[0] if known else 1)
    fresh = [draw.randrange(1, 4_294_967_295) for _ in range(trials)]
    seeds = (known + [s for s in fresh if s not in known])[:trials] if trials > 1 else known[:1]
    seeds = seeds or fresh[:trials]
    log: list[str] = []
    seen: dict[str, Verdict] = {}

    async def probe(sha: str) -> tuple[Verdict, int]:
        if sha in seen:
            return seen[sha], 0
        await checkout(ctx, sha)
        used = 0
        for chunk in (seeds[: len(known)], seeds[len(known) :]):
            if not chunk:
                continue
            records = await run_seeds(ctx, intake, chunk, argv)
            used += len(records)
            for record in records:
                if record.code != 0 and runners.broke(
                    intake.runner, record.code, record.output_tail
                ):
                    verdict: Verdict = "skip"
                    break
                if report.target in failed_ids(intake, record) or (
                    record.code != 0 and report.target == "<the whole command>"
                ):
                    verdict = "bad"
                    break
            else:
                continue
            break
        else:
            verdict = "good"
        seen[sha] = verdict
        log.append(f"{sha[:12]}: {verdict} after {used} run(s)")
        await ctx.log("bisect", commit=sha, verdict=verdict, runs=used, **narrowed())
        # a restore point: after a crash the hunt resumes after this step, not before it
        await ctx.checkpoint(f"bisect {sha[:12]} {verdict}")
        return verdict, used

    commits: list[str] = []

    def narrowed() -> dict[str, str | int]:
        """The range still in question once bisection has its commit list."""
        good_at = max((i for i, c in enumerate(commits) if seen.get(c) == "good"), default=0)
        bad_at = min(
            (i for i, c in enumerate(commits) if seen.get(c) == "bad"), default=len(commits) - 1
        )
        if not commits:
            return {}
        return {"good": commits[good_at], "bad": commits[bad_at], "left": bad_at - good_at - 1}

    bad = intake.sha
    good = inputs.good
    if good is None:
        history = (await ctx.exec(["git", "rev-list", "--first-parent", f"{bad}~1"])).stdout.split()
        good, _steps = await find_good(history, probe)
        # the oldest commit found bad while stepping back is a tighter bad end
        for sha in reversed(history[: history.index(good)] if good in history else []):
            if seen.get(sha) == "bad":
                bad = sha
                break
        if good is None:
            return Bisected(
                first_bad=None,
                parent=None,
                good=None,
                subject="",
                diffstat="",
                trials_per_commit=trials,
                log=log,
                message=(
                    "the tests could not run on any ancestor tried (every probe was a skip)"
                    if seen and all(v == "skip" for v in seen.values())
                    else "the failure reproduces on every ancestor down to the root commit"
                ),
            )
    else:
        good = (
            await ctx.exec(["git", "rev-parse", f"{good}^{{commit}}"], check=True)
        ).stdout.strip()
    path = await ctx.exec(
        ["git", "rev-list", "--reverse", "--ancestry-path", f"{good}..{bad}"], check=True
    )
    commits[:] = [good, *path.stdout.split()]
    await ctx.log("bisect-range", good=good, bad=bad, commits=len(commits) - 2)
    result = await bisect(commits, probe)
    subject = diffstat = ""
    parent = None
    if result.first_bad is not None:
        shown = await ctx.exec(
            ["git", "show", "--stat", "--format=%s", result.first_bad], check=True
        )
        subject, _, diffstat = shown.stdout.partition("\n")
        parent = (
            await ctx.exec(["git", "rev-parse", f"{result.first_bad}~1"], check=True)
        ).stdout.strip()
    return Bisected(
        first_bad=result.first_bad,
        parent=parent,
        good=good,
        subject=subject.strip(),
        diffstat=diffstat.strip(),
        trials_per_commit=trials,
        log=log,
        message=result.message,
    )


class ReproInputs(BaseModel):
    intake: Intake
    report: Report
    bisected: Bisected
    prepared_dir: str


def repro_command(intake: Intake, target: str | None, seed: int | None) -> str:
    """The command a person runs in their own checkout (with the test dependencies
    installed): the sandbox's paths are left out, everything else that matters is kept."""
    env = {k: v for k, v in intake.runner.env.items() if k not in runners.SANDBOX_ONLY_ENV}
    if seed is not None:
        env.update({name: str(seed) for name in intake.runner.seed_env})
    argv = target_argv(intake, target)
    if seed is not None:
        argv = [*argv, *intake.runner.seed_args(seed)]
    assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    return " ".join([*assignments, shlex.join(argv)])


@node(
    "repro-builder",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=1800,
    budget=worst_case(1800),
)
async def repro_builder(ctx: NodeContext, inputs: ReproInputs) -> ReproOut:
    """The smallest reproducing command (test id + seed + environment), checked to fail
    on the first bad commit and to pass on its parent."""
    return ReproOut(repro=await _repro(ctx, inputs))


async def _repro(ctx: NodeContext, inputs: ReproInputs) -> Repro:
    report, intake, found = inputs.report, inputs.intake, inputs.bisected
    seeded = bool(intake.runner.seed_env or intake.runner.seed_args(1))
    seed = report.failing_seeds[0] if report.failing_seeds and seeded else None
    command = repro_command(intake, report.target, seed)
    whole = repro_command(intake, None, seed)
    if found.first_bad is None or found.parent is None:
        return Repro(
            command=command,
            seed=seed,
            fails_on_bad=False,
            passes_on_parent=False,
            whole_command=whole,
        )
    # a seed-driven failure reproduces in one run with its seed; otherwise the trials the
    # measured rate needs
    trials = 3 if seed is not None else max(1, min(found.trials_per_commit, 50))
    seeds = [seed] * trials if seed is not None else list(range(1, trials + 1))

    # The repro itself on the first bad commit; on the parent, the whole command with the
    # same seeds (the test may not exist there yet), where the test must not fail.
    await checkout(ctx, found.first_bad)
    records = await run_seeds(ctx, intake, seeds, target_argv(intake, report.target))
    # reproduced only where the test itself failed, not where the command could not run
    outcomes = [
        runners.classify(intake.runner, r.code, r.output_tail, r.timed_out) for r in records
    ]
    on_bad = sum(1 for o in outcomes if o not in runners.NOT_REACHED and o != "passed")
    await checkout(ctx, found.parent)
    records = await run_seeds(ctx, intake, seeds, intake.argv)
    on_parent = sum(1 for r in records if report.target in failed_ids(intake, r))
    return Repro(
        command=command,
        seed=seed,
        fails_on_bad=on_bad > 0,
        passes_on_parent=on_parent == 0,
        fails_every_run=seed is not None and on_bad == trials,
        whole_command=whole,
    )
