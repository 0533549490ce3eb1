"""Finding the cgroup hierarchies (v1 controllers or the v2 unified one) and where this
process sits in them, from ``/proc/self/mountinfo`` and ``/proc/self/cgroup``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.errors import CgroupError
from orchestrator.sandbox.cgroups.explain import explain
from orchestrator.sandbox.cgroups.files import read_value

__all__ = ["UNIFIED", "V1_REQUIRED", "V2_CONTROLLERS", "Layout", "discover"]

PARENT_NAME = "orchestrator"
V1_REQUIRED = ("memory", "pids", "cpu")
V1_OPTIONAL = ("cpuacct",)
V2_CONTROLLERS = ("memory", "pids", "cpu")
UNIFIED = "unified"  # key of the single directory on cgroup v2

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class _Mount:
    fstype: str
    root: str
    point: Path
    superopts: frozenset[str]


def _unescape(field: str) -> str:
    raw = os.fsencode(field)
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def _cgroup_mounts(mountinfo: Path) -> list[_Mount]:
    try:
        text = mountinfo.read_text(errors="surrogateescape")
    except OSError as exc:
        raise CgroupError(f"cannot read {mountinfo}: {explain(exc)}") from exc
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lfields, rfields = left.split(), right.split()
        if len(lfields) < 5 or not rfields or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        superopts = frozenset(rfields[2].split(",")) if len(rfields) > 2 else frozenset()
        mounts.append(
            _Mount(rfields[0], _unescape(lfields[3]), Path(_unescape(lfields[4])), superopts)
        )
    return mounts


def _membership(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` on v2."""
    try:
        text = proc_cgroup.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {proc_cgroup}: {explain(exc)}") from exc
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def _visible(own: str, mount_root: str) -> str:
    """``own`` relative to a mount whose root is ``mount_root`` ("/" if not below it)."""
    if mount_root in ("", "/"):
        return own
    if own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
        return own[len(mount_root.rstrip("/")) :] or "/"
    return "/"


@dataclass(frozen=True, slots=True)
class Layout:
    version: Literal[1, 2]
    parents: dict[str, Path]  # controller (v2: UNIFIED) -> the orchestrator/ directory
    v2_mount: Path | None


def discover(parent: str | None, mountinfo: Path, proc_cgroup: Path) -> Layout:
    mounts = _cgroup_mounts(mountinfo)
    member = _membership(proc_cgroup)

    def place(mount: _Mount, own: str) -> Path:
        rel = parent if parent is not None else f"{_visible(own, mount.root)}/{PARENT_NAME}"
        return mount.point.joinpath(*[p for p in rel.split("/") if p])

    v1: dict[str, _Mount] = {}
    for mount in mounts:
        if mount.fstype == "cgroup":
            for controller in mount.superopts & {*V1_REQUIRED, *V1_OPTIONAL}:
                v1.setdefault(controller, mount)
    if any(c in v1 for c in V1_REQUIRED):
        missing = [c for c in V1_REQUIRED if c not in v1]
        if missing:
            raise CgroupError(
                f"cgroup v1 controller(s) {', '.join(missing)} are not mounted "
                f"(found {', '.join(sorted(v1))}); sandbox limits need memory, pids and cpu"
            )
        parents = {c: place(m, member.get(c, "/")) for c, m in v1.items()}
        return Layout(1, parents, None)

    unified = [m for m in mounts if m.fstype == "cgroup2"]
    if not unified:
        raise CgroupError("no cgroup filesystem is mounted (neither v1 controllers nor cgroup2)")
    mount = next((m for m in unified if m.point == Path("/sys/fs/cgroup")), unified[0])
    available = (read_value(mount.point / "cgroup.controllers") or "").split()
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupError(
            f"cgroup v2 at {mount.point} lacks controller(s) {', '.join(missing)} "
            f"(available: {' '.join(available) or 'none'})"
        )
    return Layout(2, {UNIFIED: place(mount, member.get("", "/"))}, mount.point)
