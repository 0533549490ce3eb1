"""After the fact: ``replay`` a run, list or verify its ``checkpoints``, ``gc`` the store."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.options import JsonOpt, RunArg
from orchestrator.cli.root import EXIT_FAILED, _row, _runtime, app, err, out
from orchestrator.errors import ConfigError
from orchestrator.runid import check_run_id


@app.command()
def replay(
    ctx: typer.Context,
    run_id: str = RunArg,
    recorded: bool = typer.Option(
        False,
        "--recorded",
        help="Replay against the plan source the run stored when it started, not today's.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Re-execute the run's node code against its ledger; check it byte for byte."""
    import asyncio

    rt = _runtime(ctx, access="read")
    report = asyncio.run(rt.replay(run_id, recorded=recorded))
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
    args: list[str] = typer.Argument(..., metavar="[verify|sync] RUN"),
    as_json: bool = JsonOpt,
) -> None:
    """List a run's checkpoints, or `checkpoints verify RUN` to check every one of them:
    signatures, the chain of manifests, ledger segments up to each head, chunk hashes;
    `checkpoints sync RUN` uploads what the store lacks after an outage."""
    verify = len(args) == 2 and args[0] == "verify"
    if len(args) == 2 and args[0] == "sync":
        _sync(ctx, args[1], as_json)
        return
    if len(args) != 1 and not verify:
        raise ConfigError(
            "usage: orchestrator checkpoints RUN  |  orchestrator checkpoints verify RUN  |  "
            "orchestrator checkpoints sync RUN"
        )
    run_id = check_run_id(args[-1])
    rt = _runtime(ctx, access="read")
    reports = rt.checkpoints(run_id)
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
            out.print(f"run {run_id} has no checkpoints in {rt.objects_of(run_id).url}")
        elif verify and not bad:
            out.print(f"checkpoints OK: {len(reports)} verified in {rt.objects_of(run_id).url}")
    if verify and (bad or not reports):
        for r in bad:
            err.print(f"[red]checkpoint verification FAILED[/]: {escape(r.problem or '')}")
        raise typer.Exit(EXIT_FAILED)


def _sync(ctx: typer.Context, run_id: str, as_json: bool) -> None:
    import asyncio

    rt = _runtime(ctx)
    taken = asyncio.run(rt.sync_checkpoints(run_id))
    if as_json:
        out.print_json(data=None if taken is None else taken.model_dump(mode="json"))
    elif taken is None:
        out.print(
            f"checkpoints of {run_id} in {rt.objects_of(run_id).url} already hold its whole ledger"
        )
    else:
        out.print(
            f"synced {run_id}: checkpoint {taken.manifest} covers the ledger up to seq {taken.cut}",
            highlight=False,
        )


@app.command("gc")
def collect_garbage(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would go; delete nothing"),
    as_json: bool = JsonOpt,
) -> None:
    """Delete checkpoint chunks and blobs that no checkpoint manifest refers to, and the
    work directories of runs that ended or that the ledger does not know (never those of
    runs that can resume). Refused while any run of this home is live, or if any
    manifest cannot be read."""
    from orchestrator import gc
    from orchestrator.runtime.workdirs import collect_work

    rt = _runtime(ctx)
    gc.require_idle(rt)
    work = collect_work(rt, dry_run=dry_run)
    report = gc.collect_garbage(
        rt.objects,
        rt.chunks(),
        dry_run=dry_run,
        guard=lambda: gc.require_idle(rt),
        keep=gc.resume_points(rt),
    )
    if as_json:
        out.print_json(data={**report.as_dict(), "work": work.as_dict()})
    else:
        out.print(f"gc {rt.objects.url}: {report.summary()}", highlight=False, markup=False)
        out.print(f"gc {rt.home / 'runs'}: {work.summary()}", highlight=False, markup=False)
