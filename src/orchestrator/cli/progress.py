"""Driving a run with live progress, and reporting how it ended (summary, exit code)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

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
) -> RunState:
    """Run ``start`` showing a live view (TTY), event lines (pipe) or nothing (quiet)."""
    import asyncio

    from orchestrator.cli.views import event_line, run_view
    from orchestrator.ledger.events import RunStarted
    from orchestrator.ledger.state import RunState

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


def _finish(rt: Runtime, state: RunState, as_json: bool, *, driven: bool = True) -> None:
    """Report how the run ended; ``driven`` when this process drove it (and so knows
    whether its last checkpoint reached the store)."""
    from orchestrator.cli.views import state_json

    status = rt.live_status(state)
    if as_json:
        out.print_json(data=state_json(state, status))
    else:
        _summary(state, status)
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
        f"{rt.objects.url} does not hold its latest events: the last checkpoint failed "
        f"({failed.failures} time(s) in a row): {escape(failed.error)}. The ledger in "
        f"this home is whole; once the store is reachable, upload what is missing with "
        f"`orchestrator checkpoints sync {state.run_id}`.",
        highlight=False,
    )


def _summary(state: RunState, status: str | None = None) -> None:
    from orchestrator import gates
    from orchestrator.ledger.events import BudgetOverrun

    rid = state.run_id
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
                out.print(f"    approve: {escape(gates.approve_command(rid, ns.held))}")
                out.print(f"    reject:  {escape(gates.approve_command(rid, ns.held, True))}")
    elif state.status == "parked":
        out.print(f"[magenta]run {rid} parked[/]; continue with `orchestrator resume {rid}`")
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
            f"continue with `orchestrator resume {rid}`"
        )
    elif state.status == "aborted":
        refused = state.refused
        if isinstance(refused, BudgetOverrun):
            why = f": {refused.node} used up its own {', '.join(refused.over)}"
            out.print(f"[red]run {rid} aborted[/]{escape(why)}", highlight=False)
        else:
            why = "" if refused is None else f": {refused.node} needs {'; '.join(refused.over)}"
            out.print(
                f"[red]run {rid} aborted at its budget ceiling[/]{escape(why)}", highlight=False
            )
        out.print(
            f"  continue with `orchestrator resume {rid} --budget tokens=N,compute_h=H,spend=USD`"
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
