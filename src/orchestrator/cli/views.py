"""Rich views of a run: the live progress of ``run``/``resume`` and ``status``'s table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.budget import in_flag_names
from orchestrator.clock import parse_iso
from orchestrator.ledger.events import (
    BaseEvent,
    BudgetOverrun,
    BudgetRefused,
    CheckpointFailed,
    ErrorInfo,
    GateDecided,
    GateParked,
    NodeDispatched,
    NodeFailed,
    NodeResumed,
    NodeSucceeded,
    NoticeDelivered,
    RetryScheduled,
    RunAborted,
    RunCompleted,
    RunParked,
    SandboxChosen,
)
from orchestrator.ledger.state import NodeState, RunState

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "red",
    "parked": "magenta",
    "pausing": "magenta",
    "awaiting": "magenta",
    "aborting": "red",
    "aborted": "red",
    "interrupted": "yellow",
}
FULL_TABLE_MAX = 40


def _seconds(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    return f"{(parse_iso(end) - parse_iso(start)).total_seconds():.2f}s"


def _elapsed(state: RunState, now: datetime | None) -> str:
    end = parse_iso(state.updated_at) if now is None else now
    seconds = (end - parse_iso(state.started_at)).total_seconds()
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def headline(state: RunState, status: str, now: datetime | None = None) -> RenderableType:
    counts = state.counts()
    done = counts["succeeded"] + counts["failed"]
    total = max(len(state.nodes), 1)
    from rich.progress_bar import ProgressBar  # not imported for --help

    bar = ProgressBar(total=total, completed=done, width=40)
    text = Text.assemble(
        (f"{state.run_id}", "bold"),
        f"  {state.plan.get('name', '')}  ",
        (status, STATUS_STYLE.get(status, "")),
        f"  {done}/{len(state.nodes)} nodes  elapsed {_elapsed(state, now)}  ",
        *(
            (f"{counts[k]} {k}  ", STATUS_STYLE[k])
            for k in ("running", "retrying", "awaiting", "failed")
            if counts[k]
        ),
    )
    # the bar in a grid row of its own: alone, it ends without a newline and the table
    # printed after it would start on its line
    row = Table.grid()
    row.add_row(bar)
    return Group(text, row)


def _note(ns: NodeState, run_id: str) -> str:
    if ns.status in ("failed", "retrying") and ns.error is not None:
        prefix = f"{ns.cause}: " if ns.cause else ""
        return prefix + first_line(ns.error, 120 - len(prefix))
    if ns.resumed_from:
        return f"resumed at effect #{ns.resumed_from[-1]}"
    if ns.status == "running":
        return f"{len(ns.journal)} effects"
    if ns.status == "awaiting" and ns.held is not None:
        return f"waits at gate {ns.held.gate}: orchestrator approve {run_id} {ns.held.gate}"
    return ""


def node_table(state: RunState, limit: int | None = FULL_TABLE_MAX) -> Table:
    """All nodes when few; otherwise groups with counts plus the live and failed ones."""
    table = Table(show_edge=False, pad_edge=False, expand=False)
    for col in ("node", "status", "attempt", "time", "note"):
        table.add_column(col, overflow="fold")
    order = {base: i for i, base in enumerate(state.plan["nodes"])}
    nodes = sorted(state.nodes.values(), key=lambda n: (order.get(n.base, 0), n.index or 0))
    shown = nodes
    if limit is not None and len(nodes) > limit:
        live = ("running", "retrying", "awaiting", "failed")
        shown = [n for n in nodes if n.status in live][:limit]
    for ns in shown:
        table.add_row(
            ns.id,
            Text(ns.status, STATUS_STYLE.get(ns.status, "")),
            str(ns.attempt or ""),
            _seconds(ns.dispatched_at, ns.finished_at),
            _note(ns, state.run_id),
        )
    if len(shown) < len(nodes):
        table.caption = f"{len(nodes) - len(shown)} more nodes not shown (use --all)"
    return table


def run_view(state: RunState, status: str, now: datetime | None = None) -> RenderableType:
    return Group(headline(state, status, now), node_table(state, limit=12))


def event_line(event: BaseEvent) -> str | None:
    """One line for a log-style (non-terminal) progress stream, or None to stay quiet."""
    if isinstance(event, NodeDispatched):
        suffix = f" (attempt {event.attempt})" if event.attempt > 1 else ""
        return f"started   {event.node}{suffix}"
    if isinstance(event, NodeSucceeded):
        return f"succeeded {event.node}"
    if isinstance(event, NodeFailed):
        # the error itself is printed once, whole, in the run's summary at the end
        if event.cause == "upstream":
            return None
        return f"failed    {event.node}: {event.cause}: {event.reason.type} (see below)"
    if isinstance(event, RetryScheduled):
        return f"retry     {event.node} in {event.delay:.2f}s after {first_line(event.reason)}"
    if isinstance(event, NodeResumed):
        return f"resumed   {event.node} attempt {event.attempt} at effect #{event.from_index}"
    if isinstance(event, SandboxChosen):
        return f"sandbox   {event.backend}: {event.reason}"
    if isinstance(event, RunParked):
        return f"parked    ({event.reason})"
    if isinstance(event, GateParked):
        return f"gate      {event.node} waits at {event.gate} (digest {event.digest[:12]})"
    if isinstance(event, GateDecided):
        return f"decided   {event.node}: {event.decision} by {event.approver[:12]}"
    if isinstance(event, NoticeDelivered) and not event.ok:
        return f"notice    {event.notice} to {event.sink} failed: {event.error}"
    if isinstance(event, CheckpointFailed):
        return f"checkpoint failed ({event.label}), retry in {event.retry_in:g}s: {event.error}"
    if isinstance(event, BudgetRefused):
        return f"refused   {event.node}: {in_flag_names('; '.join(event.over))}"
    if isinstance(event, BudgetOverrun):
        return f"overrun   {event.node}: used up its {in_flag_names(', '.join(event.over))}"
    if isinstance(event, RunAborted):
        return f"aborted   {event.reason}"
    if isinstance(event, RunCompleted):
        return f"run {event.status}"
    return None


def first_line(error: ErrorInfo, limit: int = 160) -> str:
    """An error in one line: its type and the start of its message."""
    line = str(error).strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def state_json(state: RunState, status: str) -> dict[str, Any]:
    """A machine-readable summary of a run."""
    return {
        "run_id": state.run_id,
        "plan": state.plan.get("name"),
        "plan_ref": state.plan_ref,
        "status": status,
        "started_at": state.started_at,
        "updated_at": state.updated_at,
        "events": state.head_seq + 1,
        "counts": state.counts(),
        "summary": state.summary,
        "nodes": {
            k: {
                "status": ns.status,
                "attempt": ns.attempt,
                "cause": ns.cause,
                "error": None if ns.error is None else str(ns.error),
                "outputs": ns.outputs,
            }
            for k, ns in state.nodes.items()
        },
    }
