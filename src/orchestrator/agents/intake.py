"""Repository intake, for any workload that runs a repository's tests: ``repo-intake``
detects the runner and installs the test dependencies in the sandbox (the only step with
network), then publishes the prepared tree for the test runs. A workload's own fetch node
clones the repository first (``host.clone_checkout``, giving :class:`Fetched`)."""

from __future__ import annotations

import shlex

from pydantic import BaseModel

from orchestrator.agents import diagnosis, host, runners
from orchestrator.agents.budgets import worst_case
from orchestrator.errors import ExecFailed, SandboxError, TransientError
from orchestrator.node import Retry, node
from orchestrator.runtime.context import NodeContext, output_tail


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
    retry=Retry(max_attempts=2, base_delay=5, on=(TransientError, SandboxError)),
)
async def repo_intake(ctx: NodeContext, inputs: IntakeInputs) -> IntakeOut:
    """Detect the language and test runner (the one ``test`` names, installed whether or
    not the project declares it); install the test dependencies in the sandbox (the only
    step with network); publish the prepared tree for the test runs."""
    test = shlex.split(inputs.test)
    runner = runners.detect(inputs.files, test)
    await ctx.log("detected", runner=runner.name, framework=runner.framework)
    for argv in runner.install:
        done = await ctx.exec(argv, env=runner.env, timeout=1200)
        if done.code != 0:
            raise install_failed(argv, done.code, done.stderr or done.stdout)
    prepared = await ctx.tool("publish-prepared", host.publish_tree, f"{inputs.workdir}/prepared")
    intake = Intake(prepared=str(prepared), sha=inputs.sha, runner=runner, argv=test)
    return IntakeOut(intake=intake, prepared=intake.prepared)


def install_failed(argv: list[str], code: int, output: str) -> ExecFailed | TransientError:
    """The error for a failed install step: transient (retried) when the network failed,
    else final, with what to do when the output names a missing system package."""
    message = f"{' '.join(argv)} exited {code}:\n{output_tail(output)}"
    hint = diagnosis.build_hint(output)
    if hint is not None:  # a missing package stays missing, whatever else went wrong
        return ExecFailed(f"{message}\n{hint}")
    if diagnosis.is_transient(output):
        return TransientError(message)
    return ExecFailed(message)
