"""The home directory's preconditions, checked in one place before a Runtime uses it.

Commands that only read never create the home; commands that write need it to be a
directory they can create and write to. Both refuse a home that is not a directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.errors import ConfigError

_HINT = "set --home or ORCHESTRATOR_HOME to a directory you can write to"


def check_home(home: Path, *, create: bool) -> None:
    """Raise ConfigError if ``home`` cannot serve; with ``create``, make it if missing."""
    try:
        str(home).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"the home {_shown(home)} is not a UTF-8 path (the ledger records paths as text); "
            f"{_HINT}"
        ) from None
    if home.exists() and not home.is_dir():
        raise ConfigError(f"the home {_shown(home)} is not a directory; {_HINT}")
    if not create:
        return
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the home {_shown(home)} ({exc.strerror}); {_HINT}"
        ) from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise ConfigError(f"the home {_shown(home)} is read-only; {_HINT}")


def _shown(path: Path) -> str:
    """A path as printable text, undecodable bytes escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
