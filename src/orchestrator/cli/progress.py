"""Driving a run with live progress, and reporting how it ended (summary, exit code)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from orchestrator.cli.root import (
    EXIT_ABORTED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PARKED,
    err,
    out,
)

if TYPE_CHECKING:
    from orchestrator.ledger.events import BaseEvent
    from orchestrator.ledger.state import RunState
    from orchestrator.runtime.engine import Runtime


def _drive(
    rt: Runtime,
    start: Callable[[tuple[Callable[[BaseEvent], None], ...]], Awaitable[RunState]],
    initial: RunState | None,
    quiet: bool,
    *,
    jsonl: bool = False,
) -> RunState:
    """Run ``start`` showing a live view (TTY), event lines (pipe) or nothing (quiet);
    ``jsonl``: each event as a line of JSON on stdout instead, as it is recorded."""
    import asyncio

    from orchestrator.cli.views import event_line, run_view
    from orchestrator.ledger.events import RunStarted
    from orchestrator.ledger.state import RunState

    view: dict[str, RunState | None] = {"state": initial}
    warned = set() if initial is None else set(initial.book.fallback_priced)

    def fold(event: BaseEvent) -> None:
        if isinstance(event, RunStarted):
            view["state"] = RunState.start(event)
        elif view["state"] is not None:
            view["state"].apply(event)
            _warn_fallback_priced(view["state"], warned)
        if jsonl:
            _json_line(event.model_dump(mode="json"))
        elif not quiet and not out.is_terminal:
            line = event_line(event)
            if line:
                out.print(line, highlight=False, markup=False)

    async def main() -> RunState:
        if quiet or jsonl or not out.is_terminal:
            return await start((fold,))
        from rich.live import Live  # not imported for --help

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


def _warn_fallback_priced(state: RunState, warned: set[str]) -> None:
    """Once per model: its calls matched no price and were charged at the fallback one."""
    from orchestrator.budget import DEFAULT_MODEL_PRICES

    fallback = DEFAULT_MODEL_PRICES["*"]
    for model in sorted(state.book.fallback_priced - warned):
        warned.add(model)
        err.print(
            f"[yellow]warning:[/] no price is known for model {escape(repr(model))}; its "
            f"calls are charged at the fallback list price (${fallback.input_per_mtok:g} in, "
            f"${fallback.output_per_mtok:g} out per million tokens) and receipts list it "
            "under fallback_priced. Give its price with --prices FILE.json (the format is in "
            "`orchestrator run --help`).",
            highlight=False,
        )


def _json_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _finish(
    rt: Runtime, state: RunState, as_json: bool, *, driven: bool = True, jsonl: bool = False
) -> None:
    """Report how the run ended; ``driven`` when this process drove it (and so knows
    whether its last checkpoint reached the store); ``jsonl``: as one line of JSON, its
    ``kind`` "result"."""
    from orchestrator.cli.views import state_json

    status = rt.live_status(state)
    if jsonl:
        _json_line({"kind": "result", **state_json(state, status)})
    elif as_json:
        out.print_json(data=state_json(state, status))
    else:
        _summary(state, status, rt.where())
    if driven and state.unsynced is not None:
        _warn_unsynced(rt, state)
    if status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if status == "parked":
        raise typer.Exit(EXIT_PARKED)
    if status == "aborted":
        raise typer.Exit(EXIT_ABORTED)
    if status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


def _warn_unsynced(rt: Runtime, state: RunState) -> None:
    """The run ended but its last checkpoint never reached the object store."""
    failed = state.unsynced
    assert failed is not None
    err.print(
        f"[yellow]warning:[/] run {state.run_id} ended {state.status}, but the object store "
        f"{rt.objects_of(state.run_id).url} does not hold its latest events: the last "
        f"checkpoint failed ({failed.failures} time(s) in a row): {escape(failed.error)}. "
        "The ledger in this home is whole; once the store is reachable, upload what is "
        f"missing with `orchestrator checkpoints sync {state.run_id}`.",
        highlight=False,
    )


def _summary(state: RunState, status: str | None = None, where: Sequence[str] = ()) -> None:
    """How the run stands; ``where``: the global options printed commands need."""
    from orchestrator import gates
    from orchestrator.ledger.events import BudgetOverrun

    rid = state.run_id
    resume = shlex.join(["orchestrator", *where, "resume", rid])
    if state.status == "succeeded":
        out.print(f"[green]run {rid} succeeded[/]: {state.summary.get('succeeded')} nodes")
    elif state.status == "failed":
        failed = state.summary.get("failed", {})
        upstream = sum(1 for k in failed if k in state.nodes and state.nodes[k].cause == "upstream")
        out.print(
            f"[red]run {rid} failed[/]: {len(failed) - upstream} node(s) failed"
            + (f", {upstream} not run" if upstream else "")
        )
        _failures(state)
    elif state.status == "parked" and state.awaiting():
        out.print(f"[magenta]run {rid} parked[/], waiting for a decision:")
        for ns in state.awaiting():
            if ns.held is not None:
                out.print(f"  {escape(ns.id)} at gate {escape(ns.held.gate)}", highlight=False)
                out.print(
                    f"    approve: {escape(gates.approve_command(rid, ns.held, where=where))}"
                )
                out.print(
                    f"    reject:  {escape(gates.approve_command(rid, ns.held, True, where))}"
                )
    elif state.status == "parked":
        out.print(f"[magenta]run {rid} parked[/]; continue with `{escape(resume)}`")
        for ns in state.retrying():  # a node whose policy parks the run when it fails
            if ns.error is not None:
                out.print(
                    f"  [yellow]{escape(ns.id)}[/] failed (attempt {ns.attempt}): "
                    f"{escape(str(ns.error))}\n  fix the cause, then resume: it runs again",
                    highlight=False,
                )
    elif status == "interrupted":
        out.print(
            f"[yellow]run {rid} stopped[/] with {len(state.in_flight())} node(s) in flight; "
            f"continue with `{escape(resume)}`"
        )
    elif state.status == "aborted":
        refused = state.refused
        from orchestrator.budget import in_flag_names

        if isinstance(refused, BudgetOverrun):
            why = f": {refused.node} used up its own {in_flag_names(', '.join(refused.over))}"
            out.print(f"[red]run {rid} aborted[/]{escape(why)}", highlight=False)
        else:
            over = in_flag_names("; ".join(refused.over)) if refused is not None else ""
            why = "" if refused is None else f": {refused.node} needs {over}"
            out.print(
                f"[red]run {rid} aborted at its budget ceiling[/]{escape(why)}", highlight=False
            )
        out.print(
            f"  continue with `{escape(resume)} --budget tokens=N,compute_h=H,spend=USD`"
            " (any of them; a dimension not named is unlimited)"
        )


def _failures(state: RunState) -> None:
    """Each root cause whole, once; the nodes that never ran because of it in one line."""
    dependents: list[str] = []
    for node in state.summary.get("failed", {}):
        ns = state.nodes.get(node)
        if ns is None or ns.error is None:
            continue
        if ns.cause == "upstream":
            dependents.append(node)
            continue
        out.print(f"  [red]{escape(node)}[/]: {ns.cause}: {escape(str(ns.error))}", highlight=False)
    if dependents:
        out.print(
            f"  not run, as what they need failed ({len(dependents)}): "
            + escape(", ".join(dependents)),
            highlight=False,
        )
