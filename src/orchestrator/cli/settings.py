"""A settings file's values as the command line's defaults, and ``config show``."""

from __future__ import annotations

from typing import Any

import typer
from typer._click.core import Context, ParameterSource
from typer.core import TyperGroup

from orchestrator.cli.root import app, out
from orchestrator.settings import COMMAND_KEYS, GLOBAL_KEYS, Settings

config_app = typer.Typer(help="The settings in force.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Options a file does not set for a command, though the command has one of that name.
NOT_FROM_FILE = {"resume": {"budget"}}  # there --budget is a fresh envelope, given on purpose
ENV = {"home": "ORCHESTRATOR_HOME", "ledger": "ORCHESTRATOR_LEDGER"}
ENV |= {"objects": "ORCHESTRATOR_OBJECTS", "store_grace": "ORCHESTRATOR_STORE_GRACE"}


def apply_settings(ctx: typer.Context, settings: Settings | None) -> None:
    """Fill the global options a flag or the environment left unset from ``settings``,
    and make its other values the defaults of the options of every command."""
    ctx.obj["settings"] = settings
    if settings is None:
        return
    params = {p.name: p for p in ctx.command.params}
    for name, value in settings.params(GLOBAL_KEYS).items():
        if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            ctx.obj[name] = params[name].process_value(ctx, value)
    if isinstance(ctx.command, TyperGroup):
        ctx.default_map = _defaults(ctx, ctx.command, settings.params(COMMAND_KEYS))


def _defaults(ctx: typer.Context, group: TyperGroup, values: dict[str, Any]) -> dict[str, Any]:
    """Per command (nested for groups), the values for the options it has."""
    defaults: dict[str, Any] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, TyperGroup):
            defaults[name] = _defaults(ctx, command, values)
        elif command is not None:
            own = {p.name for p in command.params} - NOT_FROM_FILE.get(name, set())
            defaults[name] = {k: v for k, v in values.items() if k in own}
    return defaults


@config_app.command("show")
def show(ctx: typer.Context) -> None:
    """Print the settings in force for this directory, and where each comes from."""
    from rich.markup import escape
    from rich.table import Table

    root = ctx.find_root()
    settings: Settings | None = root.obj.get("settings")
    table = Table(show_edge=False, pad_edge=False)
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for key, name in GLOBAL_KEYS.items():
        value = root.obj.get(name)
        table.add_row(key, escape(_shown(value)), escape(_source(root, name, settings, key)))
    for key in COMMAND_KEYS:
        value = settings.values.get(key) if settings is not None else None
        source = (
            settings.source_of(key) if value is not None and settings is not None else "default"
        )
        table.add_row(key, escape(_shown(value)), escape(source))
    out.print(f"settings file: {settings.source if settings else 'none found'}", markup=False)
    out.print(table)


def _source(root: Context, name: str, settings: Settings | None, key: str) -> str:
    source = root.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE or name in root.obj.get("flags", ()):
        return "flag --" + key
    if source is ParameterSource.ENVIRONMENT:
        return "environment " + ENV[name]
    if settings is not None and key in settings.values:
        return settings.source_of(key)
    return "default"


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)
