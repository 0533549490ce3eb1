"""Plans that commit in sandboxes over one shared lower and publish branches elsewhere."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, node
from orchestrator.agents import host
from orchestrator.errors import BranchRefused
from orchestrator.node import NodeSpec

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


class Target(BaseModel):
    lower: str
    dest: str
    hold: str = ""
    """A host file the publish step waits for after publishing ("": no wait)."""
    mark: str = ""
    """A host file written once the branch is published ("": none)."""


class Published(BaseModel):
    branch: str
    sha: str


async def _wait_for(path: str) -> bool:
    """Wait (at most a minute, without blocking the loop) for ``path`` to exist."""
    deadline = time.monotonic() + 60
    while path and not Path(path).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not path or Path(path).exists()


async def publish_then_hold(dest: str, branch: str, hold: str, workspace: str) -> str:
    """Publish, then wait for ``hold`` to exist: a kill lands here."""
    sha = host.publish_branch(dest, branch, workspace)
    await _wait_for(hold)
    return sha


def _mark(path: str) -> None:
    Path(path).write_text("published\n")


async def commit(ctx: NodeContext, branch: str, text: str) -> None:
    await ctx.exec(["git", "checkout", "--quiet", "-B", branch], check=True)
    await ctx.write("change.txt", text + "\n")
    await ctx.exec(["git", "add", "--all"], check=True)
    await ctx.exec(["git", "commit", "--quiet", "-m", text], env=GIT_ENV, check=True)


@node("publisher", workspace="lower", effects={"fs"}, retry=Retry(never=BranchRefused))
async def publisher(ctx: NodeContext, inputs: Target) -> Published:
    branch = host.branch_for_run("orchestrator/published", ctx.run_id)
    await commit(ctx, branch, "published")
    sha = await ctx.tool("publish", publish_then_hold, inputs.dest, branch, inputs.hold)
    if inputs.mark:
        await ctx.tool("mark", _mark, inputs.mark)
    return Published(branch=branch, sha=sha)


@node("neighbour", workspace="lower", effects={"fs"})
async def neighbour(ctx: NodeContext, inputs: Target) -> Published:
    """Works beside the publisher on the same lower: its sandbox is up (its workspace
    given to it) before the publish, and its git writes objects and refs after it."""
    await ctx.exec(["git", "status", "--short"], check=True)
    assert await ctx.tool("wait-for-publish", _wait_for, inputs.mark)
    branch = host.branch_for_run("orchestrator/neighbour", ctx.run_id)
    await commit(ctx, branch, "neighbour")
    head = await ctx.exec(["git", "rev-parse", "HEAD"], check=True)
    return Published(branch=branch, sha=head.stdout.strip())


def _build(name: str, *specs: NodeSpec) -> Plan:
    plan = Plan(name, inputs=Target)
    wired: dict[str, Any] = {k: plan.input(k) for k in Target.model_fields}
    for spec in specs:
        plan.add(spec, **wired)
    return plan


alone = _build("publish-alone", publisher)
side_by_side = _build("publish-side-by-side", publisher, neighbour)
