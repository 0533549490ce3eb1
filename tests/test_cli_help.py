"""`orchestrator --help` lists the commands from an index, without importing them: the
index must say what the commands themselves say, in the same order."""

from __future__ import annotations

import pytest
import typer.main
from typer._click.utils import make_default_short_help
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.cli.commands import INDEX, LazyCommandGroup, load_commands


def loaded_group() -> LazyCommandGroup:
    load_commands()
    group = typer.main.get_group(app)
    assert isinstance(group, LazyCommandGroup)
    group.get_command(typer.Context(group), "run")  # a lazy group loads when asked for one
    return group


def test_the_index_names_every_visible_command_in_the_order_help_lists_them() -> None:
    group = loaded_group()
    visible = [name for name, cmd in group.commands.items() if not cmd.hidden]
    assert list(INDEX) == visible


@pytest.mark.parametrize("width", [20, 45, 60, 74, 100, 140, 400])
def test_each_index_entry_shortens_to_the_command_s_own_short_help(width: int) -> None:
    group = loaded_group()
    for name, text in INDEX.items():
        assert make_default_short_help(text, width) == group.commands[name].get_short_help_str(
            width
        ), name


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_lazy_help_is_the_help_of_the_loaded_commands(width: int) -> None:
    lazy = typer.main.get_group(app)
    assert isinstance(lazy, LazyCommandGroup)
    lazy_help = lazy.get_help(typer.Context(lazy, info_name="orchestrator", terminal_width=width))
    assert not lazy._loaded  # listing the commands imported none of them
    loaded = loaded_group()
    loaded_help = loaded.get_help(
        typer.Context(loaded, info_name="orchestrator", terminal_width=width)
    )
    assert "flaky-hunt" in lazy_help
    assert lazy_help == loaded_help


def test_a_mistyped_command_is_still_suggested() -> None:
    result = CliRunner().invoke(app, ["stauts"])
    assert result.exit_code == 2
    assert "No such command 'stauts'" in result.output
    assert "Did you mean 'status'?" in result.output
