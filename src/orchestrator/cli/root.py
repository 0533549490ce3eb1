"""The root Typer app and what every command shares: sub-apps, consoles, exit codes,
the global options, the runtime they open, and ``main`` (errors become one paragraph)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from orchestrator.cli.commands import LazyCommandGroup
from orchestrator.errors import LedgerError, OrchestratorError, UserError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.runtime.engine import Runtime

# Plain (Click) help, not Rich's: Rich's help formatter alone costs more than the 0.2 s
# `orchestrator --help` may take (bench/imports.py).
app = typer.Typer(
    name="orchestrator",
    help="Durable, typed, parallel runs of agent work: plan, run, pause, resume, replay.",
    cls=LazyCommandGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
plan_app = typer.Typer(help="Check plans before running them.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
sandbox_app = typer.Typer(help="Try the sandboxes by hand.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
keys_app = typer.Typer(help="Approvers' signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# The consoles commands print to, made on first use (Rich is not imported for `--help`).
out: Console
err: Console


def _console(name: str) -> Console:
    if name not in globals():
        from rich.console import Console

        globals()[name] = Console(stderr=name == "err")
    console: Console = globals()[name]
    return console


def __getattr__(name: str) -> Console:
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


# Exit codes: 0 success, 1 run failed or error, 2 invalid plan (``plan check``, ``run``),
# 3 run parked (paused, or waiting at a gate; resume or approve it later), 4 run aborted at
# its budget ceiling (resume it with ``--budget``), 130 run stopped by a second Ctrl-C
# (or SIGTERM) with nodes in flight (resume it).
EXIT_FAILED, EXIT_INVALID, EXIT_PARKED, EXIT_ABORTED = 1, 2, 3, 4
EXIT_INTERRUPTED = 130


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
    store_grace: float | None = typer.Option(
        None,
        "--store-grace",
        envvar="ORCHESTRATOR_STORE_GRACE",
        min=0,
        max=86400,
        help="Seconds a run retries its last checkpoint while the object store is down "
        "[default: 60]",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        envvar="ORCHESTRATOR_CONFIG",
        help="Settings file [default: orchestrator.toml, or [tool.orchestrator] in "
        "pyproject.toml, here or in a parent directory]",
    ),
    profile: str | None = typer.Option(
        None, "--profile", envvar="ORCHESTRATOR_PROFILE", help="A [profiles.NAME] of the settings"
    ),
) -> None:
    from orchestrator.cli.settings import apply_settings
    from orchestrator.settings import load

    ctx.obj = {"home": home, "ledger": ledger, "objects": objects, "store_grace": store_grace}
    apply_settings(ctx, load(config, profile))


Access = Literal["read", "existing", "write"]


def _runtime(
    ctx: typer.Context, objects: str | None = None, *, access: Access = "write"
) -> Runtime:
    """The runtime a command works with. ``read``: never creates the home or its ledger;
    ``existing``: writes to a run that must already exist, so a missing home is read
    (and the run not found) rather than created; ``write``: creates the home if needed.
    The runtime is closed when the command ends."""
    from orchestrator.runtime.engine import Runtime, default_home

    obj = ctx.find_root().obj or {}
    home = obj.get("home") or default_home()
    create = access == "write" or (
        access == "existing" and home.exists() and not _empty_default_ledger(home, obj)
    )
    rt = Runtime(
        home=home,
        ledger=obj.get("ledger"),
        objects=objects or obj.get("objects"),
        store_grace=obj.get("store_grace"),
        create=create,
    )
    ctx.call_on_close(rt.close)  # also on errors: SQLite then removes its WAL files
    return rt


def _empty_default_ledger(home: Path, obj: dict[str, Any]) -> bool:
    """Whether the run would be looked up in the home's own ledger file while it is
    missing or empty: it then holds no run, and must not be given a schema."""
    if obj.get("ledger") or os.environ.get("ORCHESTRATOR_LEDGER"):
        return False
    path = home / "ledger.db"
    return not path.is_file() or path.stat().st_size == 0


def _row(summary: Any) -> dict[str, Any]:
    return {slot: getattr(summary, slot) for slot in summary.__slots__}


def main() -> None:
    """Entry point: user errors become one paragraph on stderr and an exit code."""
    try:
        app()
    except UserError as exc:
        _paragraph("error", exc)
        sys.exit(exc.exit_code)
    except LedgerError as exc:
        _paragraph("ledger error", exc)
        sys.exit(EXIT_FAILED)
    except OrchestratorError as exc:
        _paragraph("error", exc)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _paragraph(label: str, exc: Exception) -> None:
    """Print an error; text from outside (paths, ids) may hold undecodable bytes (as
    surrogates), which are shown escaped rather than failing the print."""
    from rich.markup import escape

    text = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
    _console("err").print(f"[red]{label}:[/] {escape(text)}", highlight=False)
