"""The flaky-hunt agents: repo intake, reruns, bisection, repro, fix, pull request.

Every node does real work with the repository's own test runner inside a sandbox:
``repo-intake`` installs the test dependencies (the only step with network),
``flake-rerunner`` reruns the test command in fresh processes with recorded seeds,
``bisector`` walks history with as many trials per commit as the measured rate needs,
``repro-builder`` checks the smallest reproducing command on the first bad commit and
its parent, ``fix-proposer`` asks a model when one is configured, and ``pr-author``
prepares a branch, a description and a patch for a person to review at the gate.
"""

from __future__ import annotations

import json
import random
import re
import shlex
from typing import Any

from pydantic import BaseModel

from orchestrator.agents import host, pr, rerun, runners, stats
from orchestrator.agents.bisect import Verdict, bisect, find_good
from orchestrator.budget import Prices
from orchestrator.node import Budget, Retry, node
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


# ---- typed ports ----------------------------------------------------------------------


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


# ---- helpers ----------------------------------------------------------------------------


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


# ---- nodes ------------------------------------------------------------------------------


@node("repo-fetch", effects={"net"}, timeout=900, retry=Retry(max_attempts=3, base_delay=2))
async def repo_fetch(ctx: NodeContext, inputs: HuntInputs) -> Fetched:
    """Clone the repository at the bad revision (a recorded host step)."""
    data = await ctx.tool(
        "git-clone",
        host.clone_checkout,
        inputs.repo,
        inputs.bad,
        f"{inputs.workdir}/checkout",
        list(runners.MARKER_FILES),
    )
    return Fetched.model_validate(data)


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
    """Detect the language and test runner; install the test dependencies in the sandbox
    (the only step with network); publish the prepared tree for the test runs."""
    runner = runners.detect(inputs.files)
    await ctx.log("detected", runner=runner.name, framework=runner.framework)
    for argv in runner.install:
        await ctx.exec(argv, env=runner.env, timeout=1200, check=True)
    prepared = await ctx.tool("publish-prepared", host.publish_tree, f"{inputs.workdir}/prepared")
    intake = Intake(
        prepared=str(prepared), sha=inputs.sha, runner=runner, argv=shlex.split(inputs.test)
    )
    return IntakeOut(intake=intake, prepared=intake.prepared)


class BatchPlanInputs(BaseModel):
    runs: int
    batch: int
    seed: int | None


