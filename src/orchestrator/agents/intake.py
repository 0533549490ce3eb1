"""Repository intake, for any workload that runs a repository's tests: ``repo-intake``
detects the runner and installs the test dependencies in the sandbox (the only step with
network), then publishes the prepared tree for the test runs. A workload's own fetch node
clones the repository first (``host.clone_checkout``, giving :class:`Fetched`)."""

from __future__ import annotations

import shlex

from pydantic import BaseModel

from orchestrator.agents import host, runners
from orchestrator.agents.budgets import worst_case
from orchestrator.node import Retry, node
from orchestrator.runtime.context import NodeContext


class Fetched(BaseModel):
    checkout: str
    sha: str
    files: dict[str, str]


class Intake(BaseModel):
    prepared: str
    sha: str
    runner: runners.Runner
    argv: list[str]


class IntakeOut(BaseModel):
    intake: Intake
    prepared: str


class IntakeInputs(BaseModel):
    checkout: str
    sha: str
    files: dict[str, str]
    test: str
    workdir: str


@node(
    "repo-intake",
    workspace="checkout",
    effects={"fs", "net"},
    timeout=1800,
    budget=worst_case(1800),
    retry=Retry(max_attempts=2, base_delay=5),
)
async def repo_intake(ctx: NodeContext, inputs: IntakeInputs) -> IntakeOut:
    """Detect the language and test runner (the one ``test`` names, installed whether or
    not the project declares it); install the test dependencies in the sandbox (the only
    step with network); publish the prepared tree for the test runs."""
    test = shlex.split(inputs.test)
    runner = runners.detect(inputs.files, test)
    await ctx.log("detected", runner=runner.name, framework=runner.framework)
    for argv in runner.install:
        await ctx.exec(argv, env=runner.env, timeout=1200, check=True)
    prepared = await ctx.tool("publish-prepared", host.publish_tree, f"{inputs.workdir}/prepared")
    intake = Intake(prepared=str(prepared), sha=inputs.sha, runner=runner, argv=test)
    return IntakeOut(intake=intake, prepared=intake.prepared)
