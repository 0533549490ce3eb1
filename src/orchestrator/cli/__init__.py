"""The ``orchestrator`` command line (Typer + Rich): ``app`` and its entry point ``main``.

The command modules load on first use (:mod:`orchestrator.cli.commands`), so
``orchestrator --help`` does not import them."""

from orchestrator.cli.root import app, main

__all__ = ["app", "main"]
