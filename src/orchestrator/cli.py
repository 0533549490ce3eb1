"""The ``orchestrator`` command line (Typer + Rich).

Exit codes: 0 success, 1 run failed or error, 2 invalid plan (``plan check``, ``run``),
3 run parked (paused, or waiting at a gate; resume or approve it later), 4 run aborted at
its budget ceiling (resume it with ``--budget``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator import gates, receipts, signing
from orchestrator.budget import Prices
from orchestrator.errors import ConfigError, LedgerError, OrchestratorError, UserError
from orchestrator.ledger.events import BaseEvent, RunStarted
from orchestrator.ledger.state import RunState
from orchestrator.node import Budget
from orchestrator.plan import RunConfig
from orchestrator.runtime.engine import Runtime
from orchestrator.runtime.loader import load_plan, normalize_ref
from orchestrator.sinks import SinkConfig
from orchestrator.views import event_line, node_table, run_view, state_json

app = typer.Typer(
    name="orchestrator",
    help="Durable, typed, parallel runs of agent work: plan, run, pause, resume, replay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plan_app = typer.Typer(help="Check plans before running them.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
sandbox_app = typer.Typer(help="Try the sandboxes by hand.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
keys_app = typer.Typer(help="Approvers' signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_INVALID, EXIT_PARKED, EXIT_ABORTED = 1, 2, 3, 4


@app.callback()
def _global(
    ctx: typer.Context,
    home: Path | None = typer.Option(
        None,
        "--home",
        envvar="ORCHESTRATOR_HOME",
        help="State directory [default: ./.orchestrator]",
    ),
    ledger: str | None = typer.Option(
        None, "--ledger", envvar="ORCHESTRATOR_LEDGER", help="Ledger URL [default: sqlite in home]"
    ),
    objects: str | None = typer.Option(
        None,
        "--objects",
        envvar="ORCHESTRATOR_OBJECTS",
        help="Checkpoint object store: a directory or s3://bucket/prefix [default: home/objects]",
    ),
) -> None:
    ctx.obj = {"home": home, "ledger": ledger, "objects": objects}


def _runtime(ctx: typer.Context, objects: str | None = None) -> Runtime:
    obj = ctx.find_root().obj or {}
    return Runtime(
        home=obj.get("home"), ledger=obj.get("ledger"), objects=objects or obj.get("objects")
    )


# ---- options shared by run and plan check --------------------------------------------------


def _parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` gives a string (Pydantic converts it to the declared type); ``k:=JSON`` JSON."""
    values: dict[str, Any] = {}
    for pair in pairs:
        if ":=" in pair:
            key, _, raw = pair.partition(":=")
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"--input {pair!r}: the value after := is not JSON ({exc})"
                ) from None
        elif "=" in pair:
            key, _, raw = pair.partition("=")
            values[key] = raw
        else:
            raise ConfigError(f"--input {pair!r}: expected KEY=VALUE or KEY:=JSON")
    return values


def _parse_budget(text: str | None) -> Budget | None:
    """``tokens=N,compute_h=H,spend=USD``: all three, so no dimension is zero by accident."""
    if not text:
        return None
    names = {
        "tokens": "tokens",
        "compute_h": "compute_h",
        "spend": "spend_usd",
        "spend_usd": "spend_usd",
    }
    fields: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in names:
            raise ConfigError(
                f"--budget {text!r}: unknown dimension {key!r} (tokens, compute_h, spend)"
            )
        try:
            fields[names[key.strip()]] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {text!r}: {value!r} is not a number") from None
    missing = {"tokens", "compute_h", "spend_usd"} - fields.keys()
    if missing:
        raise ConfigError(
            f"--budget {text!r}: name every dimension of the ceiling (tokens, compute_h, "
            f"spend); missing {', '.join(sorted(missing))}. A dimension you do not want to "
            "limit can be given a large number."
        )
    try:
        return Budget(
            tokens=int(fields["tokens"]),
            compute_h=fields["compute_h"],
            spend_usd=fields["spend_usd"],
        )
    except ValidationError as exc:
        raise ConfigError(f"--budget {text!r}: {exc.errors()[0]['msg']}") from None


def _config(
    allow: str | None,
    approvers: list[str],
    budget: str | None,
    concurrency: int,
    sandbox: str = "auto",
    **extra: Any,
) -> RunConfig:
    gates: dict[str, list[str]] = {}
    for item in approvers:
        gate, sep, key = item.partition("=")
        if not sep or not gate or not key:
            raise ConfigError(f"--approver {item!r}: expected GATE=PUBLIC_KEY")
        gates.setdefault(gate, []).append(key)
    if sandbox not in ("auto", "gvisor", "bwrap", "local"):
        raise ConfigError(f"--sandbox {sandbox!r}: choose auto, gvisor, bwrap or local")
    kwargs: dict[str, Any] = {
        "sandbox": sandbox,
        "approvers": gates,
        "budget": _parse_budget(budget),
        "concurrency": concurrency,
        **{k: v for k, v in extra.items() if v is not None},
    }
    if allow is not None:
        kwargs["allow_effects"] = frozenset(e.strip() for e in allow.split(",") if e.strip())
    try:
        return RunConfig(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"bad run configuration: {problems}") from None


