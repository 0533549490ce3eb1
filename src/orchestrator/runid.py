"""Run ids: what a run id may look like, checked once wherever one comes from outside.

A run id names files (locks, keys, receipts, work directories) and object-store keys, so
it must be plain text: ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a
letter or digit, at most 128 characters. Ids made by the runtime
(``20250101-120000-a1b2c3``) always fit.
"""

from __future__ import annotations

import re
from typing import NewType

from orchestrator.errors import ConfigError

RunId = NewType("RunId", str)

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(text: str) -> RunId:
    """``text`` as a RunId, or a ConfigError naming it (non-UTF-8 bytes shown escaped)."""
    if _RUN_ID.fullmatch(text) is None:
        shown = _shown(text[:80]) + ("…" if len(text) > 80 else "")
        raise ConfigError(
            f"{shown} is not a run id: a run id is made of ASCII letters, digits, '.', '_' "
            "and '-' (at most 128 characters), like 20250101-120000-a1b2c3; "
            "`orchestrator ls` lists the runs"
        )
    return RunId(text)


def _shown(text: str) -> str:
    """Quoted, with bytes that are not UTF-8 (decoded as surrogates from argv) as ``\\xNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return repr(text.encode("utf-8", "surrogateescape"))[1:]
        except UnicodeEncodeError:
            return ascii(text)
    return repr(text)
