"""Running a plan (``run``) and checking one without running it (``plan check``)."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrator.cli.options import (
    AllowOpt,
    ApproverOpt,
    BudgetOpt,
    ConcurrencyOpt,
    JsonOpt,
    LlmOpt,
    ModelOpt,
    NotifyOpt,
    PricesOpt,
    ReceiptEveryOpt,
    ReceiptsOpt,
    SandboxOpt,
    WorkspaceRootOpt,
    _config,
    _parse_inputs,
    _prices,
)
from orchestrator.cli.progress import _drive, _finish
from orchestrator.cli.root import EXIT_INVALID, _runtime, app, err, out, plan_app
from orchestrator.sandbox.roots import default_roots
from orchestrator.signing import fingerprint


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
    workspace_root: list[Path] = WorkspaceRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output"),
    as_json: bool = JsonOpt,
    json_lines: bool = typer.Option(
        False,
        "--jsonl",
        "--json-lines",
        help="JSON Lines on stdout for tools: each ledger event as it is recorded (its kind, "
        "seq, ts and the fields it carries: node, attempt, status, …), then the run's final "
        'document (kind "result", what --json prints), one object per line',
    ),
) -> None:
    """Validate a plan and run it to completion (Ctrl-C pauses: drain, then park)."""
    from orchestrator.runtime.loader import load_plan, normalize_ref
    from orchestrator.sinks import SinkConfig

    plan = load_plan(plan_ref)
    rt = _runtime(ctx)
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
        workspace_roots=[*default_roots(rt.home, rt.keys), *map(str, workspace_root)],
    )
    values = _parse_inputs(inputs)

    def announce(run_id: str) -> None:
        if not (as_json or json_lines):
            key = rt.trust.pinned(run_id)[-1]
            err.print(
                f"run [bold]{run_id}[/] started; run key {fingerprint(key)} "
                f"(pinned in {rt.trust.root})",
                highlight=False,
            )

    state = _drive(
        rt,
        lambda ls: rt.start(
            plan, values, config, plan_ref=normalize_ref(plan_ref), listeners=ls, on_start=announce
        ),
        None,
        quiet or as_json,
        jsonl=json_lines,
    )
    _finish(rt, state, as_json, jsonl=json_lines)


@plan_app.command("check")
def plan_check(
    plan_ref: str = typer.Argument(..., metavar="FILE.py:PLAN"),
    allow: str | None = AllowOpt,
    approver: list[str] = ApproverOpt,
    budget: str | None = BudgetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Report every problem in a plan at once; exit 2 when there are any."""
    from orchestrator.runtime.loader import load_plan

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