def _prices(path: Path | None) -> Prices | None:
    if path is None:
        return None
    try:
        return Prices.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"--prices {path}: cannot read it ({exc.strerror})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"--prices {path}: not a price table ({problems}); expected JSON like "
            '{"models": {"claude-sonnet-4*": {"input_per_mtok": 3, "output_per_mtok": 15}}, '
            '"compute_h_usd": 0.1}'
        ) from None


AllowOpt = typer.Option(None, "--allow", help="Effects the run allows, e.g. fs,net [default: all]")
ApproverOpt = typer.Option([], "--approver", help="GATE=PUBLIC_KEY (repeatable)")
BudgetOpt = typer.Option(None, "--budget", help="Ceiling, e.g. tokens=2e6,compute_h=4,spend=50")
ConcurrencyOpt = typer.Option(256, "--concurrency", min=1, help="Nodes running at once")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output")
NotifyOpt = typer.Option(
    [], "--notify", help="Gate notices: slack=URL|env:VAR, webhook=URL|env:VAR (repeatable)"
)
ReceiptsOpt = typer.Option(
    [],
    "--receipts",
    help="Receipt sinks: file=PATH, webhook=…, slack=…, s3=URL [default: file in home]",
)
ReceiptEveryOpt = typer.Option(3600.0, "--receipt-every", min=0.01, help="Seconds between receipts")
LlmOpt = typer.Option(
    None, "--llm", help="Model provider: anthropic[@URL], openai[@URL] or scripted:FILE"
)
ModelOpt = typer.Option(None, "--model", help="Default model for ctx.llm calls")
PricesOpt = typer.Option(None, "--prices", help="JSON price table overriding the defaults")
SandboxOpt = typer.Option("auto", "--sandbox", help="auto, gvisor, bwrap or local (no isolation)")


# ---- driving a run with live progress ----------------------------------------------------


def _drive(
    rt: Runtime,
    start: Callable[[tuple[Callable[[BaseEvent], None], ...]], Awaitable[RunState]],
    initial: RunState | None,
    quiet: bool,
) -> RunState:
    """Run ``start`` showing a live view (TTY), event lines (pipe) or nothing (quiet)."""
    view: dict[str, RunState | None] = {"state": initial}

    def fold(event: BaseEvent) -> None:
        if isinstance(event, RunStarted):
            view["state"] = RunState.start(event)
        elif view["state"] is not None:
            view["state"].apply(event)
        if not quiet and not out.is_terminal:
            line = event_line(event)
            if line:
                out.print(line, highlight=False, markup=False)

    async def main() -> RunState:
        if quiet or not out.is_terminal:
            return await start((fold,))
        with Live(console=out, auto_refresh=False, transient=False) as live:
            task = asyncio.ensure_future(start((fold,)))
            while not task.done():
                state = view["state"]
                if state is not None:
                    live.update(run_view(state, state.status, rt.clock.now()), refresh=True)
                await asyncio.wait([task], timeout=0.25)
            final = task.result()
            live.update(run_view(final, final.status), refresh=True)
            return final

    return asyncio.run(main())


def _finish(rt: Runtime, state: RunState, as_json: bool) -> None:
    status = rt.live_status(state)
    if as_json:
        out.print_json(data=state_json(state, status))
    else:
        _summary(state)
    if status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if status == "parked":
        raise typer.Exit(EXIT_PARKED)
    if status == "aborted":
        raise typer.Exit(EXIT_ABORTED)


def _summary(state: RunState) -> None:
    rid = state.run_id
    if state.status == "succeeded":
        out.print(f"[green]run {rid} succeeded[/]: {state.summary.get('succeeded')} nodes")
    elif state.status == "failed":
        out.print(
            f"[red]run {rid} failed[/]: {len(state.summary.get('failed', {}))} node(s) failed"
        )
        for node, why in state.summary.get("failed", {}).items():
            out.print(f"  [red]{escape(node)}[/]: {escape(why)}", highlight=False)
    elif state.status == "parked" and state.awaiting():
        out.print(f"[magenta]run {rid} parked[/], waiting for a decision:")
        for ns in state.awaiting():
            if ns.held is not None:
                out.print(f"  {escape(ns.id)} at gate {escape(ns.held.gate)}", highlight=False)
                out.print(f"    approve: {escape(gates.approve_command(rid, ns.held))}")
                out.print(f"    reject:  {escape(gates.approve_command(rid, ns.held, True))}")
    elif state.status == "parked":
        out.print(f"[magenta]run {rid} parked[/]; continue with `orchestrator resume {rid}`")
    elif state.status == "aborted":
        refused = state.refused
        why = "" if refused is None else f": {refused.node} needs {'; '.join(refused.over)}"
        out.print(f"[red]run {rid} aborted at its budget ceiling[/]{escape(why)}", highlight=False)
        out.print(
            f"  continue with `orchestrator resume {rid} --budget tokens=N,compute_h=H,spend=USD`"
        )


