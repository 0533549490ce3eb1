"""PEP 735 dependency groups: which requirements a project's tests need from
``[dependency-groups]`` in its ``pyproject.toml``.

The groups named for tests (:data:`TEST_GROUPS`) are installed, or ``dev`` when there is
none of them; ``{include-group = "..."}`` entries are resolved here, into the plain
requirement strings any pip takes. Rejected: ``pip install --group``, which needs pip 25.1
while a venv made by the sandbox's ``python3`` has the pip its ``ensurepip`` bundles.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import ConfigError

__all__ = ["DEV_GROUP", "TEST_GROUPS", "requirements_for_tests"]

TEST_GROUPS = ("test", "tests", "testing")
DEV_GROUP = "dev"


def requirements_for_tests(pyproject: dict[str, Any]) -> list[str]:
    """The requirement strings of the groups holding ``pyproject``'s test requirements
    (each once, in order), ``[]`` without any; a :class:`ConfigError` for a malformed
    table (an unknown or circular ``include-group``, an entry that is not a requirement)."""
    groups = pyproject.get("dependency-groups")
    if not isinstance(groups, dict):
        return []
    named = {_normalized(str(name)): name for name in groups}
    chosen = [named[name] for name in TEST_GROUPS if name in named]
    if not chosen and DEV_GROUP in named:
        chosen = [named[DEV_GROUP]]
    requirements: dict[str, None] = {}
    for name in chosen:
        requirements.update(dict.fromkeys(_resolve(groups, named, name, ())))
    return list(requirements)


def _resolve(
    groups: dict[str, Any], named: dict[str, str], name: str, seen: tuple[str, ...]
) -> list[str]:
    entries = groups[name]
    if not isinstance(entries, list):
        raise _malformed(f"group {name!r} is not a list")
    resolved: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            if not entry.strip() or entry.lstrip().startswith("-"):
                raise _malformed(f"group {name!r} holds {entry!r}, not a requirement")
            resolved.append(entry.strip())
        elif isinstance(entry, dict) and set(entry) == {"include-group"}:
            include = _normalized(str(entry["include-group"]))
            if include not in named:
                raise _malformed(f"group {name!r} includes {include!r}, which is not defined")
            if named[include] in (*seen, name):
                chain = " -> ".join((*seen, name, named[include]))
                raise _malformed(f"include-group goes round in a circle: {chain}")
            resolved += _resolve(groups, named, named[include], (*seen, name))
        else:
            raise _malformed(f"group {name!r} holds {entry!r}, not a requirement")
    return resolved


def _normalized(name: str) -> str:
    """A group name compared as PEP 735 says: case-folded, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _malformed(problem: str) -> ConfigError:
    return ConfigError(f"pyproject.toml's [dependency-groups]: {problem}")
