"""The flaky-test hunt: rerun a suite many times in parallel sandboxes, bisect to the
first failing commit, build the repro, propose a fix, and prepare the pull request.

    repo-fetch -> repo-intake -> flake-rerunner[batch ...] -> flake-report -> bisector
      -> repro-builder -> fix-proposer -> pr-author (review gate) -> pr-open -> notifier

``plan`` has no gate; ``reviewed`` holds the pull request at the ``review`` gate until a
person approves it (the CLI uses it when approvers are configured).
"""

from __future__ import annotations

from typing import Any

from orchestrator.agents import flaky
from orchestrator.node import NodeSpec
from orchestrator.plan import NodeHandle, Plan

PLAN_REF = "orchestrator.workloads.flaky:plan"
REVIEWED_REF = "orchestrator.workloads.flaky:reviewed"


def rerun_stage(plan: Plan, max_batches: int = flaky.MAX_BATCHES) -> tuple[NodeHandle, NodeHandle]:
    """Fetch, intake, the mapped reruns and their report: the hunt's first half (also
    what bench/flaky.py measures). Returns the intake and report nodes."""
    i = plan.input
    hunt: dict[str, Any] = {k: i(k) for k in flaky.HuntInputs.model_fields}
    fetched = plan.add(flaky.repo_fetch, **hunt)
    intake = plan.add(
        flaky.repo_intake,
        checkout=fetched.out.checkout,
        sha=fetched.out.sha,
        files=fetched.out.files,
        test=i("test"),
        workdir=i("workdir"),
    )
    planned = plan.add(flaky.rerun_planner, runs=i("runs"), batch=i("batch"), seed=i("seed"))
    reruns = plan.map(
        flaky.flake_rerunner,
        over=planned.out.batches,
        item="batch",
        max_items=max_batches,
        intake=intake.out.intake,
        prepared_dir=intake.out.prepared,
    )
    report = plan.add(flaky.flake_report, results=reruns.out.result)
    return intake, report


def build_plan(author: NodeSpec = flaky.pr_author) -> Plan:
    plan = Plan("flaky-hunt", inputs=flaky.HuntInputs)
    i = plan.input
    intake, report = rerun_stage(plan)
    shared: dict[str, Any] = {"intake": intake.out.intake, "prepared_dir": intake.out.prepared}
    bisected = plan.add(flaky.bisector, report=report.out.report, good=i("good"), **shared)
    repro = plan.add(
        flaky.repro_builder, report=report.out.report, bisected=bisected.out.bisected, **shared
    )
    fix = plan.add(
        flaky.fix_proposer,
        report=report.out.report,
        bisected=bisected.out.bisected,
        repro=repro.out.repro,
        **shared,
    )
    authored = plan.add(
        author,
        repo=i("repo"),
        report=report.out.report,
        bisected=bisected.out.bisected,
        repro=repro.out.repro,
        fix=fix.out.fix,
        **shared,
    )
    published: dict[str, Any] = {
        k: i(k) for k in ("repo", "workdir", "base", "github", "github_api")
    }
    opened = plan.add(
        flaky.pr_open,
        **published,
        authored=authored.out.authored,
        prepared_dir=intake.out.prepared,
    )
    plan.add(
        flaky.notifier, authored=authored.out.authored, opened=opened.out.opened, notify=i("notify")
    )
    return plan


plan = build_plan()
reviewed = build_plan(flaky.reviewed_pr_author)
