"""What the flaky hunt's agents share: typed ports, constants, and running the test
command once per seed in a node's sandbox."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator.agents import pr, rerun, runners, stats
from orchestrator.budget import Budget, Prices
from orchestrator.runtime.context import NodeContext

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost.invalid",
    "GIT_COMMITTER_NAME": "Orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


MISS = 0.01  # the chance bisection may call a bad commit good


MAX_BATCHES = 200


def worst_case(seconds: float, tokens: int = 0, llm_usd: float = 0.0) -> Budget:
    """A node's declared worst case: its whole timeout of one vCPU (priced at the default
    compute price) plus what its model calls may cost. Reserved only under a ceiling."""
    compute_h = seconds / 3600
    return Budget(
        tokens=tokens, compute_h=compute_h, spend_usd=Prices().compute_spend(compute_h) + llm_usd
    )


RUN_TIMEOUT = 120.0


KNOWN_SEEDS_FIRST = 3


class HuntInputs(BaseModel):
    repo: str
    test: str
    runs: int = 1000
    batch: int = 25
    good: str | None = None
    bad: str = "HEAD"
    workdir: str
    base: str = "main"
    github: str | None = None
    github_api: str | None = None
    seed: int | None = None
    notify: list[str] = []


class Fetched(BaseModel):
    checkout: str
    sha: str
    files: dict[str, str]


class Intake(BaseModel):
    prepared: str
    sha: str
    runner: runners.Runner
    argv: list[str]


class Batch(BaseModel):
    index: int
    seeds: list[int]


class Batches(BaseModel):
    batches: list[Batch]


class RunOutcome(BaseModel):
    seed: int
    code: int
    failed: list[str]
    duration: float


class BatchResult(BaseModel):
    index: int
    runs: list[RunOutcome]
    tail: str


class Report(BaseModel):
    runs: int
    failures: int
    rates: list[stats.Rate]
    target: str | None
    failing_seeds: list[int]
    sample_output: str


class Bisected(BaseModel):
    first_bad: str | None
    parent: str | None
    good: str | None
    subject: str
    diffstat: str
    trials_per_commit: int
    log: list[str]
    message: str


class Repro(BaseModel):
    command: str
    seed: int | None
    fails_on_bad: bool
    passes_on_parent: bool


class Fix(BaseModel):
    diff: str | None
    verified: bool
    failures_after: int | None
    runs_after: int | None
    note: str


class Authored(BaseModel):
    base_sha: str
    branch: str
    title: str
    description: str
    diff: str
    facts: pr.HuntFacts


class Opened(BaseModel):
    branch: str
    published: str
    pull_request: str | None
    patch_file: str
    note: str


class Summary(BaseModel):
    summary: str


class IntakeOut(BaseModel):
    intake: Intake
    prepared: str


class BatchOut(BaseModel):
    result: BatchResult


class ReportOut(BaseModel):
    report: Report


class BisectOut(BaseModel):
    bisected: Bisected


class ReproOut(BaseModel):
    repro: Repro


class FixOut(BaseModel):
    fix: Fix


class AuthoredOut(BaseModel):
    authored: Authored
    diff: str  # what a person reviews at the gate: the patch


class OpenedOut(BaseModel):
    opened: Opened


def seed_spec(intake: Intake, seeds: list[int], argv: list[str] | None = None) -> str:
    runner = intake.runner
    return rerun.spec(
        argv if argv is not None else intake.argv,
        runner.env,
        runner.seed_env,
        seeds,
        RUN_TIMEOUT,
        runner.seed_args,
    )


async def run_seeds(
    ctx: NodeContext, intake: Intake, seeds: list[int], argv: list[str] | None = None
) -> list[rerun.RunRecord]:
    """Run the command once per seed, each in a fresh process, in the node's sandbox."""
    done = await ctx.exec(
        ["python3", "-c", rerun.DRIVER, seed_spec(intake, seeds, argv)],
        timeout=RUN_TIMEOUT * len(seeds) + 60,
    )
    records = rerun.parse_driver_output(done.stdout)
    if len(records) != len(seeds):
        raise RuntimeError(
            f"the rerun driver reported {len(records)} of {len(seeds)} runs "
            f"(exit {done.code}): {done.stderr[-400:]}"
        )
    return records


def failed_ids(intake: Intake, record: rerun.RunRecord) -> list[str]:
    if record.code == 0:
        return []
    ids = runners.failing_tests(intake.runner, record.output_tail)
    return ids or ["<the whole command>"]


async def checkout(ctx: NodeContext, sha: str) -> None:
    await ctx.exec(["git", "checkout", "--quiet", "--force", "--detach", sha], check=True)


def _target_argv(intake: Intake, target: str | None) -> list[str]:
    if target is None or target == "<the whole command>":
        return intake.argv
    return runners.test_command(intake.runner, intake.argv, target)
