"""``pr-author`` commits the repro (and a verified fix) on a branch with a description
and a patch, held at the review gate when approvers are configured; ``pr-open``
publishes exactly the reviewed patch and opens the pull request; ``notifier`` sums up."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from orchestrator.agents import host
from orchestrator.agents.budgets import worst_case
from orchestrator.agents.intake import Intake
from orchestrator.agents.repo_facts import RepoFacts, Signature, parse_signature, read_repo_facts
from orchestrator.errors import TransientError
from orchestrator.node import Retry, node
from orchestrator.runtime.context import NodeContext
from orchestrator.sinks import SinkConfig, SummaryNotice, deliver
from orchestrator.workloads.flaky_hunt import pull_request as pr
from orchestrator.workloads.flaky_hunt.nodes.bisector import MISS
from orchestrator.workloads.flaky_hunt.ports import (
    Authored,
    AuthoredOut,
    Bisected,
    Fix,
    Opened,
    OpenedOut,
    Report,
    Repro,
    Summary,
)
from orchestrator.workloads.flaky_hunt.seeded_runs import checkout

FALLBACK_IDENTITY = Signature(name="Orchestrator", email="orchestrator@localhost.invalid")
"""Who commits when neither ``--author`` nor the repository's git config names anyone."""

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost.invalid",
    "GIT_COMMITTER_NAME": "Orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


class AuthorInputs(BaseModel):
    repo: str
    workdir: str
    base: str | None
    author: str | None
    intake: Intake
    report: Report
    bisected: Bisected
    repro: Repro
    fix: Fix
    prepared_dir: str


def facts_of(inputs: AuthorInputs, *, name: str, review_gate: bool) -> pr.HuntFacts:
    """The hunt's facts, the repository named ``name`` (never a host path)."""
    report, found, fix = inputs.report, inputs.bisected, inputs.fix
    rate = next((r for r in report.rates if r.test == report.target), None)
    return pr.HuntFacts(
        repo=name,
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
        repro=inputs.repro.command
        if inputs.repro.fails_on_bad
        else (inputs.repro.whole_command or inputs.repro.command),
        unconfirmed_repro=None if inputs.repro.fails_on_bad else inputs.repro.command,
        repro_seed=inputs.repro.seed,
        fails_every_run=inputs.repro.fails_every_run,
        trials_per_commit=max(1, found.trials_per_commit),
        miss_chance=MISS,
        fix_diff=fix.diff if fix.verified else None,
        fix_verified=fix.verified,
        rate_after=(fix.failures_after, fix.runs_after)
        if fix.verified and fix.failures_after is not None and fix.runs_after is not None
        else None,
        bisect_log=found.log,
        review_gate=review_gate,
    )


def git_env(author: Signature, committer: Signature, when: datetime) -> dict[str, str]:
    """The environment a commit by ``author``, committed by ``committer`` at ``when``
    (recorded, so a replay makes the same bytes), is made with."""
    date = f"{int(when.timestamp())} +0000"
    return {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": committer.name,
        "GIT_COMMITTER_EMAIL": committer.email,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
    }


async def _start_point(ctx: NodeContext, sha: str, base: str) -> str:
    """The tip of ``base`` in the clone when it holds the hunted commit ``sha`` (so the
    pull request is on the branch it targets), else ``sha`` itself."""
    tip = await ctx.exec(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{base}^{{commit}}"]
    )
    if not tip.ok or not tip.stdout.strip():
        return sha
    holds = await ctx.exec(["git", "merge-base", "--is-ancestor", sha, tip.stdout.strip()])
    return tip.stdout.strip() if holds.ok else sha


async def author(ctx: NodeContext, inputs: AuthorInputs) -> AuthoredOut:
    """A branch with the repro script (and the verified fix), its description and patch."""
    return await _author(ctx, inputs, review_gate=False)


async def reviewed_author(ctx: NodeContext, inputs: AuthorInputs) -> AuthoredOut:
    """:func:`author`, for a pull request a person reviews at the gate."""
    return await _author(ctx, inputs, review_gate=True)


