"""The demo's nodes, each in a sandbox.

``workspace-detect`` reads the workspaces of the repository (a read-only copy-on-write
view of it) and clones the commit it read into the run's work directory: that clone is
the lower layer the migrations stack on, and nothing writes into it while they run (the
branches go to the repository, never into a tree a live overlay sits on).
``codemod-runner`` is mapped over the packages, one instance per package in parallel,
each in its own copy-on-write view of the clone: it rewrites ``require``/``module.exports``
with ``sed``, marks the package ``"type": "module"``, commits on a branch of its own
(named for the run), and a recorded host-side step creates that branch in the
repository; ``diff-summarizer`` reports the changes. Every command goes through
``ctx.exec``, so the run is journaled, resumable and replayable.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from orchestrator.agents import host
from orchestrator.budget import Budget
from orchestrator.errors import BranchRefused
from orchestrator.node import Retry, node
from orchestrator.runtime.context import NodeContext

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Orchestrator Demo",
    "GIT_AUTHOR_EMAIL": "demo@orchestrator.invalid",
    "GIT_COMMITTER_NAME": "Orchestrator Demo",
    "GIT_COMMITTER_EMAIL": "demo@orchestrator.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}
SED_REWRITES = (
    r"/^'use strict';$/d",
    r"s/^const ([A-Za-z_$][A-Za-z0-9_$]*) = require\('([^']+)'\);$/import \1 from '\2';/",
    r"s/^module\.exports = /export default /",
    r"/\.js';$/!s/^(import .* from '\.[^']*)';$/\1.js';/",
)


class RepoInputs(BaseModel):
    repo: str
    workdir: str
    """Where the run keeps its clone of ``repo`` (the migrations' shared lower layer)."""


class Detected(BaseModel):
    workspaces: list[str]
    packages: list[str]
    checkout: str
    """The clone of the commit that was read, which the migrations work on."""


class MigrateInputs(BaseModel):
    repo: str
    checkout: str
    package: str


class Migrated(BaseModel):
    package: str
    branch: str
    files: list[str]
    lines_changed: int
    diff: str


class SummaryInputs(BaseModel):
    packages: list[str]
    branches: list[str]
    lines_changed: list[int]
    files: list[list[str]]
    diffs: list[str]


class Summary(BaseModel):
    summary: str
    total_lines_changed: int
    diff: str


# Each node's worst case: ~36 s of one vCPU and its price (the run's ceiling is the plan's).
NODE_BUDGET = Budget(compute_h=0.01, spend_usd=0.001)


@node(
    "workspace-detect",
    workspace="repo",
    budget=NODE_BUDGET,
    retry=Retry(max_attempts=2, base_delay=0.2),
    timeout=60,
)
async def workspace_detect(ctx: NodeContext, inputs: RepoInputs) -> Detected:
    """List the packages the monorepo's npm workspaces declare (read-only sandbox)."""
    manifest = json.loads(await ctx.read("package.json"))
    patterns: list[str] = list(manifest.get("workspaces", []))
    listing = await ctx.exec(
        ["git", "ls-files", "--", *(f"{p}/package.json" for p in patterns)], check=True
    )
    packages = sorted(Path(line).parent.name for line in listing.stdout.split())
    head = await ctx.exec(["git", "rev-parse", "HEAD"], check=True)
    cloned = await ctx.tool(
        "clone",
        host.clone_checkout,
        inputs.repo,
        head.stdout.strip(),
        f"{inputs.workdir}/lower",
        [],
    )
    await ctx.checkpoint("detected")
    return Detected(workspaces=patterns, packages=packages, checkout=str(cloned["checkout"]))


@node(
    "codemod-runner",
    workspace="checkout",
    budget=NODE_BUDGET,
    effects={"fs"},
    retry=Retry(max_attempts=3, base_delay=0.2, never=BranchRefused),
    timeout=120,
)
async def codemod_runner(ctx: NodeContext, inputs: MigrateInputs) -> Migrated:
    """Rewrite one package to ES modules on its own branch, then publish the branch."""
    pkg = inputs.package
    branch = host.branch_for_run(f"orchestrator/esm-{pkg}", ctx.run_id)
    await ctx.exec(["git", "checkout", "--quiet", "-B", branch], check=True)
    listing = await ctx.exec(["git", "ls-files", "--", f"packages/{pkg}/src/*.js"], check=True)
    files = listing.stdout.split()
    sed = ["sed", "-i", "-E"]
    for expression in SED_REWRITES:
        sed += ["-e", expression]
    await ctx.exec([*sed, *files], check=True)
    manifest_path = f"packages/{pkg}/package.json"
    manifest = json.loads(await ctx.read(manifest_path))
    manifest["type"] = "module"
    await ctx.write(manifest_path, json.dumps(manifest, indent=2) + "\n")
    await ctx.checkpoint("rewritten")
    await ctx.exec(["git", "add", "--all"], check=True)
    message = f"{pkg}: migrate from CommonJS to ES modules"
    # Idempotent, like every step here: a commit performed just before a crash, and so
    # performed again on resume, finds nothing staged and is skipped.
    commit = 'git diff --cached --quiet || git commit --quiet -m "$0"'
    await ctx.exec(["sh", "-c", commit, message], env=GIT_ENV, check=True)
    numstat = await ctx.exec(["git", "diff", "--numstat", "main..HEAD"], check=True)
    lines = sum(
        int(added) + int(removed)
        for added, removed, _ in (row.split("\t", 2) for row in numstat.stdout.splitlines())
    )
    diff = await ctx.exec(["git", "diff", "main..HEAD"], check=True)
    await host.publish(ctx, inputs.repo, branch)
    return Migrated(package=pkg, branch=branch, files=files, lines_changed=lines, diff=diff.stdout)


@node("diff-summarizer", effects={"fs"}, timeout=60, gate="merge", budget=NODE_BUDGET)
async def diff_summarizer(ctx: NodeContext, inputs: SummaryInputs) -> Summary:
    """Summarize the per-package branches into one report (also written as SUMMARY.md).

    Gated: a person reviews the combined diff and approves (or rejects) the migration."""
    rows = [
        f"  {pkg:<10} {branch:<28} {len(files)} file(s), {lines} line(s) changed"
        for pkg, branch, lines, files in zip(
            inputs.packages, inputs.branches, inputs.lines_changed, inputs.files, strict=True
        )
    ]
    total = sum(inputs.lines_changed)
    summary = "\n".join(
        [f"Migrated {len(rows)} package(s) to ES modules, {total} line(s) changed:", *rows]
    )
    await ctx.write("SUMMARY.md", summary + "\n")
    return Summary(
        summary=summary, total_lines_changed=total, diff="\n".join(inputs.diffs) or "(no changes)"
    )
