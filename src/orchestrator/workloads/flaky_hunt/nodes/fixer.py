"""``fix-proposer``: ask the run's model for a fix and keep it only if the repro and a
batch of fresh reruns pass; without a model, a person decides at the review gate."""

from __future__ import annotations

import re

from pydantic import BaseModel

from orchestrator.agents.budgets import worst_case
from orchestrator.agents.intake import Intake
from orchestrator.node import node
from orchestrator.runtime.context import NodeContext
from orchestrator.workloads.flaky_hunt.ports import Bisected, Fix, FixOut, Report, Repro
from orchestrator.workloads.flaky_hunt.seeded_runs import (
    KNOWN_SEEDS_FIRST,
    checkout,
    run_seeds,
    target_argv,
)


class FixInputs(BaseModel):
    intake: Intake
    report: Report
    bisected: Bisected
    repro: Repro
    prepared_dir: str


DIFF_BLOCK = re.compile(r"```(?:diff|patch)?\n(.*?)```", re.S)


@node(
    "fix-proposer",
    workspace="prepared_dir",
    effects={"fs", "llm"},
    timeout=1800,
    budget=worst_case(1800, tokens=40_000, llm_usd=1.0),
)
async def fix_proposer(ctx: NodeContext, inputs: FixInputs) -> FixOut:
    """Ask a model for a fix (when the run has one), apply it, and check it by rerunning
    the repro and a batch of reruns; without a model, leave it to a person at the gate."""
    return FixOut(fix=await _fix(ctx, inputs))


async def _fix(ctx: NodeContext, inputs: FixInputs) -> Fix:
    found, report, intake = inputs.bisected, inputs.report, inputs.intake
    if found.first_bad is None:
        return Fix(
            diff=None, verified=False, failures_after=None, runs_after=None, note="no commit to fix"
        )
    if not ctx.llm.available:
        return Fix(
            diff=None,
            verified=False,
            failures_after=None,
            runs_after=None,
            note="no model provider is configured: a person decides on a fix at the review gate",
        )
    shown = await ctx.exec(["git", "show", "--format=%H %s", found.first_bad], check=True)
    prompt = (
        f"The test {report.target} became flaky in this commit:\n\n{shown.stdout[:20000]}\n\n"
        f"A failing run printed:\n{report.sample_output[-4000:]}\n\n"
        "Reply with a unified diff (in a ```diff block) against the repository's current "
        "tree that makes the test deterministic. Change as little as possible."
    )
    answer = await ctx.llm.complete(prompt, max_tokens=2000)
    match = DIFF_BLOCK.search(answer.text)
    if match is None:
        return Fix(
            diff=None,
            verified=False,
            failures_after=None,
            runs_after=None,
            note="the model's answer held no diff",
        )
    diff = match.group(1)
    await checkout(ctx, intake.sha)
    applied = await ctx.exec(["git", "apply", "--whitespace=nowarn", "-"], stdin=diff)
    if applied.code != 0:
        return Fix(
            diff=diff,
            verified=False,
            failures_after=None,
            runs_after=None,
            note=f"the diff does not apply: {applied.stderr[-300:]}",
        )
    seeds = [*report.failing_seeds[:KNOWN_SEEDS_FIRST], *range(7, 7 + 50)]
    records = await run_seeds(ctx, intake, seeds, target_argv(intake, report.target))
    failures = sum(1 for r in records if r.code != 0)
    await ctx.exec(["git", "checkout", "--quiet", "--force", "--", "."], check=True)
    return Fix(
        diff=diff,
        verified=failures == 0,
        failures_after=failures,
        runs_after=len(records),
        note="checked by rerunning the repro and a batch of fresh seeds",
    )
