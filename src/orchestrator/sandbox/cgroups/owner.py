"""The owner directory ``o<pid>-<starttime>`` naming the orchestrator process that made
a cgroup: a cgroup whose owner is gone may be swept, one of a live owner never."""

from __future__ import annotations

import os
import re

__all__ = ["is_owner_name", "owner_alive", "owner_name", "starttime"]

_OWNER = re.compile(r"o(\d+)-(\d+)\Z")


def starttime(pid: int) -> int | None:
    """A process's start time in clock ticks since boot; None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5); the list starts at field 3
    except (IndexError, ValueError):
        return None


def owner_alive(name: str) -> bool:
    match = _OWNER.match(name)
    if match is None:
        return True  # not ours to judge: never sweep it
    return starttime(int(match.group(1))) == int(match.group(2))


def owner_name() -> str:
    """The owner directory's name for this process."""
    pid = os.getpid()
    return f"o{pid}-{starttime(pid) or 0}"


def is_owner_name(name: str) -> bool:
    return _OWNER.match(name) is not None