async def _author(ctx: NodeContext, inputs: AuthorInputs, *, review_gate: bool) -> AuthoredOut:
    # who commits, the target branch and the date: decided once, on the record
    known = RepoFacts.model_validate(
        await ctx.tool(
            "repo-facts",
            read_repo_facts,
            inputs.repo,
            inputs.intake.sha,
            f"{inputs.workdir}/checkout",
        )
    )
    committer = known.identity or FALLBACK_IDENTITY
    signed = parse_signature(inputs.author) if inputs.author else committer
    env = git_env(signed, committer, await ctx.now())
    base = inputs.base or known.default_branch or "main"
    facts = facts_of(inputs, name=known.name, review_gate=review_gate)
    branch = host.branch_for_run(pr.branch_name(facts.test), ctx.run_id)
    script_path = pr.repro_path(facts.test)
    start = await _start_point(ctx, inputs.intake.sha, base)
    while True:
        await checkout(ctx, start)
        await ctx.exec(["git", "checkout", "--quiet", "-B", branch], check=True)
        await ctx.write(script_path, pr.repro_script(facts))
        await ctx.exec(["chmod", "+x", script_path], check=True)
        if not facts.fix_diff:
            break
        applied = await ctx.exec(
            ["git", "apply", "--index", "--whitespace=nowarn", "-"],
            stdin=facts.fix_diff,
            check=start == inputs.intake.sha,
        )
        if applied.ok:
            break
        start = inputs.intake.sha  # the fix does not apply on the tip: on the hunted commit
    # Only the repro script and the fix: not what the install left in the tree (a venv,
    # node_modules, a package-lock.json written by `npm install`), which would also make
    # pr-open's `git am` collide with the same untracked file in its checkout.
    await ctx.exec(["git", "add", "--", script_path], check=True)
    title = pr.title(facts)
    commit = 'git diff --cached --quiet || git commit --quiet --no-verify -m "$0" -m "$1"'
    await ctx.exec(
        ["sh", "-c", commit, title, f"Reproduces with: {facts.repro}"], env=env, check=True
    )
    patch = await ctx.exec(["git", "format-patch", "-1", "--stdout", branch], check=True)
    authored = Authored(
        base_sha=start,
        branch=branch,
        title=title,
        description=pr.description(facts, script_path=script_path),
        diff=patch.stdout,
        facts=facts,
        base=base,
        git_env=env,
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
)(reviewed_author)


class OpenInputs(BaseModel):
    repo: str
    workdir: str
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
    # only the network is retried; any other failure parks the run, resumable once fixed
    retry=Retry(max_attempts=3, base_delay=2, on=TransientError, exhausted="park"),
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
        ["git", "am", "--quiet", "--keep-cr"],
        stdin=authored.diff,
        env=authored.git_env or GIT_ENV,
        check=True,
    )
    patch_file = await ctx.tool(
        "write-patch",
        host.write_text,
        f"{hunt.workdir}/{authored.branch.rsplit('/', 1)[-1]}.patch",
        authored.diff,
    )
    description_file = await ctx.tool(
        "write-description",
        host.write_text,
        str(patch_file).removesuffix(".patch") + ".md",
        authored.description,
    )
    published = await host.publish(ctx, hunt.repo, authored.branch)
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
                authored.base,
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
        description_file=str(description_file),
    )
    return OpenedOut(opened=opened)


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
    notify: list[str]


async def send_summary(sink: dict[str, Any], notice: dict[str, Any]) -> dict[str, Any]:
    """Deliver a summary to one sink (retried inside; never raises for a failed send)."""
    done = await deliver(SinkConfig.model_validate(sink), SummaryNotice.model_validate(notice))
    return done.model_dump(mode="json")


@node("notifier", effects={"net"})
async def notifier(ctx: NodeContext, inputs: NotifyInputs) -> Summary:
    """The hunt's summary: on the record, printed by the CLI, and sent to the run's
    notification sinks (each delivery's outcome journaled)."""
    facts = inputs.authored.facts
    lines = [
        pr.rate_line(facts.test, facts.failures, facts.runs, facts.rate, facts.low, facts.high),
        pr.first_bad_line(facts.first_bad, facts.first_bad_subject),
        pr.repro_line(facts.repro, facts.unconfirmed_repro),
        f"fix: {'verified' if facts.fix_verified else 'none proposed'}",
        inputs.opened.note,
    ]
    if inputs.opened.description_file:
        lines.append(f"pull request description: {inputs.opened.description_file}")
    summary = "\n".join(lines)
    await ctx.log("summary", text=summary)
    notice = SummaryNotice(
        run_id=ctx.run_id, name="flaky-hunt", title=f"Flaky test hunt: {facts.test}", text=summary
    )
    for raw in inputs.notify:
        sink = SinkConfig.parse(raw)
        done = await ctx.tool("notify", send_summary, sink.model_dump(), notice.model_dump())
        if not done["ok"]:
            await ctx.log("summary not delivered", sink=done["sink"], error=done["error"])
    return Summary(summary=summary)
