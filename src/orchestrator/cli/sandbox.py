"""Trying the sandboxes by hand: ``sandbox probe`` and ``sandbox exec``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from orchestrator.cli.options import JsonOpt
from orchestrator.cli.root import _row, _runtime, err, out, sandbox_app
from orchestrator.errors import ConfigError, UserError


@sandbox_app.command("probe")
def sandbox_probe(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Which sandbox backends work here, why the others don't, and which `auto` picks."""
    import asyncio

    from orchestrator.sandbox.cgroups.limiter import cgroups_available
    from orchestrator.sandbox.factory import MICROVM_NOTE, choose, probe_all

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
    net: bool = typer.Option(False, "--net", help="Allow network egress (own namespace)"),
    fs: bool = typer.Option(False, "--fs", help="Make the workspace writable"),
    workspace: Path | None = typer.Option(None, "--workspace", help="Directory seen at /workspace"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds before the command is killed"
    ),
) -> None:
    """Run one command in a fresh sandbox; exit with the command's exit code."""
    import asyncio
    import tempfile

    from orchestrator.sandbox.base import SandboxSpec
    from orchestrator.sandbox.factory import choose, launcher_for, limiter_for
    from orchestrator.sandbox.process import AgentSandbox

    home = _runtime(ctx).home
    if workspace is not None and not workspace.is_dir():
        raise ConfigError(f"--workspace {str(workspace)!r} is not a directory")
    if workspace is not None:
        from orchestrator.sandbox.hidden import inside
        from orchestrator.signing import key_dir

        protected = (home.resolve(), key_dir().resolve())
        target = workspace.resolve()
        if inside(target, protected) or any(p == target or p in target.parents for p in protected):
            raise ConfigError(
                f"--workspace {str(workspace)!r} holds or lies in the orchestrator's home or "
                "key directory, which no sandbox may see; pass a directory without them"
            )
    effects = frozenset(e for e, on in (("net", net), ("fs", fs)) if on)

    async def go(where: Path) -> int:
        name, why = await choose(backend, home)
        err.print(f"sandbox: {name} ({why})", highlight=False, markup=False)
        sandbox = AgentSandbox(
            launcher_for(name, home),
            SandboxSpec(effects=effects),
            where,
            limiter_for(home),
            own_workspace=workspace is None,
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
