"""The root command group, loaded lazily: ``orchestrator --help`` lists the commands from
an index, without importing the modules that define them (they pull in Rich, Pydantic
and the runtime); naming any command imports them all and builds the real group."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import typer.main
from typer._click import Command, Context, HelpFormatter, Parameter
from typer._click.core import ParameterSource
from typer._click.utils import make_default_short_help
from typer.core import TyperGroup, TyperOption

# Importing a command module registers its commands on the app; `--help` of the loaded
# group lists them in registration order, which the index below repeats.
MODULES = ("plans", "demo", "hunt", "runs", "gates", "audit", "sandbox", "settings")

# Each command's help up to its first full stop, in the order `--help` lists them;
# tests/test_cli_help.py keeps this in step with the commands' own docstrings.
INDEX: dict[str, str] = {
    "run": "Validate a plan and run it to completion (Ctrl-C pauses: drain, then park).",
    "demo": "Migrate a generated npm-workspaces monorepo from CommonJS to ES modules: one "
    "branch per package in parallel sandboxes, a signed approval at the merge gate, budget "
    "receipts, then a byte-identical replay.",
    "flaky-hunt": "Hunt a flaky test: rerun the suite many times in parallel sandboxes, "
    "bisect to the first failing commit, build a repro, propose a fix (with --llm), "
    "prepare the PR.",
    "ls": "List runs, newest last.",
    "status": "Show a run: nodes by state, progress, elapsed (live while it runs).",
    "ledger": "List a run's events, or `ledger verify RUN` to re-hash its chain.",
    "pause": "Ask a running run to drain its in-flight nodes and park.",
    "resume": "Continue a parked, aborted or interrupted run in this process, from its "
    "ledger — or, with --from, from its checkpoints in object storage when the local "
    "ledger has lost it.",
    "approve": "Sign a decision on a parked gate and hand it to the run; a run no process "
    "drives continues here.",
    "receipts": "Show a run's signed budget receipts (from the ledger, or a file sink's copy).",
    "replay": "Re-execute the run's node code against its ledger; check it byte for byte.",
    "checkpoints": "List a run's checkpoints, or `checkpoints verify RUN` to check every one "
    "of them: signatures, the chain of manifests, ledger segments up to each head, chunk "
    "hashes; `checkpoints sync RUN` uploads what the store lacks after an outage.",
    "gc": "Delete checkpoint chunks and blobs that no checkpoint manifest refers to, and the "
    "work directories of runs that ended or that the ledger does not know (never those of "
    "runs that can resume).",
    "plan": "Check plans before running them.",
    "sandbox": "Try the sandboxes by hand.",
    "keys": "Approvers' signing keys.",
    "config": "The settings in force.",
}

# The root's options every command accepts after its own name too.
GLOBAL_OPTIONS = ("home", "ledger", "objects", "store_grace")


def load_commands() -> None:
    """Import every command module, registering its commands on the app."""
    for module in MODULES:
        importlib.import_module(f"orchestrator.cli.{module}")


class LazyCommandGroup(TyperGroup):
    """The root group: lists commands from :data:`INDEX` until one is asked for."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            from orchestrator.cli.root import app

            load_commands()
            self.commands = typer.main.get_group(app).commands
            shared = [p for p in self.params if p.name in GLOBAL_OPTIONS]
            for command in self.commands.values():
                _accept_after(command, shared)
            self._loaded = True

    def list_commands(self, ctx: Context) -> list[str]:
        return super().list_commands(ctx) if self._loaded else list(INDEX)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        if self._loaded:
            super().format_commands(ctx, formatter)
            return
        limit = formatter.width - 6 - max(map(len, INDEX))
        rows = [(name, make_default_short_help(text, limit)) for name, text in INDEX.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _accept_after(command: Command, shared: list[Parameter]) -> None:
    """Give ``command`` (each command of a group) the root's ``shared`` options; a value
    given there on the command line wins over the root's."""
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            _accept_after(sub, shared)
        return
    own = {p.name for p in command.params}
    for param in shared:
        if param.name in own:
            continue
        option = copy.copy(param)
        option.expose_value = False
        option.envvar = None  # read once, by the root
        if isinstance(option, TyperOption):
            option.show_envvar = False
        option.callback = _to_root
        command.params.append(option)


def _to_root(ctx: Context, param: Parameter, value: Any) -> None:
    if (
        value is not None
        and ctx.get_parameter_source(str(param.name)) is ParameterSource.COMMANDLINE
    ):
        root = ctx.find_root()
        root.obj[param.name] = value
        root.obj.setdefault("flags", set()).add(param.name)
