"""Looking at and steering runs: ``ls``, ``status``, ``ledger``, ``pause``, ``resume``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.options import JsonOpt, RunArg, _parse_budget
from orchestrator.cli.progress import _drive, _finish
from orchestrator.cli.root import EXIT_FAILED, _row, _runtime, app, err, out
from orchestrator.errors import LedgerCorrupt, UsageError
from orchestrator.ledger.store import StoredEvent, parse
from orchestrator.runid import check_run_id
from orchestrator.signing import fingerprint

if TYPE_CHECKING:
    from orchestrator.ledger.state import RunState


@app.command("ls")
def list_runs(
    ctx: typer.Context,
    source: str | None = typer.Option(
        None, "--from", help="List the runs an object store holds checkpoints of (dir or s3://…)"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """List runs, newest last."""
    if source is not None:
        _list_stored(ctx, source, as_json)
        return
    rt = _runtime(ctx, access="read")
    runs = rt.runs()
    if as_json:
        out.print_json(data=[_row(r) for r in runs])
        return
    if not runs:
        out.print(f"no runs yet in {rt.store.url}")
        return
    table = Table(show_edge=False, pad_edge=False)
    # run ids whole, however narrow the terminal (they are what other commands take); the
    # other columns fold
    table.add_column("run", no_wrap=True, min_width=max(len(r.run_id) for r in runs))
    for col in ("plan", "status", "events", "started", "last activity"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(r.run_id, r.plan, r.status, str(r.events), r.created_at, r.updated_at)
    out.print(table)


def _list_stored(ctx: typer.Context, source: str, as_json: bool) -> None:
    """The runs in an object store, each by its newest checkpoint, its signature checked
    against the keys pinned here (a run no key is pinned for here is shown unpinned)."""
    from orchestrator.checkpoint import read_manifest, runs_in, signature_problem
    from orchestrator.errors import CheckpointError, ConfigError, StorageError
    from orchestrator.storage.objects import open_object_store

    local = source.removeprefix("file://")
    if "://" not in local and not Path(local).is_dir():  # a listing never creates a store
        raise ConfigError(f"--from {source}: no such directory")
    rt = _runtime(ctx, access="read")
    rows: list[dict[str, Any]] = []
    with open_object_store(source) as objects:
        shown = objects.url
        for run_id, keys in runs_in(objects).items():
            row: dict[str, Any] = {"run_id": run_id, "checkpoints": len(keys)}
            try:
                signed = read_manifest(objects, keys[-1])
            except (CheckpointError, StorageError) as exc:
                rows.append({**row, "signature": f"unreadable: {exc}"})
                continue
            m, pinned = signed.manifest, rt.trust.pinned(run_id)
            problem = signature_problem(signed, run_id, pinned) if pinned else "unpinned here"
            rows.append(
                {**row, "seq": m.seq, "label": m.label, "ts": m.ts, "signer": m.signer}
                | {"signature": problem or "ok"}
            )
    if as_json:
        out.print_json(data=rows)
        return
    if not rows:
        out.print(f"no checkpoints of any run in {shown}")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("run", "checkpoints", "newest", "label", "at", "signer", "signature"):
        table.add_column(col, no_wrap=col == "run")
    for r in rows:
        signer = fingerprint(r["signer"]) if "signer" in r else ""
        newest = f"seq {r['seq']}" if "seq" in r else ""
        cells = (r.get("label", ""), r.get("ts", "")[:19], signer, r["signature"])
        table.add_row(r["run_id"], str(r["checkpoints"]), newest, *map(escape, cells))
    out.print(table)


@app.command()
def status(
    ctx: typer.Context,
    run_id: str = RunArg,
    watch: bool = typer.Option(True, "--watch/--once", help="Refresh while the run is live"),
    show_all: bool = typer.Option(False, "--all", help="Every node, however many"),
    as_json: bool = JsonOpt,
) -> None:
    """Show a run: nodes by state, progress, elapsed (live while it runs)."""
    from orchestrator.cli.views import node_table, state_json

    rt = _runtime(ctx, access="read")
    state = rt.state(run_id)
    if as_json:
        out.print_json(data=state_json(state, rt.live_status(state)))
        return

    def render(st: RunState) -> Any:
        from rich.console import Group

        from orchestrator.cli.views import headline

        live = rt.live_status(st)
        now = rt.clock.now() if live in ("running", "pausing") else None
        return Group(headline(st, live, now), node_table(st, None if show_all else 40))

    if not (watch and out.is_terminal and rt.owner(run_id)):
        out.print(render(state))
        return
    from rich.live import Live  # not imported for --help

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
        _verify(ctx, check_run_id(args[1]), as_json)
        return
    if args == ["verify"]:
        raise UsageError(
            "`orchestrator ledger verify` needs the id of the run to verify, which is "
            "missing: orchestrator ledger verify RUN (`orchestrator ls` lists the runs)"
        )
    if len(args) != 1:
        raise UsageError("usage: orchestrator ledger RUN  |  orchestrator ledger verify RUN")
    run_id = check_run_id(args[0])
    rt = _runtime(ctx, access="read")
    rows = rt.rows(run_id)
    table = None if as_json else Table(show_edge=False, pad_edge=False)
    if table is not None:
        for col in ("seq", "time", "kind", "node", "detail"):
            table.add_column(col, overflow="fold")
    for row in rows:
        data = _event_data(run_id, row)
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


def _event_data(run_id: str, row: StoredEvent) -> dict[str, Any]:
    """A stored event's JSON as recorded, once it decodes as a ledger event."""
    from orchestrator.ledger.events import decode

    where = f"run {run_id} seq {row.seq}"
    try:
        decode(row.body)
    except LedgerCorrupt as exc:
        raise LedgerCorrupt(f"{where}: {exc}") from exc
    return parse(row.body, where)


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
    if kind == "WorkspaceSaved":
        return f"attempt {data['attempt']} at effect #{data['index']} {data['snapshot'][:16]}"
    if kind == "RunCompleted":
        return f"{data['status']}"
    if kind == "RunStarted":
        return f"plan {data['plan']['name']} {data['plan_digest'][:16]}"
    if kind == "PlanSourceRecorded":
        return f"{data['path']} {data['digest'][:16]}"
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
    rt = _runtime(ctx, access="read")
    report = rt.verify(run_id)
    if as_json:
        out.print_json(data=report.as_dict())
    elif report.ok:
        signer = fingerprint(report.signed_by) if report.signed_by else "?"
        out.print(
            f"ledger OK: {report.events} events, head {report.head_hash}, signed by the run's "
            f"pinned key {signer}"
        )
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
    run_id: str = RunArg,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the run has parked"),
    timeout: float = typer.Option(3600, "--timeout", help="Seconds to wait for the drain"),
    now: bool = typer.Option(
        False,
        "--now",
        help="Do not wait for in-flight nodes: snapshot their workspaces, stop them and "
        "park; resume continues them from the snapshots",
    ),
) -> None:
    """Ask a running run to drain its in-flight nodes and park."""
    rt = _runtime(ctx, access="existing")
    rt.pause(run_id, now=now)
    if now:
        err.print(f"pause --now requested for {run_id}; in-flight nodes are snapshotted, stopped")
    else:
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
    run_id: str = RunArg,
    source: str | None = typer.Option(
        None, "--from", help="Object store holding the run's checkpoints (directory or s3://…)"
    ),
    signer: str | None = typer.Option(
        None, "--signer", help="With --from: the run's public key (hex) its checkpoints must carry"
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="A fresh envelope: any of tokens=N, compute_h=H, spend=USD (unnamed: unlimited)",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = JsonOpt,
) -> None:
    """Continue a parked, aborted or interrupted run in this process, from its ledger — or,
    with --from, from its checkpoints in object storage when the local ledger has lost it.
    After a budget abort, --budget gives it a fresh envelope."""
    from orchestrator.ledger.state import TERMINAL_RUN

    envelope = _parse_budget(budget)
    rt = _runtime(ctx, objects=source, access="existing" if source is None else "write")
    restored = 0
    if source is not None:
        restored = rt.restore_ledger(run_id, signer)
        if restored and not as_json:
            err.print(f"restored {restored} ledger events of {run_id} from {rt.objects.url}")
    initial = rt.state(run_id)
    if restored and initial.status in TERMINAL_RUN:
        _finish(rt, initial, as_json, driven=False)  # nothing to resume: how it ended
        return
    state = _drive(
        rt,
        lambda ls: rt.resume(run_id, listeners=ls, budget=envelope),
        initial,
        quiet or as_json,
    )
    _finish(rt, state, as_json)
