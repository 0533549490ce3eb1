"""Field-level differences between two JSON values, one line per differing field.

``outputs.count: 4 → 5``: the path of each differing leaf (keys sorted, list items as
``[i]``), then the expected and the regenerated value as JSON. Values are shown whole
unless very long, so the difference can be seen; a side a field is missing from reads
``(absent)``.
"""

from __future__ import annotations

import json
from typing import Any

LONG = 2000
"""Characters of one value shown before it is cut (with a marker saying how much)."""
MAX_LINES = 50
"""Differing fields listed before the rest are counted instead."""

_ABSENT = object()


def field_diff(expected: Any, got: Any) -> list[str]:
    """The lines that tell ``expected`` from ``got``; empty when they are equal."""
    lines: list[str] = []
    _walk(expected, got, "", lines)
    if len(lines) > MAX_LINES:
        rest = len(lines) - MAX_LINES
        lines = [*lines[:MAX_LINES], f"… and {rest} more differing field(s)"]
    return lines


def _walk(expected: Any, got: Any, path: str, lines: list[str]) -> None:
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(expected.keys() | got.keys(), key=str):
            sub = f"{path}.{key}" if path else str(key)
            _walk(expected.get(key, _ABSENT), got.get(key, _ABSENT), sub, lines)
    elif isinstance(expected, list) and isinstance(got, list):
        for i in range(max(len(expected), len(got))):
            left = expected[i] if i < len(expected) else _ABSENT
            right = got[i] if i < len(got) else _ABSENT
            _walk(left, right, f"{path}[{i}]", lines)
    else:
        left, right = _json(expected), _json(got)
        if left != right:
            lines.append(f"{path or '(value)'}: {_cut(left)} → {_cut(right)}")


def _json(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _cut(text: str) -> str:
    if len(text) > LONG:
        return f"{text[:LONG]}… [{len(text) - LONG} more characters not shown]"
    return text