@node("rerun-planner")
async def rerun_planner(ctx: NodeContext, inputs: BatchPlanInputs) -> Batches:
    """Split the reruns into batches, each with its own recorded seeds."""
    base = inputs.seed if inputs.seed is not None else int(await ctx.random() * 2**31)
    size = max(1, inputs.batch)
    # independent draws, not a progression: PYTHONHASHSEED feeds an LCG, and evenly
    # spaced seeds give correlated hash keys (a biased sample of the flake's rate)
    draw = random.Random(base)
    seeds = [draw.randrange(1, 4_294_967_295) for _ in range(max(0, inputs.runs))]
    return Batches(
        batches=[
            Batch(index=i // size, seeds=seeds[i : i + size]) for i in range(0, len(seeds), size)
        ]
    )


class RerunnerPorts(BaseModel):
    batch: Batch
    intake: Intake
    prepared_dir: str


@node(
    "flake-rerunner",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=900,
    budget=worst_case(900),
)
async def flake_rerunner(ctx: NodeContext, inputs: RerunnerPorts) -> BatchOut:
    """Run the test command once per seed of the batch, each in a fresh process."""
    records = await run_seeds(ctx, inputs.intake, inputs.batch.seeds)
    runs = [
        RunOutcome(
            seed=r.seed, code=r.code, failed=failed_ids(inputs.intake, r), duration=r.duration
        )
        for r in records
    ]
    tail = next((r.output_tail for r in records if r.code != 0), "")
    return BatchOut(result=BatchResult(index=inputs.batch.index, runs=runs, tail=tail[-2000:]))


class ReportInputs(BaseModel):
    results: list[BatchResult]


@node("flake-report")
async def flake_report(ctx: NodeContext, inputs: ReportInputs) -> ReportOut:
    """Per-test failure rates with 95% intervals, and the seeds of the failing runs."""
    runs = [run for result in inputs.results for run in result.runs]
    rates = stats.rates([run.failed for run in runs], len(runs))
    target = rates[0].test if rates else None
    failing = [run.seed for run in runs if target is not None and target in run.failed]
    sample = next((r.tail for r in inputs.results if r.tail), "")
    report = Report(
        runs=len(runs),
        failures=sum(1 for run in runs if run.failed),
        rates=rates,
        target=target,
        failing_seeds=failing,
        sample_output=sample,
    )
    await ctx.log("reruns", runs=report.runs, failures=report.failures, target=target or "none")
    return ReportOut(report=report)


class BisectInputs(BaseModel):
    intake: Intake
    report: Report
    good: str | None
    prepared_dir: str


def _target_argv(intake: Intake, target: str | None) -> list[str]:
    if target is None or target == "<the whole command>":
        return intake.argv
    return runners.test_command(intake.runner, intake.argv, target)


@node(
    "bisector",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=2 * 3600,
    budget=worst_case(2 * 3600),
)
async def bisector(ctx: NodeContext, inputs: BisectInputs) -> BisectOut:
    """Flaky-aware bisection from a good to the bad revision (stepping back through
    history to find a good one when none is given); known failing seeds go first."""
    return BisectOut(bisected=await _bisect(ctx, inputs))


async def _bisect(ctx: NodeContext, inputs: BisectInputs) -> Bisected:
    """Flaky-aware bisection from a good to the bad revision (stepping back through
    history to find a good one when none is given); known failing seeds go first."""
    report, intake = inputs.report, inputs.intake
    if report.target is None:
        return Bisected(
            first_bad=None,
            parent=None,
            good=None,
            subject="",
            diffstat="",
            trials_per_commit=0,
            log=[],
            message=f"no failure in {report.runs} runs: nothing to bisect",
        )
    rate = next(r for r in report.rates if r.test == report.target)
    trials = stats.trials_to_detect(rate.low, MISS)
    # The whole command, not just the test: on commits before the test existed, "not
    # found" must read as good, and a build that breaks must read as skip.
    argv = intake.argv
    known = report.failing_seeds[:KNOWN_SEEDS_FIRST]
    draw = random.Random(known[0] if known else 1)
    fresh = [draw.randrange(1, 4_294_967_295) for _ in range(trials)]
    seeds = (known + [s for s in fresh if s not in known])[:trials] if trials > 1 else known[:1]
    seeds = seeds or fresh[:trials]
    log: list[str] = []
    seen: dict[str, Verdict] = {}

    async def probe(sha: str) -> tuple[Verdict, int]:
        if sha in seen:
            return seen[sha], 0
        await checkout(ctx, sha)
        used = 0
        for chunk in (seeds[: len(known)], seeds[len(known) :]):
            if not chunk:
                continue
            records = await run_seeds(ctx, intake, chunk, argv)
            used += len(records)
            for record in records:
                if record.code != 0 and runners.broke(
                    intake.runner, record.code, record.output_tail
                ):
                    verdict: Verdict = "skip"
                    break
                if report.target in failed_ids(intake, record) or (
                    record.code != 0 and report.target == "<the whole command>"
                ):
                    verdict = "bad"
                    break
            else:
                continue
            break
        else:
            verdict = "good"
        seen[sha] = verdict
        log.append(f"{sha[:12]}: {verdict} after {used} run(s)")
        await ctx.log("bisect", commit=sha, verdict=verdict, runs=used)
        # a restore point: after a crash the hunt resumes after this step, not before it
        await ctx.checkpoint(f"bisect {sha[:12]} {verdict}")
        return verdict, used

    bad = intake.sha
    good = inputs.good
    if good is None:
        history = (await ctx.exec(["git", "rev-list", "--first-parent", f"{bad}~1"])).stdout.split()
        good, _steps = await find_good(history, probe)
        # the oldest commit found bad while stepping back is a tighter bad end
        for sha in reversed(history[: history.index(good)] if good in history else []):
            if seen.get(sha) == "bad":
                bad = sha
                break
        if good is None:
            return Bisected(
                first_bad=None,
                parent=None,
                good=None,
                subject="",
                diffstat="",
                trials_per_commit=trials,
                log=log,
                message=(
                    "the tests could not run on any ancestor tried (every probe was a skip)"
                    if seen and all(v == "skip" for v in seen.values())
                    else "the failure reproduces on every ancestor down to the root commit"
                ),
            )
    else:
        good = (
            await ctx.exec(["git", "rev-parse", f"{good}^{{commit}}"], check=True)
        ).stdout.strip()
    path = await ctx.exec(
        ["git", "rev-list", "--reverse", "--ancestry-path", f"{good}..{bad}"], check=True
    )
    commits = [good, *path.stdout.split()]
    result = await bisect(commits, probe)
    subject = diffstat = ""
    parent = None
    if result.first_bad is not None:
        shown = await ctx.exec(
            ["git", "show", "--stat", "--format=%s", result.first_bad], check=True
        )
        subject, _, diffstat = shown.stdout.partition("\n")
        parent = (
            await ctx.exec(["git", "rev-parse", f"{result.first_bad}~1"], check=True)
        ).stdout.strip()
    return Bisected(
        first_bad=result.first_bad,
        parent=parent,
        good=good,
        subject=subject.strip(),
        diffstat=diffstat.strip(),
        trials_per_commit=trials,
        log=log,
        message=result.message,
    )


class ReproInputs(BaseModel):
    intake: Intake
    report: Report
    bisected: Bisected
    prepared_dir: str


def repro_command(intake: Intake, target: str | None, seed: int | None) -> str:
    """The command a person runs in their own checkout (with the test dependencies
    installed): the sandbox's PATH is left out, everything else that matters is kept."""
    env = {k: v for k, v in intake.runner.env.items() if k != "PATH"}
    if seed is not None:
        env.update({name: str(seed) for name in intake.runner.seed_env})
    argv = _target_argv(intake, target)
    if seed is not None:
        argv = [*argv, *intake.runner.seed_args(seed)]
    assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    return " ".join([*assignments, shlex.join(argv)])


@node(
    "repro-builder",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=1800,
    budget=worst_case(1800),
)
async def repro_builder(ctx: NodeContext, inputs: ReproInputs) -> ReproOut:
    """The smallest reproducing command (test id + seed + environment), checked to fail
    on the first bad commit and to pass on its parent."""
    return ReproOut(repro=await _repro(ctx, inputs))


async def _repro(ctx: NodeContext, inputs: ReproInputs) -> Repro:
    report, intake, found = inputs.report, inputs.intake, inputs.bisected
    seeded = bool(intake.runner.seed_env or intake.runner.seed_args(1))
    seed = report.failing_seeds[0] if report.failing_seeds and seeded else None
    command = repro_command(intake, report.target, seed)
    if found.first_bad is None or found.parent is None:
        return Repro(command=command, seed=seed, fails_on_bad=False, passes_on_parent=False)
    # a seed-driven failure reproduces in one run with its seed; otherwise the trials the
    # measured rate needs
    trials = 3 if seed is not None else max(1, min(found.trials_per_commit, 50))
    seeds = [seed] * trials if seed is not None else list(range(1, trials + 1))

    # The repro itself on the first bad commit; on the parent, the whole command with the
    # same seeds (the test may not exist there yet), where the test must not fail.
    await checkout(ctx, found.first_bad)
    records = await run_seeds(ctx, intake, seeds, _target_argv(intake, report.target))
    on_bad = sum(1 for r in records if r.code != 0)
    await checkout(ctx, found.parent)
    records = await run_seeds(ctx, intake, seeds, intake.argv)
    on_parent = sum(1 for r in records if report.target in failed_ids(intake, r))
    return Repro(
        command=command, seed=seed, fails_on_bad=on_bad > 0, passes_on_parent=on_parent == 0
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
    records = await run_seeds(ctx, intake, seeds, _target_argv(intake, report.target))
    failures = sum(1 for r in records if r.code != 0)
    await ctx.exec(["git", "checkout", "--quiet", "--force", "--", "."], check=True)
    return Fix(
        diff=diff,
        verified=failures == 0,
        failures_after=failures,
        runs_after=len(records),
        note="checked by rerunning the repro and a batch of fresh seeds",
    )


class AuthorInputs(BaseModel):
    repo: str
    intake: Intake
    report: Report
    bisected: Bisected
    repro: Repro
    fix: Fix
    prepared_dir: str


def facts_of(inputs: AuthorInputs) -> pr.HuntFacts:
    report, found, fix = inputs.report, inputs.bisected, inputs.fix
    rate = next((r for r in report.rates if r.test == report.target), None)
    return pr.HuntFacts(
        repo=inputs.repo,
        test=report.target or "(none)",
        runner=inputs.intake.runner.framework,
        runs=max(1, report.runs),
        failures=rate.failures if rate else 0,
        rate=rate.rate if rate else 0.0,
        low=rate.low if rate else 0.0,
        high=rate.high if rate else 0.0,
        first_bad=found.first_bad,
        first_bad_subject=found.subject,
        first_bad_diffstat=found.diffstat,
        parent=found.parent,
        repro=inputs.repro.command,
        trials_per_commit=max(1, found.trials_per_commit),
        miss_chance=MISS,
        fix_diff=fix.diff if fix.verified else None,
        fix_verified=fix.verified,
        rate_after=(fix.failures_after, fix.runs_after)
        if fix.verified and fix.failures_after is not None and fix.runs_after is not None
        else None,
        bisect_log=found.log,
    )


async def author(ctx: NodeContext, inputs: AuthorInputs) -> AuthoredOut:
    """A branch with the repro script (and the verified fix), its description and patch."""
    facts = facts_of(inputs)
    branch = pr.branch_name(facts.test)
    await checkout(ctx, inputs.intake.sha)
    await ctx.exec(["git", "checkout", "--quiet", "-B", branch], check=True)
    script_path = pr.repro_path(facts.test)
    await ctx.write(script_path, pr.repro_script(facts))
    await ctx.exec(["chmod", "+x", script_path], check=True)
    if facts.fix_diff:
        await ctx.exec(
            ["git", "apply", "--index", "--whitespace=nowarn", "-"],
            stdin=facts.fix_diff,
            check=True,
        )
    # Only the repro script and the fix: not what the install left in the tree (a venv,
    # node_modules, a package-lock.json written by `npm install`), which would also make
    # pr-open's `git am` collide with the same untracked file in its checkout.
    await ctx.exec(["git", "add", "--", script_path], check=True)
    title = pr.title(facts)
    commit = 'git diff --cached --quiet || git commit --quiet --no-verify -m "$0" -m "$1"'
    await ctx.exec(
        ["sh", "-c", commit, title, f"Reproduces with: {facts.repro}"], env=GIT_ENV, check=True
    )
    patch = await ctx.exec(["git", "format-patch", "-1", "--stdout", branch], check=True)
    authored = Authored(
        base_sha=inputs.intake.sha,
        branch=branch,
        title=title,
        description=pr.description(facts, script_path=script_path),
        diff=patch.stdout,
        facts=facts,
    )
    return AuthoredOut(authored=authored, diff=patch.stdout)


pr_author = node(
    "pr-author", workspace="prepared_dir", effects={"fs"}, timeout=600, budget=worst_case(600)
)(author)
reviewed_pr_author = node(
    "pr-author",
    workspace="prepared_dir",
    effects={"fs"},
    timeout=600,
    budget=worst_case(600),
    gate="review",
)(author)


class OpenInputs(BaseModel):
    repo: str
    workdir: str
    base: str
    github: str | None
    github_api: str | None
    authored: Authored
    prepared_dir: str


@node(
    "pr-open",
    workspace="prepared_dir",
    effects={"fs", "net"},
    timeout=600,
    budget=worst_case(600),
    retry=Retry(max_attempts=3, base_delay=2),
)
async def pr_open(ctx: NodeContext, inputs: OpenInputs) -> OpenedOut:
    """Publish the reviewed patch as a branch; open the pull request when a GitHub
    repository and a token (GITHUB_TOKEN) are configured."""
    from orchestrator.agents import github

    hunt, authored = inputs, inputs.authored
    # exactly what was reviewed at the gate: the patch, applied on the bad revision
    await checkout(ctx, authored.base_sha)
    await ctx.exec(["git", "checkout", "--quiet", "-B", authored.branch], check=True)
    await ctx.exec(
        ["git", "am", "--quiet", "--keep-cr"], stdin=authored.diff, env=GIT_ENV, check=True
    )
    patch_file = await ctx.tool(
        "write-patch",
        host.write_text,
        f"{hunt.workdir}/{authored.branch.rsplit('/', 1)[-1]}.patch",
        authored.diff,
    )
    local = await ctx.tool("is-local", _is_local_repo, hunt.repo)
    if local:
        published = await ctx.tool(
            "publish-branch", host.publish_branch, hunt.repo, authored.branch
        )
    else:
        published = await ctx.tool("push-branch", host.push_branch, hunt.repo, authored.branch)
    url = None
    note = f"branch {authored.branch} is in {hunt.repo}; the patch is {patch_file}"
    if hunt.github:
        owner, _, name = hunt.github.partition("/")
        remote = github.GitHubRemote(
            owner=owner, repo=name, api=hunt.github_api or "https://api.github.com"
        )
        token = await ctx.tool("has-token", _has_token)
        if token:
            opened = await ctx.tool(
                "open-pull-request",
                _open_pr,
                remote.model_dump(),
                authored.branch,
                hunt.base,
                authored.title,
                authored.description,
            )
            url = str(opened["url"])
            note = f"opened {url}"
        else:
            note += "; set GITHUB_TOKEN to open the pull request"
    opened = Opened(
        branch=authored.branch,
        published=str(published),
        pull_request=url,
        patch_file=str(patch_file),
        note=note,
    )
    return OpenedOut(opened=opened)


def _is_local_repo(repo: str) -> bool:
    from pathlib import Path

    return Path(repo).is_dir()


def _has_token() -> bool:
    import os

    return bool(os.environ.get("GITHUB_TOKEN"))


async def _open_pr(
    remote: dict[str, Any], head: str, base: str, title: str, body: str, idempotency_key: str
) -> dict[str, Any]:
    """Open the PR with the token from the environment (never recorded)."""
    import os

    from orchestrator.agents import github

    pull = await github.open_pull_request(
        github.GitHubRemote.model_validate(remote),
        os.environ["GITHUB_TOKEN"],
        head=head,
        base=base,
        title=title,
        body=body,
        idempotency_key=idempotency_key,
    )
    return pull.model_dump(mode="json")


class NotifyInputs(BaseModel):
    authored: Authored
    opened: Opened


@node("notifier")
async def notifier(ctx: NodeContext, inputs: NotifyInputs) -> Summary:
    """The hunt's summary, on the record (and printed by the CLI)."""
    facts = inputs.authored.facts
    lines = [
        f"flaky test: {facts.test} ({facts.failures}/{facts.runs} runs failed, "
        f"{facts.rate:.1%}, 95% CI {facts.low:.1%} to {facts.high:.1%})",
        f"first failing commit: {facts.first_bad or 'not found'} {facts.first_bad_subject}",
        f"reproduce: {facts.repro}",
        f"fix: {'verified' if facts.fix_verified else 'none proposed'}",
        inputs.opened.note,
    ]
    summary = "\n".join(lines)
    await ctx.log("summary", text=summary)
    return Summary(summary=summary)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