# ---- commands -----------------------------------------------------------------------------


@app.command()
def run(
    ctx: typer.Context,
    plan_ref: str = typer.Argument(..., metavar="FILE.py:PLAN", help="The plan to run"),
    inputs: list[str] = typer.Option([], "--input", "-i", help="KEY=VALUE or KEY:=JSON"),
    allow: str | None = AllowOpt,
    approver: list[str] = ApproverOpt,
    budget: str | None = BudgetOpt,
    concurrency: int = ConcurrencyOpt,
    sandbox: str = SandboxOpt,
    checkpoint_every: float = typer.Option(
        60.0, "--checkpoint-every", min=0.01, help="Seconds between periodic checkpoints"
    ),
    notify: list[str] = NotifyOpt,
    receipts: list[str] = ReceiptsOpt,
    receipt_every: float = ReceiptEveryOpt,
    llm: str | None = LlmOpt,
    model: str | None = ModelOpt,
    prices: Path | None = PricesOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output"),
    as_json: bool = JsonOpt,
) -> None:
    """Validate a plan and run it to completion (Ctrl-C pauses: drain, then park)."""
    plan = load_plan(plan_ref)
    config = _config(
        allow,
        approver,
        budget,
        concurrency,
        sandbox,
        checkpoint_interval=checkpoint_every,
        notify=[SinkConfig.parse(n) for n in notify],
        receipts=[SinkConfig.parse(r) for r in receipts],
        receipt_interval=receipt_every,
        llm=llm,
        model=model,
        prices=_prices(prices),
    )
    values = _parse_inputs(inputs)
    rt = _runtime(ctx)

    def announce(run_id: str) -> None:
        if not as_json:
            err.print(f"run [bold]{run_id}[/] started", highlight=False)

    state = _drive(
        rt,
        lambda ls: rt.start(
            plan, values, config, plan_ref=normalize_ref(plan_ref), listeners=ls, on_start=announce
        ),
        None,
        quiet or as_json,
    )
    _finish(rt, state, as_json)


