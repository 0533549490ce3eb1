"""The ``orchestrator`` command line (Typer + Rich): ``app`` and its entry point ``main``."""

from orchestrator.cli.root import app, main

# Importing a command module registers its commands on the app, and `orchestrator --help`
# lists them in registration order: keep this order (and keep isort out of it).
# isort: off
from orchestrator.cli import plans, demo, hunt, runs, gates, audit, sandbox  # noqa: F401
# isort: on

__all__ = ["app", "main"]
