"""The flaky-test hunt: rerun a suite many times in parallel sandboxes, bisect to the
first failing commit, build the repro, propose a fix, and prepare the pull request.

    repo-fetch -> repo-intake -> rerun-probe (the first batch) -> flake-rerunner[batch ...]
      -> flake-report -> bisector -> repro-builder -> fix-proposer -> pr-author (review gate)
      -> pr-open -> notifier

The probe stops the hunt after its first batch when no run reached the test; the report
stops it when the test failed on every run (not flaky) unless ``regression`` is set.

``plan`` has no gate; ``reviewed`` holds the pull request at the ``review`` gate until a
person approves it (the CLI uses it when approvers are configured).

The package holds the plan (here) and the hunt's own agents: its nodes (``nodes/``), their
typed ports (``ports``), running seeded reruns in a sandbox (``seeded_runs``, with the
in-sandbox ``rerun_driver``), failure rates (``stats``), flaky-aware bisection
(``bisection``) and the pull request's text (``pull_request``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.agents.intake import repo_intake
from orchestrator.node import NodeSpec
from orchestrator.plan import NodeHandle, Plan
from orchestrator.workloads.flaky_hunt.nodes.bisector import bisector, repro_builder
from orchestrator.workloads.flaky_hunt.nodes.fetch import repo_fetch
from orchestrator.workloads.flaky_hunt.nodes.fixer import fix_proposer
from orchestrator.workloads.flaky_hunt.nodes.publish import (
    notifier,
    pr_author,
    pr_open,
    reviewed_pr_author,
)
from orchestrator.workloads.flaky_hunt.nodes.reruns import (
    flake_report,
    flake_rerunner,
    rerun_planner,
    rerun_probe,
)
from orchestrator.workloads.flaky_hunt.ports import HuntInputs

PLAN_REF = "orchestrator.workloads.flaky_hunt:plan"
REVIEWED_REF = "orchestrator.workloads.flaky_hunt:reviewed"

MAX_BATCHES = 200


def rerun_stage(plan: Plan, max_batches: int = MAX_BATCHES) -> tuple[NodeHandle, NodeHandle]:
    """Fetch, intake, the first batch, the other batches mapped, and their report: the
    hunt's first half (also what bench/flaky.py measures). Returns the intake and report
    nodes."""
    i = plan.input
    hunt: dict[str, Any] = {k: i(k) for k in HuntInputs.model_fields}
    fetched = plan.add(repo_fetch, **hunt)
    intake = plan.add(
        repo_intake,
        checkout=fetched.out.checkout,
        sha=fetched.out.sha,
        files=fetched.out.files,
        test=i("test"),
        workdir=i("workdir"),
    )
    planned = plan.add(rerun_planner, runs=i("runs"), batch=i("batch"), seed=i("seed"))
    prepared: dict[str, Any] = {"intake": intake.out.intake, "prepared_dir": intake.out.prepared}
    probe = plan.add(rerun_probe, batches=planned.out.batches, **prepared)
    reruns = plan.map(
        flake_rerunner, over=probe.out.rest, item="batch", max_items=max_batches, **prepared
    )
    report = plan.add(
        flake_report,
        first=probe.out.first,
        results=reruns.out.result,
        regression=i("regression"),
    )
    return intake, report


def build_plan(author: NodeSpec = pr_author) -> Plan:
    plan = Plan("flaky-hunt", inputs=HuntInputs)
    i = plan.input
    intake, report = rerun_stage(plan)
    shared: dict[str, Any] = {"intake": intake.out.intake, "prepared_dir": intake.out.prepared}
    bisected = plan.add(bisector, report=report.out.report, good=i("good"), **shared)
    repro = plan.add(
        repro_builder, report=report.out.report, bisected=bisected.out.bisected, **shared
    )
    fix = plan.add(
        fix_proposer,
        report=report.out.report,
        bisected=bisected.out.bisected,
        repro=repro.out.repro,
        **shared,
    )
    authored = plan.add(
        author,
        repo=i("repo"),
        workdir=i("workdir"),
        base=i("base"),
        author=i("author"),
        report=report.out.report,
        bisected=bisected.out.bisected,
        repro=repro.out.repro,
        fix=fix.out.fix,
        **shared,
    )
    published: dict[str, Any] = {k: i(k) for k in ("repo", "workdir", "github", "github_api")}
    opened = plan.add(
        pr_open,
        **published,
        authored=authored.out.authored,
        prepared_dir=intake.out.prepared,
    )
    plan.add(notifier, authored=authored.out.authored, opened=opened.out.opened, notify=i("notify"))
    return plan


plan = build_plan()
reviewed = build_plan(reviewed_pr_author)
