"""Gates, keys and receipts: ``keys init``, ``approve``, ``receipts``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator import signing
from orchestrator.cli.options import JsonOpt, RunArg
from orchestrator.cli.progress import _drive, _finish
from orchestrator.cli.root import EXIT_FAILED, _runtime, app, err, keys_app, out
from orchestrator.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from orchestrator.budget import Budget


def default_key() -> Path:
    return signing.key_dir() / "approver.key"


KeyOpt = typer.Option(
    None,
    "--key",
    envvar="ORCHESTRATOR_KEY",
    help="Your private key [default: the key directory's approver.key]",
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
    run_id: str = RunArg,
    gate: str = typer.Argument(..., metavar="GATE"),
    node: str | None = typer.Option(None, "--node", help="Only this node (default: all at GATE)"),
    reject: bool = typer.Option(False, "--reject", help="Reject instead of approving"),
    comment: str = typer.Option("", "--comment", "-m", help="Why (a rejection's reason)"),
    redo: str | None = typer.Option(
        None,
        "--redo",
        metavar="NODE",
        help="With --reject: send the work back to this upstream node (it reruns with the "
        "comment in ctx.feedback, then everything after it)",
    ),
    key: Path | None = KeyOpt,
    show: bool = typer.Option(False, "--show", help="Print what is held, decide nothing"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = JsonOpt,
) -> None:
    """Sign a decision on a parked gate and hand it to the run; a run no process drives
    continues here."""
    import asyncio

    from orchestrator import gates

    rt = _runtime(ctx, access="existing")
    state = rt.state(run_id, verify=True)
    if show:
        for ns in gates.held_at(state, gate, node):
            assert ns.held is not None
            out.print(f"[bold]{escape(ns.id)}[/] digest {ns.held.digest}")
            out.print(ns.held.review, markup=False, highlight=False)
        return
    # refused (e.g. a key that is no approver) before anything says "approved"
    if redo is not None and not reject:
        raise UsageError("--redo NODE goes with --reject: an approval sends nothing back")
    decisions = rt.decisions(run_id, gate, key or default_key(), node, reject, comment, redo)
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
    run_id: str = RunArg,
    verify: bool = typer.Option(
        False, "--verify", help="Check every receipt's signature, and that none is missing"
    ),
    source: Path | None = typer.Option(
        None, "--from", help="Read receipts from a JSONL file sink instead of the ledger"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Show a run's signed budget receipts (from the ledger, or a file sink's copy)."""
    from orchestrator import receipts

    rt = _runtime(ctx, access="read")
    key = rt.signer_public(run_id)
    recorded = rt.state(run_id).receipts
    if source is None:
        found = [r.model_dump(mode="json") for r in recorded]
    else:
        found = _read_receipts(source, run_id)
    problems = {r.get("number"): receipts.problem(r, key) for r in found} if verify else {}
    last = recorded[-1].body if recorded else None
    order = receipts.chain_problems(found, last) if verify else []
    from orchestrator.ledger.events import decode

    held = receipts.held_when_issued(decode(row.body) for row in rt.rows(run_id))
    if as_json:
        out.print_json(
            data=[
                {
                    **r,
                    "problem": problems.get(r.get("number")),
                    "reserved_in_flight": _held(held, r),
                }
                for r in found
            ]
        )
    else:
        table = Table(
            "#",
            "period",
            "spent: tokens",
            "compute h",
            "$",
            "reserved (in flight)",
            "remaining",
            "signature",
            caption="spent: the run's totals; reserved: what nodes in flight may still use "
            "of their reserved worst case; remaining: the ceiling less what was spent under "
            "it and less what is reserved (the signed body's `remaining`)",
        )
        for r in found:
            body = r.get("body", {})
            totals, left = body.get("totals", {}), body.get("remaining")
            period = body.get("period", {})
            verdict = problems.get(r.get("number"), "") if verify else "not checked"
            reserved = _held(held, r)
            table.add_row(
                str(r.get("number")),
                f"{period.get('from', '?')[:19]} → {period.get('to', '?')[:19]}",
                str(totals.get("tokens")),
                f"{totals.get('compute_h', 0):.4f}",
                f"{totals.get('spend_usd', 0):.4f}",
                "?" if reserved is None else _amounts(reserved, zeros=False) or "none",
                "no ceiling" if left is None else _amounts(left) or "unlimited",
                "[red]" + escape(verdict) + "[/]"
                if verdict and verify
                else "ok"
                if verify
                else "-",
            )
        out.print(table)
    if not found:
        err.print(f"run {run_id} has no receipts yet")
    if any(problems.values()) or order:
        bad = [f"#{n}: {p}" for n, p in problems.items() if p] + order
        err.print(f"[red]receipts fail verification[/]: {escape('; '.join(bad))}", highlight=False)
        raise typer.Exit(EXIT_FAILED)


def _held(held: dict[int, Budget], receipt: dict[str, Any]) -> dict[str, Any] | None:
    """What reservations held when ``receipt`` was issued (None: not in the ledger)."""
    number = receipt.get("number")
    amount = held.get(number) if isinstance(number, int) else None
    return None if amount is None else amount.model_dump()


def _amounts(amounts: dict[str, Any], *, zeros: bool = True) -> str:
    """Budget amounts in words, leaving out unlimited ones (and zero ones unless ``zeros``)."""
    from orchestrator.budget import is_unlimited

    units = {"tokens": "{} tokens", "compute_h": "{:.4f} compute h", "spend_usd": "${:.4f}"}
    return ", ".join(
        unit.format(amounts[name])
        for name, unit in units.items()
        if isinstance(amounts.get(name), int | float)
        and (zeros or amounts[name])
        and not is_unlimited(amounts[name])
    )


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
