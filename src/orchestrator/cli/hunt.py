"""``flaky-hunt``: rerun, bisect, reproduce and fix a flaky test; its progress and report."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from orchestrator.cli.hunt_results import FINDINGS, finding, known
from orchestrator.cli.options import (
    ApproverOpt,
    BudgetOpt,
    ConcurrencyOpt,
    JsonOpt,
    LlmOpt,
    ModelOpt,
    NotifyOpt,
    SandboxOpt,
    _config,
)
from orchestrator.cli.progress import _drive, _summary
from orchestrator.cli.root import EXIT_ABORTED, EXIT_FAILED, EXIT_PARKED, _runtime, app, err, out

if TYPE_CHECKING:
    from orchestrator.ledger.events import BaseEvent
    from orchestrator.ledger.state import RunState
    from orchestrator.runtime.engine import Runtime


def _check_author(value: str | None) -> str | None:
    from orchestrator.agents.repo_facts import parse_signature

    if value is not None:
        try:
            parse_signature(value)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return value


@app.command("flaky-hunt")
def flaky_hunt(
    ctx: typer.Context,
    repo: str = typer.Option(..., "--repo", help="The repository: a path or a git URL"),
    test: str = typer.Option(..., "--test", help="The test command, e.g. 'python -m pytest'"),
    runs: int = typer.Option(1000, "--runs", min=1, max=100_000, help="Reruns of the suite"),
    batch: int = typer.Option(25, "--batch", min=1, help="Reruns per sandbox"),
    good: str | None = typer.Option(None, "--good", help="A revision known to pass"),
    bad: str = typer.Option("HEAD", "--bad", help="The revision that flakes"),
    base: str | None = typer.Option(
        None, "--base", help="The branch the pull request targets (default: the repository's)"
    ),
    author: str | None = typer.Option(
        None,
        "--author",
        help="'Name <email>' the commit is by (default: the repository's git user)",
        callback=_check_author,
    ),
    github: str | None = typer.Option(
        None, "--github", help="OWNER/REPO to open the pull request in (token: GITHUB_TOKEN)"
    ),
    github_api: str | None = typer.Option(None, "--github-api", help="GitHub API URL"),
    seed: int | None = typer.Option(
        None, "--seed", help="Draw the reruns' seeds from this (default: a recorded random one)"
    ),
    regression: bool = typer.Option(
        False, "--regression", help="Bisect a test that fails on every run as a regression"
    ),
    approver: list[str] = ApproverOpt,
    notify: list[str] = NotifyOpt,
    budget: str | None = BudgetOpt,
    llm: str | None = LlmOpt,
    model: str | None = ModelOpt,
    concurrency: int = ConcurrencyOpt,
    sandbox: str = SandboxOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = JsonOpt,
) -> None:
    """Hunt a flaky test: rerun the suite many times in parallel sandboxes, bisect to the
    first failing commit, build a repro, propose a fix (with --llm), prepare the PR."""
    from orchestrator.sinks import SinkConfig
    from orchestrator.workloads import flaky_hunt as workload
    from orchestrator.workloads.flaky_hunt.preflight import check_inputs

    rt = _runtime(ctx)
    gated = any(item.startswith("review=") for item in approver)
    config = _config(
        None,
        approver,
        budget,
        concurrency,
        sandbox,
        notify=[SinkConfig.parse(n) for n in notify],
        llm=llm,
        model=model,
    )
    workdir = rt.home / "hunts" / f"{rt.clock.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    config = config.model_copy(update={"workspace_roots": [str(rt.home / "hunts")]})
    if -(-runs // batch) > workload.MAX_BATCHES:
        batch = -(-runs // workload.MAX_BATCHES)
        err.print(
            f"{runs} runs make more than {workload.MAX_BATCHES} batches: {batch} runs per batch"
        )
    # refused here, before any run exists, rather than after intake and the reruns
    repo = check_inputs(repo, good, bad, workdir / "checkout")
    values = {
        "repo": repo,
        "test": test,
        "runs": runs,
        "batch": batch,
        "good": good,
        "bad": bad,
        "workdir": str(workdir),
        "base": base,
        "author": author,
        "github": github,
        "github_api": github_api,
        "seed": seed,
        "notify": notify,
        "regression": regression,
    }
    plan = workload.reviewed if gated else workload.plan
    ref = workload.REVIEWED_REF if gated else workload.PLAN_REF
    progress = () if quiet or as_json else (_hunt_progress(runs),)
    state = _drive(
        rt,
        lambda ls: rt.start(plan, values, config, plan_ref=ref, listeners=(*ls, *progress)),
        None,
        quiet or as_json,
    )
    _hunt_report(rt, state, as_json)


def _hunt_progress(runs: int) -> Callable[[BaseEvent], None]:
    """Hunt milestones on stderr: reruns done and failures seen, the bisection range."""
    from orchestrator.ledger.events import EffectRecorded, NodeSucceeded

    seen = {"runs": 0, "failed": 0}

    def show(event: BaseEvent) -> None:
        if isinstance(event, NodeSucceeded) and event.node.startswith(
            ("flake-rerunner[", "rerun-probe")
        ):
            result = event.outputs["first" if event.node == "rerun-probe" else "result"]
            batch = result["runs"]
            seen["runs"] += len(batch)
            seen["failed"] += sum(1 for run in batch if run["failed"])
            err.print(
                f"  reruns: {seen['runs']}/{runs} done, {seen['failed']} failed", highlight=False
            )
        elif isinstance(event, NodeSucceeded) and event.node in FINDINGS:
            line = finding(event.node, event.outputs)  # on the record: print it now
            if line is not None:
                err.print(f"  found: {line}", highlight=False, markup=False)
        elif isinstance(event, EffectRecorded) and event.effect == "log":
            request = event.request if isinstance(event.request, dict) else {}
            fields, message = request.get("fields", {}), request.get("message")
            if message == "bisect-range":
                err.print(
                    f"  bisect: {fields.get('commits')} commit(s) between good "
                    f"{str(fields.get('good'))[:12]} and bad {str(fields.get('bad'))[:12]}",
                    highlight=False,
                )
            elif message == "bisect":
                where = ""
                if "left" in fields:
                    where = (
                        f"; {fields['left']} left between {str(fields['good'])[:12]}"
                        f"..{str(fields['bad'])[:12]}"
                    )
                err.print(
                    f"  bisect: {str(fields.get('commit'))[:12]} is {fields.get('verdict')} "
                    f"({fields.get('runs')} run(s)){where}",
                    highlight=False,
                )
            elif message == "reruns":
                err.print(
                    f"  reruns: flakiest test {fields.get('target')}: "
                    f"{fields.get('failures')} of {fields.get('runs')} runs failed",
                    highlight=False,
                )

    return show


def _hunt_report(rt: Runtime, state: RunState, as_json: bool) -> None:
    from orchestrator.cli.views import state_json

    if as_json:
        out.print_json(data=state_json(state, rt.live_status(state)))
    else:
        notifier = state.nodes.get("notifier")
        authored = state.nodes.get("pr-author")
        if notifier is not None and notifier.outputs:
            out.print(notifier.outputs["summary"], highlight=False, markup=False)
        elif authored is not None and authored.held is not None:
            out.print(authored.held.outputs["authored"]["description"], markup=False)
        else:  # ended before its summary: what it found stands, whatever failed after
            for line in known(state):
                out.print(line, highlight=False, markup=False)
        _summary(state, where=rt.where())
    status = rt.live_status(state)
    if status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if status == "parked":
        raise typer.Exit(EXIT_PARKED)
    if status == "aborted":
        raise typer.Exit(EXIT_ABORTED)
