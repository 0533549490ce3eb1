"""Runs' work directories, ``HOME/runs/RUN``, and when they go.

A run's directory holds its attempts' disks (images, overlay layers): what a resumed
attempt carries on with. Only a run that can still resume needs it. A run that succeeded
or failed never resumes (``resume`` refuses), so its directory is removed as it ends
(:func:`remove_run`); a parked, paused, aborted (resumable with a fresh budget) or
interrupted run keeps its own. :func:`collect_work` (``orchestrator gc``) removes the
rest: directories of finished runs (a crash between the end and the removal) and of runs
the ledger does not know, unmounting first whatever is still mounted there, and the warm
sandboxes' disks that killed orchestrators left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.ledger.state import TERMINAL_RUN
from orchestrator.sandbox.disk import remove_tree
from orchestrator.sandbox.pool import sweep

if TYPE_CHECKING:
    from orchestrator.runtime.engine import Runtime

__all__ = ["WorkReport", "collect_work", "remove_run", "run_dir"]

RUNS = "runs"


def run_dir(home: Path, run_id: str) -> Path:
    return home / RUNS / run_id


def remove_run(home: Path, run_id: str) -> None:
    """Remove a run's work directory, its disks unmounted first. Blocks: off the loop."""
    remove_tree(run_dir(home, run_id))


@dataclass
class WorkReport:
    """The work directories one collection removed (or, in a dry run, would remove)."""

    dry_run: bool
    removed: dict[str, str] = field(default_factory=dict)
    """Run id -> why it goes (``succeeded``, ``failed``, ``not in the ledger``)."""
    kept: int = 0
    removed_bytes: int = 0
    unmounted: int = 0

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = (
            f"{verb} {len(self.removed)} work directory(ies) of finished or unknown runs "
            f"({self.removed_bytes / 1e6:.1f} MB on disk); kept {self.kept} of runs that "
            "can resume"
        )
        if self.unmounted:
            text += f"; unmounted {self.unmounted} leftover mount(s)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": self.removed,
            "kept": self.kept,
            "removed_bytes": self.removed_bytes,
            "unmounted": self.unmounted,
        }


def collect_work(runtime: Runtime, *, dry_run: bool = False) -> WorkReport:
    """Remove the work directories of runs that succeeded or failed and of runs the ledger
    does not know; keep every other run's. Call only while no run of the home is live
    (:func:`orchestrator.gc.require_idle`): a run being started is not in the ledger yet."""
    report = WorkReport(dry_run=dry_run)
    runs = runtime.home / RUNS
    if not runs.is_dir():
        return report
    statuses = {run.run_id: run.status for run in runtime.runs()}
    for entry in sorted(runs.iterdir()):
        status = statuses.get(entry.name)
        if status is not None and status not in TERMINAL_RUN:
            report.kept += 1
            continue
        report.removed[entry.name] = status or "not in the ledger"
        report.removed_bytes += _allocated(entry)
        if not dry_run:
            report.unmounted += len(remove_tree(entry))
    if not dry_run:  # warm sandboxes' disks that killed orchestrators left
        swept = sweep(runtime.home)
        report.unmounted += sum(item.startswith("mount ") for item in swept)
    return report


def _allocated(path: Path) -> int:
    """Bytes the tree takes on the home's disk (a sparse image counts what it holds; a
    mounted image is not walked into, its file already counts)."""
    try:
        device = os.lstat(path).st_dev
    except OSError:
        return 0
    total = 0
    for top, dirs, files in os.walk(path):
        for name in list(dirs):
            try:
                if os.lstat(os.path.join(top, name)).st_dev != device:
                    dirs.remove(name)
            except OSError:
                dirs.remove(name)
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                continue
    return total
