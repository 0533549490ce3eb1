"""``demo``: the CommonJS-to-ES-modules migration, end to end with a gate and a replay."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from orchestrator.cli.options import JsonOpt, SandboxOpt, _config
from orchestrator.cli.progress import _drive, _finish, _summary
from orchestrator.cli.root import EXIT_FAILED, _runtime, app, err, out


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
    import asyncio

    from orchestrator import gates, signing
    from orchestrator.cli.views import state_json
    from orchestrator.sinks import SinkConfig
    from orchestrator.workloads import demo as workload
    from orchestrator.workloads.demo.monorepo import make_monorepo

    rt = _runtime(ctx)
    repo = make_monorepo(rt.home / "demo", packages)
    approver_key = rt.keys / "demo-approver.key"
    approver = signing.load_or_create(approver_key)
    notices = rt.home / "notices" / "demo.jsonl"
    config = _config(None, [f"merge={approver.public}"], None, 256, sandbox)
    config = config.model_copy(
        update={
            "budget": workload.RUN_CEILING,
            "notify": [SinkConfig(kind="file", url=str(notices))],
            "workspace_roots": [str(rt.home / "demo")],
        }
    )
    if not as_json:
        err.print(f"demo monorepo with {packages} packages at {repo}", highlight=False)
    state = _drive(
        rt,
        lambda ls: rt.start(
            workload.plan,
            {
                "repo": str(repo.resolve()),
                "workdir": str(repo.parent.resolve() / ".work" / repo.name),
            },
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
                    "from any shell (the demo's approver key is in your key directory):\n  "
                    + gates.approve_command(rid, held, where=rt.where())
                    + f" --key {approver_key}",
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
        _summary(state, where=rt.where())
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