@app.command()
def demo(
    ctx: typer.Context,
    packages: int = typer.Option(6, "--packages", min=1, max=50, help="Packages in the monorepo"),
    sandbox: str = SandboxOpt,
    wait_at_gate: bool = typer.Option(
        False, "--wait-at-gate", help="Leave the run parked at its gate for a person to approve"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = JsonOpt,
) -> None:
    """Migrate a generated npm-workspaces monorepo from CommonJS to ES modules: one branch
    per package in parallel sandboxes, a signed approval at the merge gate, budget
    receipts, then a byte-identical replay."""
    from orchestrator.workloads import demo as workload

    rt = _runtime(ctx)
    repo = workload.make_monorepo(rt.home / "demo", packages)
    approver = signing.load_or_create(rt.home / "keys" / "demo-approver.key")
    notices = rt.home / "notices" / "demo.jsonl"
    config = _config(None, [f"merge={approver.public}"], None, 256, sandbox)
    config = config.model_copy(
        update={
            "budget": workload.RUN_CEILING,
            "notify": [SinkConfig(kind="file", url=str(notices))],
        }
    )
    if not as_json:
        err.print(f"demo monorepo with {packages} packages at {repo}", highlight=False)
    state = _drive(
        rt,
        lambda ls: rt.start(
            workload.plan,
            {"repo": str(repo.resolve())},
            config,
            plan_ref=workload.PLAN_REF,
            listeners=ls,
        ),
        None,
        quiet or as_json,
    )
    rid = state.run_id
    if state.status == "parked" and state.awaiting():
        held = state.awaiting()[0].held
        assert held is not None
        if not as_json:
            _show_notice(notices, rid)
        if wait_at_gate:
            if not as_json:
                out.print(
                    "\nThe run is parked and this process exits. Approve it as a person would, "
                    "from any shell (the demo's approver key is in the home):\n  "
                    + gates.approve_command(rid, held)
                    + f" --key {rt.home / 'keys' / 'demo-approver.key'}",
                    highlight=False,
                )
            _finish(rt, state, as_json)
            return
        if not as_json:
            out.print(
                f"approving as the demo approver ({approver.public[:16]}…), as "
                f"`{gates.approve_command(rid, held)}` would",
                highlight=False,
            )
        decisions = gates.decide(state, held.gate, True, "demo approval", approver, rt.clock.now())
        state = _drive(
            rt,
            lambda ls: rt.resume(rid, listeners=ls, decisions=decisions, reason="gate decision"),
            state,
            quiet or as_json,
        )
    report = asyncio.run(rt.replay(rid, workload.plan))
    if as_json:
        data = state_json(state, rt.live_status(state))
        data["replay"] = {"ok": report.ok, "head_hash": report.head_hash}
        out.print_json(data=data)
    else:
        _summary(state)
        summary = (state.nodes["diff-summarizer"].outputs or {}).get("summary", "")
        out.print(summary, highlight=False, markup=False)
        if state.receipts:
            last = state.receipts[-1]
            totals = last.body["totals"]
            out.print(
                f"receipt #{last.number} (signed {last.key[:16]}…): "
                f"{totals['compute_h']:.5f} compute-h, ${totals['spend_usd']:.6f} of "
                f"${workload.RUN_CEILING.spend_usd:g}",
                highlight=False,
            )
        out.print(f"replay: {'OK' if report.ok else 'DIVERGED'} head {report.head_hash}")
        out.print(
            "\nLook closer (prefix `uv run` in a checkout):\n"
            + "\n".join(
                f"  orchestrator {cmd} {rid}"
                for cmd in (
                    "status",
                    "ledger",
                    "ledger verify",
                    "replay",
                    "checkpoints verify",
                    "receipts --verify",
                )
            ),
            highlight=False,
        )
    if state.status != "succeeded" or not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _show_notice(path: Path, run_id: str) -> None:
    """Print the gate notice the run sent (the demo's sink is a file)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        err.print(f"no gate notice was written to {path}")
        return
    for line in reversed(lines):
        notice = json.loads(line)
        if notice.get("run_id") == run_id and notice.get("kind") == "gate":
            excerpt = "\n".join(notice["review"].splitlines()[:12])
            out.print(
                f"\n[bold]gate notice sent[/] ({path}): node {escape(notice['node'])} waits at "
                f"gate {escape(notice['gate'])}, digest {notice['digest'][:16]}…",
                highlight=False,
            )
            out.print(excerpt + "\n  …", markup=False, highlight=False)
            out.print(f"approve: {escape(notice['approve'])}", highlight=False)
            out.print(f"reject:  {escape(notice['reject'])}", highlight=False)
            return


@app.command("flaky-hunt")
def flaky_hunt(
    ctx: typer.Context,
    repo: str = typer.Option(..., "--repo", help="The repository: a path or a git URL"),
    test: str = typer.Option(..., "--test", help="The test command, e.g. 'python -m pytest'"),
    runs: int = typer.Option(1000, "--runs", min=1, max=100_000, help="Reruns of the suite"),
    batch: int = typer.Option(25, "--batch", min=1, help="Reruns per sandbox"),
    good: str | None = typer.Option(None, "--good", help="A revision known to pass"),
    bad: str = typer.Option("HEAD", "--bad", help="The revision that flakes"),
    base: str = typer.Option("main", "--base", help="The branch the pull request targets"),
    github: str | None = typer.Option(
        None, "--github", help="OWNER/REPO to open the pull request in (token: GITHUB_TOKEN)"
    ),
    github_api: str | None = typer.Option(None, "--github-api", help="GitHub API URL"),
    seed: int | None = typer.Option(
        None, "--seed", help="Draw the reruns' seeds from this (default: a recorded random one)"
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
    from orchestrator.workloads import flaky as workload

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
    from orchestrator.agents.flaky import MAX_BATCHES

    if -(-runs // batch) > MAX_BATCHES:
        batch = -(-runs // MAX_BATCHES)
        err.print(f"{runs} runs make more than {MAX_BATCHES} batches: {batch} runs per batch")
    values = {
        "repo": str(Path(repo).resolve()) if Path(repo).exists() else repo,
        "test": test,
        "runs": runs,
        "batch": batch,
        "good": good,
        "bad": bad,
        "workdir": str(workdir),
        "base": base,
        "github": github,
        "github_api": github_api,
        "seed": seed,
        "notify": notify,
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
        if isinstance(event, NodeSucceeded) and event.node.startswith("flake-rerunner["):
            batch = event.outputs["result"]["runs"]
            seen["runs"] += len(batch)
            seen["failed"] += sum(1 for run in batch if run["failed"])
            err.print(
                f"  reruns: {seen['runs']}/{runs} done, {seen['failed']} failed", highlight=False
            )
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
    if as_json:
        out.print_json(data=state_json(state, rt.live_status(state)))
    else:
        notifier = state.nodes.get("notifier")
        authored = state.nodes.get("pr-author")
        if notifier is not None and notifier.outputs:
            out.print(notifier.outputs["summary"], highlight=False, markup=False)
        elif authored is not None and authored.held is not None:
            out.print(authored.held.outputs["authored"]["description"], markup=False)
        _summary(state)
    status = rt.live_status(state)
    if status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if status == "parked":
        raise typer.Exit(EXIT_PARKED)
    if status == "aborted":
        raise typer.Exit(EXIT_ABORTED)


@app.command("ls")
def list_runs(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """List runs, newest last."""
    rt = _runtime(ctx)
    runs = rt.runs()
    if as_json:
        out.print_json(data=[_row(r) for r in runs])
        return
    if not runs:
        out.print(f"no runs yet in {rt.store.url}")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("run", "plan", "status", "events", "started", "last activity"):
        table.add_column(col)
    for r in runs:
        table.add_row(r.run_id, r.plan, r.status, str(r.events), r.created_at, r.updated_at)
    out.print(table)


def _row(summary: Any) -> dict[str, Any]:
    return {slot: getattr(summary, slot) for slot in summary.__slots__}


@app.command()
def status(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    watch: bool = typer.Option(True, "--watch/--once", help="Refresh while the run is live"),
    show_all: bool = typer.Option(False, "--all", help="Every node, however many"),
    as_json: bool = JsonOpt,
) -> None:
    """Show a run: nodes by state, progress, elapsed (live while it runs)."""
    rt = _runtime(ctx)
    state = rt.state(run_id)
    if as_json:
        out.print_json(data=state_json(state, rt.live_status(state)))
        return

    def render(st: RunState) -> Any:
        from rich.console import Group

        from orchestrator.views import headline

        live = rt.live_status(st)
        now = rt.clock.now() if live in ("running", "pausing") else None
        return Group(headline(st, live, now), node_table(st, None if show_all else 40))

    if not (watch and out.is_terminal and rt.owner(run_id)):
        out.print(render(state))
        return
    with Live(render(state), console=out, auto_refresh=False) as live:
        while rt.owner(run_id):
            time.sleep(0.5)
            state = rt.state(run_id)
            live.update(render(state), refresh=True)
        live.update(render(rt.state(run_id)), refresh=True)


@app.command()
def ledger(
    ctx: typer.Context,
    args: list[str] = typer.Argument(..., metavar="[verify] RUN"),
    node: str | None = typer.Option(None, "--node", help="Only this node's events"),
    kind: str | None = typer.Option(None, "--kind", help="Only events of this kind"),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines: seq, hash, event"),
) -> None:
    """List a run's events, or `ledger verify RUN` to re-hash its chain."""
    if len(args) == 2 and args[0] == "verify":
        _verify(ctx, args[1], as_json)
        return
    if len(args) != 1:
        raise ConfigError("usage: orchestrator ledger RUN  |  orchestrator ledger verify RUN")
    rt = _runtime(ctx)
    rows = rt.rows(args[0])
    table = None if as_json else Table(show_edge=False, pad_edge=False)
    if table is not None:
        for col in ("seq", "time", "kind", "node", "detail"):
            table.add_column(col, overflow="fold")
    for row in rows:
        data = json.loads(row.body)
        if (node and data.get("node") != node) or (kind and row.kind != kind):
            continue
        if table is None:
            sys.stdout.write(json.dumps({"seq": row.seq, "hash": row.hash, "event": data}) + "\n")
            continue
        table.add_row(
            str(row.seq), data["ts"][11:23], row.kind, data.get("node", ""), _detail(data)
        )
    if table is not None:
        out.print(table)


def _detail(data: dict[str, Any]) -> str:
    kind = data["kind"]
    if kind == "EffectRecorded":
        request = json.dumps(data["request"])
        return f"#{data['index']} {data['effect']} {request[:80]}"
    if kind == "NodeDispatched":
        return f"attempt {data['attempt']} code {data['code_digest']}"
    if kind in ("NodeFailed", "RetryScheduled"):
        reason = data["reason"]
        extra = f" retry in {data['delay']}s" if kind == "RetryScheduled" else f" ({data['cause']})"
        return f"attempt {data['attempt']}: {reason['type']}: {reason['message'][:80]}{extra}"
    if kind == "NodeResumed":
        return f"attempt {data['attempt']} from effect #{data['from_index']}"
    if kind == "RunCompleted":
        return f"{data['status']}"
    if kind == "RunStarted":
        return f"plan {data['plan']['name']} {data['plan_digest'][:16]}"
    if kind == "GateParked":
        return f"gate {data['gate']} digest {data['digest'][:16]}"
    if kind == "GateDecided":
        return f"{data['decision']} by {data['approver'][:16]} {data['comment'][:60]}"
    if kind in ("BudgetReserved", "BudgetRefused"):
        amount = data.get("amount") or data.get("needed")
        return f"{amount}" + (f" over: {'; '.join(data['over'])}" if "over" in data else "")
    if kind == "ReceiptIssued":
        return f"#{data['number']} totals {data['body']['totals']}"
    if kind == "NoticeDelivered":
        return f"{data['notice']} -> {data['sink']}: {'ok' if data['ok'] else data['error']}"
    return str(data.get("reason", data.get("source", "")))


def _verify(ctx: typer.Context, run_id: str, as_json: bool) -> None:
    rt = _runtime(ctx)
    report = rt.verify(run_id)
    if as_json:
        out.print_json(data=report.as_dict())
    elif report.ok:
        out.print(f"ledger OK: {report.events} events, head {report.head_hash}")
    else:
        err.print(
            f"[red]ledger verification FAILED[/] for run {run_id} at seq {report.bad_seq}: "
            f"{escape(report.problem or '')}",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def pause(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the run has parked"),
    timeout: float = typer.Option(3600, "--timeout", help="Seconds to wait for the drain"),
) -> None:
    """Ask a running run to drain its in-flight nodes and park."""
    rt = _runtime(ctx)
    rt.pause(run_id)
    err.print(f"pause requested for {run_id}; in-flight nodes drain first")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while rt.owner(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    state = rt.state(run_id)
    status = rt.live_status(state)
    out.print(f"run {run_id} is {status}")
    if status not in ("parked", "succeeded", "failed"):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def resume(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    source: str | None = typer.Option(
        None, "--from", help="Object store holding the run's checkpoints (directory or s3://…)"
    ),
    signer: str | None = typer.Option(
        None, "--signer", help="With --from: the run's public key (hex) its checkpoints must carry"
    ),
    budget: str | None = typer.Option(
        None, "--budget", help="A fresh envelope: tokens=N,compute_h=H,spend=USD"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = JsonOpt,
) -> None:
    """Continue a parked, aborted or interrupted run in this process, from its ledger — or,
    with --from, from its checkpoints in object storage when the local ledger has lost it.
    After a budget abort, --budget gives it a fresh envelope."""
    envelope = _parse_budget(budget)
    rt = _runtime(ctx, objects=source)
    if source is not None:
        restored = rt.restore_ledger(run_id, signer)
        if restored and not as_json:
            err.print(f"restored {restored} ledger events of {run_id} from {rt.objects.url}")
    initial = rt.state(run_id)
    state = _drive(
        rt,
        lambda ls: rt.resume(run_id, listeners=ls, budget=envelope),
        initial,
        quiet or as_json,
    )
    _finish(rt, state, as_json)


# ---- gates, keys and receipts ---------------------------------------------------------------


def default_key() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "orchestrator" / "keys" / "approver.key"


KeyOpt = typer.Option(
    None, "--key", envvar="ORCHESTRATOR_KEY", help="Your private key [default: ~/.config/…]"
)


@keys_app.command("init")
def keys_init(
    path: Path | None = typer.Option(None, "--key", help="Where to write the key pair"),
) -> None:
    """Make your Ed25519 key pair for approving gates; prints the public key to share."""
    target = path or default_key()
    if target.exists():
        raise ConfigError(
            f"{target} already exists (public key {signing.load(target).public}); "
            "remove it first or choose another path with --key"
        )
    signer = signing.generate()
    signing.save(signer, target)
    err.print(f"wrote {target} (private, mode 0600) and {target.with_suffix('.pub')}")
    err.print("give the public key to whoever configures runs (--approver GATE=KEY):")
    out.print(signer.public, highlight=False)


@app.command()
def approve(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    gate: str = typer.Argument(..., metavar="GATE"),
    node: str | None = typer.Option(None, "--node", help="Only this node (default: all at GATE)"),
    reject: bool = typer.Option(False, "--reject", help="Reject instead of approving"),
    comment: str = typer.Option("", "--comment", "-m", help="Why (a rejection's reason)"),
    key: Path | None = KeyOpt,
    show: bool = typer.Option(False, "--show", help="Print what is held, decide nothing"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = JsonOpt,
) -> None:
    """Sign a decision on a parked gate and hand it to the run; a run no process drives
    continues here."""
    rt = _runtime(ctx)
    state = rt.state(run_id, verify=True)
    if show:
        for ns in gates.awaiting_at(state, gate):
            if ns.held is not None and (node is None or ns.id == node):
                out.print(f"[bold]{escape(ns.id)}[/] digest {ns.held.digest}")
                out.print(ns.held.review, markup=False, highlight=False)
        return
    signer = signing.load(key or default_key())
    decisions = gates.decide(state, gate, not reject, comment, signer, rt.clock.now(), node)
    for decision in decisions:  # refuse (e.g. a key that is no approver) before saying "approved"
        gates.check(state, decision)
    verb = "rejected" if reject else "approved"
    if rt.owner(run_id) is not None:
        if asyncio.run(rt.decide(run_id, decisions)) == "delivered":
            err.print(f"{verb} {', '.join(d.node for d in decisions)}; the live run continues")
            return
        # its process exited before reading the decision, which then continued the run here
        err.print(f"{verb} {', '.join(d.node for d in decisions)}; run {run_id} continued here")
        _finish(rt, rt.state(run_id), as_json)
        return
    err.print(f"{verb} {', '.join(d.node for d in decisions)}; continuing run {run_id} here")
    final = _drive(
        rt,
        lambda ls: rt.resume(run_id, listeners=ls, decisions=decisions, reason="gate decision"),
        state,
        quiet or as_json,
    )
    _finish(rt, final, as_json)


@app.command("receipts")
def show_receipts(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    verify: bool = typer.Option(False, "--verify", help="Check every receipt's signature"),
    source: Path | None = typer.Option(
        None, "--from", help="Read receipts from a JSONL file sink instead of the ledger"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Show a run's signed budget receipts (from the ledger, or a file sink's copy)."""
    rt = _runtime(ctx)
    key = rt.signer_public(run_id)
    if source is None:
        found = [r.model_dump(mode="json") for r in rt.state(run_id).receipts]
    else:
        found = _read_receipts(source, run_id)
    problems = {r.get("number"): receipts.problem(r, key) for r in found} if verify else {}
    if as_json:
        out.print_json(data=[{**r, "problem": problems.get(r.get("number"))} for r in found])
    else:
        table = Table("#", "period", "tokens", "compute h", "spend $", "remaining", "signature")
        for r in found:
            body = r.get("body", {})
            totals, left = body.get("totals", {}), body.get("remaining")
            period = body.get("period", {})
            verdict = problems.get(r.get("number"), "") if verify else "not checked"
            table.add_row(
                str(r.get("number")),
                f"{period.get('from', '?')[:19]} → {period.get('to', '?')[:19]}",
                str(totals.get("tokens")),
                f"{totals.get('compute_h', 0):.4f}",
                f"{totals.get('spend_usd', 0):.4f}",
                "unlimited" if left is None else f"{left.get('spend_usd', 0):.4f} $",
                "[red]" + escape(verdict) + "[/]"
                if verdict and verify
                else "ok"
                if verify
                else "-",
            )
        out.print(table)
    if not found:
        err.print(f"run {run_id} has no receipts yet")
    if any(problems.values()):
        bad = ", ".join(f"#{n}: {p}" for n, p in problems.items() if p)
        err.print(f"[red]receipts fail verification[/]: {escape(bad)}", highlight=False)
        raise typer.Exit(EXIT_FAILED)


def _read_receipts(path: Path, run_id: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--from {path}: cannot read it ({exc.strerror})") from None
    found = []
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            data = {"number": f"line {number}", "body": None}
        if isinstance(data, dict) and data.get("run_id") in (run_id, None):
            found.append(data)
    return found


@app.command()
def replay(
    ctx: typer.Context, run_id: str = typer.Argument(..., metavar="RUN"), as_json: bool = JsonOpt
) -> None:
    """Re-execute the run's node code against its ledger; check it byte for byte."""
    rt = _runtime(ctx)
    report = asyncio.run(rt.replay(run_id))
    if as_json:
        d = report.divergence
        out.print_json(
            data={
                "ok": report.ok,
                "events": report.events,
                "head_hash": report.head_hash,
                "code_changed": report.code_changed,
                "divergence": None if d is None else _row(d),
            }
        )
    else:
        if report.code_changed:
            out.print(f"[yellow]code changed since the run[/] in: {', '.join(report.code_changed)}")
        if report.ok:
            out.print(f"replay OK: {report.events} events, head {report.head_hash}")
        else:
            out.print(f"[red]replay DIVERGED[/] {escape(str(report.divergence))}", highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def checkpoints(
    ctx: typer.Context,
    args: list[str] = typer.Argument(..., metavar="[verify] RUN"),
    as_json: bool = JsonOpt,
) -> None:
    """List a run's checkpoints, or `checkpoints verify RUN` to check every one of them:
    signatures, the chain of manifests, ledger segments up to each head, chunk hashes."""
    verify = len(args) == 2 and args[0] == "verify"
    if len(args) != 1 and not verify:
        raise ConfigError(
            "usage: orchestrator checkpoints RUN  |  orchestrator checkpoints verify RUN"
        )
    rt = _runtime(ctx)
    reports = rt.checkpoints(args[-1])
    bad = [r for r in reports if not r.ok]
    if as_json:
        out.print_json(
            data=[
                {
                    "key": r.key,
                    "ok": r.ok,
                    "problem": r.problem,
                    "manifest": None if r.manifest is None else r.manifest.model_dump(mode="json"),
                }
                for r in reports
            ]
        )
    else:
        table = Table(show_edge=False, pad_edge=False)
        for col in ("seq", "time", "label", "workspaces", "signature", "problem"):
            table.add_column(col, overflow="fold")
        for r in reports:
            m = r.manifest
            table.add_row(
                str(m.seq) if m else "?",
                m.ts[11:23] if m else "",
                m.label if m else "",
                str(len(m.workspaces)) if m else "",
                "ok" if r.ok else "FAILED",
                escape(r.problem or ""),
            )
        out.print(table)
        if not reports:
            out.print(f"run {args[-1]} has no checkpoints in {rt.objects.url}")
        elif verify and not bad:
            out.print(f"checkpoints OK: {len(reports)} verified in {rt.objects.url}")
    if verify and (bad or not reports):
        for r in bad:
            err.print(f"[red]checkpoint verification FAILED[/]: {escape(r.problem or '')}")
        raise typer.Exit(EXIT_FAILED)


@app.command("gc")
def collect_garbage(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would go; delete nothing"),
    as_json: bool = JsonOpt,
) -> None:
    """Delete checkpoint chunks and blobs that no checkpoint manifest refers to.
    Refused while any run of this home is live, or if any manifest cannot be read."""
    from orchestrator import gc

    rt = _runtime(ctx)
    gc.require_idle(rt)
    report = gc.collect_garbage(
        rt.objects, rt.chunks(), dry_run=dry_run, guard=lambda: gc.require_idle(rt)
    )
    if as_json:
        out.print_json(data=report.as_dict())
    else:
        out.print(f"gc {rt.objects.url}: {report.summary()}", highlight=False, markup=False)


@plan_app.command("check")
def plan_check(
    plan_ref: str = typer.Argument(..., metavar="FILE.py:PLAN"),
    allow: str | None = AllowOpt,
    approver: list[str] = ApproverOpt,
    budget: str | None = BudgetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Report every problem in a plan at once; exit 2 when there are any."""
    plan = load_plan(plan_ref)
    problems = plan.validate(_config(allow, approver, budget, 256))
    if as_json:
        out.print_json(data=[p.model_dump() for p in problems])
    elif problems:
        err.print(f"[red]plan {plan.name!r} has {len(problems)} problem(s):[/]")
        for p in problems:
            err.print(f"  - {p}", highlight=False, markup=False)
    else:
        worst = plan.worst_case_budget()
        out.print(
            f"plan {plan.name!r} OK: {len(plan.nodes)} nodes; worst case "
            f"{worst.tokens} tokens, {worst.compute_h:g} compute-h, ${worst.spend_usd:g}",
            highlight=False,
        )
    if problems:
        raise typer.Exit(EXIT_INVALID)


@sandbox_app.command("probe")
def sandbox_probe(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Which sandbox backends work here, why the others don't, and which `auto` picks."""
    from orchestrator.sandbox.factory import MICROVM_NOTE, choose, probe_all
    from orchestrator.sandbox.limits import cgroups_available

    home = _runtime(ctx).home
    probes = asyncio.run(probe_all(home))
    try:
        auto: dict[str, str | None] = dict(
            zip(("backend", "reason"), asyncio.run(choose("auto", home)), strict=True)
        )
    except UserError as exc:
        auto = {"backend": None, "reason": str(exc)}
    limits_ok, limits_why = cgroups_available()
    if as_json:
        out.print_json(
            data={
                "backends": [_row(p) for p in probes],
                "auto": auto,
                "limits": {"ok": limits_ok, "reason": limits_why},
                "microvm": MICROVM_NOTE,
            }
        )
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("backend", "works", "start", "why"):
        table.add_column(col, overflow="fold")
    for p in probes:
        start = f"{p.start_s * 1000:.0f} ms" if p.start_s is not None else ""
        table.add_row(p.backend, "yes" if p.ok else "no", start, p.reason)
    out.print(table)
    out.print(
        f"auto: {auto['backend'] or 'none'} ({auto['reason']})", highlight=False, markup=False
    )
    out.print(
        f"limits (cgroups): {'yes' if limits_ok else 'no'} ({limits_why})",
        highlight=False,
        markup=False,
    )
    out.print(MICROVM_NOTE, highlight=False, markup=False)


@sandbox_app.command("exec", context_settings={"allow_interspersed_args": False})
def sandbox_exec(
    ctx: typer.Context,
    argv: list[str] = typer.Argument(..., metavar="-- CMD ..."),
    backend: str = typer.Option("auto", "--backend", help="auto, gvisor, bwrap or local"),
    net: bool = typer.Option(False, "--net", help="Allow network egress"),
    fs: bool = typer.Option(False, "--fs", help="Make the workspace writable"),
    workspace: Path | None = typer.Option(None, "--workspace", help="Directory seen at /workspace"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds before the command is killed"
    ),
) -> None:
    """Run one command in a fresh sandbox; exit with the command's exit code."""
    import tempfile

    from orchestrator.sandbox.base import SandboxSpec
    from orchestrator.sandbox.factory import choose, launcher_for, limiter_for
    from orchestrator.sandbox.process import AgentSandbox

    home = _runtime(ctx).home
    if workspace is not None and not workspace.is_dir():
        raise ConfigError(f"--workspace {str(workspace)!r} is not a directory")
    effects = frozenset(e for e, on in (("net", net), ("fs", fs)) if on)

    async def go(where: Path) -> int:
        name, why = await choose(backend, home)
        err.print(f"sandbox: {name} ({why})", highlight=False, markup=False)
        sandbox = AgentSandbox(
            launcher_for(name, home), SandboxSpec(effects=effects), where, limiter_for(home)
        )
        async with sandbox:
            result = await sandbox.exec(argv, timeout=timeout)
        sys.stdout.buffer.write(result.stdout)
        sys.stderr.buffer.write(result.stderr)
        if result.timed_out:
            err.print(f"killed after {timeout:g}s", highlight=False)
        return result.code if result.code >= 0 else 128 - result.code

    if workspace is not None:
        code = asyncio.run(go(workspace.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="orchestrator-sandbox-") as scratch:
            code = asyncio.run(go(Path(scratch)))
    raise typer.Exit(code)


def main() -> None:
    """Entry point: user errors become one paragraph on stderr and an exit code."""
    try:
        app()
    except UserError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except LedgerError as exc:
        err.print(f"[red]ledger error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(EXIT_FAILED)
    except OrchestratorError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
