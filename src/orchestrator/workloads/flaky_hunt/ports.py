"""The typed values the flaky hunt's nodes pass each other: the hunt's inputs, the rerun
batches and their results, the report, the bisection, the repro, the fix, the pull request
and the summary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

from orchestrator.agents.runners import Outcome
from orchestrator.workloads.flaky_hunt.pull_request import HuntFacts
from orchestrator.workloads.flaky_hunt.stats import Rate


class HuntInputs(BaseModel):
    repo: str
    test: str
    runs: int = 1000
    batch: int = 25
    good: str | None = None
    bad: str = "HEAD"
    workdir: str
    base: str | None = None  # None: the repository's default branch
    author: str | None = None  # "Name <email>"; None: the repository's git identity
    github: str | None = None
    github_api: str | None = None
    seed: int | None = None
    notify: list[str] = []
    regression: bool = False


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
    outcome: Outcome

    @model_validator(mode="before")
    @classmethod
    def _recorded_before_outcomes(cls, data: Any) -> Any:
        """Runs recorded before outcomes were: a failure was a failed test."""
        if isinstance(data, dict) and "outcome" not in data:
            return {**data, "outcome": "passed" if data.get("code") == 0 else "test-failed"}
        return data


class BatchResult(BaseModel):
    index: int
    runs: list[RunOutcome]
    tail: str


class Report(BaseModel):
    runs: int
    failures: int
    rates: list[Rate]
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
    fails_every_run: bool = False  # the pinned seed failed on every try on the first bad commit
    whole_command: str = ""  # the whole measured command with the seed: to run when
    # ``command`` was not confirmed to fail on the first bad commit


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
    facts: HuntFacts
    base: str = "main"  # the branch the pull request targets
    git_env: dict[str, str] = {}  # the identity and date the commit was made with


class Opened(BaseModel):
    branch: str
    published: str
    pull_request: str | None
    patch_file: str
    note: str
    description_file: str | None = None


class Summary(BaseModel):
    summary: str


class BatchOut(BaseModel):
    result: BatchResult


class ProbeOut(BaseModel):
    first: BatchResult
    rest: list[Batch]


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
