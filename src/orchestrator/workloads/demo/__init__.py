"""The demo: migrate a small npm-workspaces monorepo from CommonJS to ES modules.

    workspace-detect -> codemod-runner[package ...] -> diff-summarizer (merge gate)

The package holds the plan (here), its nodes (``nodes``) and the generator of the sample
monorepo it migrates (``monorepo``).
"""

from __future__ import annotations

from orchestrator.budget import Budget
from orchestrator.plan import Plan
from orchestrator.workloads.demo.nodes import (
    RepoInputs,
    codemod_runner,
    diff_summarizer,
    workspace_detect,
)

PLAN_REF = "orchestrator.workloads.demo:plan"

# The run's ceiling holds 50 packages' worth of the nodes' worst cases with room to spare,
# so receipts show real meters against a real envelope.
RUN_CEILING = Budget(tokens=0, compute_h=1.0, spend_usd=0.1)


def build_plan() -> Plan:
    plan = Plan("esm-migration-demo", inputs=RepoInputs)
    detect = plan.add(workspace_detect, repo=plan.input("repo"), workdir=plan.input("workdir"))
    migrate = plan.map(
        codemod_runner,
        over=detect.out.packages,
        item="package",
        max_items=50,
        repo=plan.input("repo"),
        checkout=detect.out.checkout,
    )
    plan.add(
        diff_summarizer,
        packages=migrate.out.package,
        branches=migrate.out.branch,
        lines_changed=migrate.out.lines_changed,
        files=migrate.out.files,
        diffs=migrate.out.diff,
    )
    return plan


plan = build_plan()
