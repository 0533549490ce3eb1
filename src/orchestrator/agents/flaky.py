"""The flaky hunt's catalog of agent nodes, in one place (each lives in its own module).

Every node does real work with the repository's own test runner inside a sandbox; see
``intake``, ``reruns``, ``bisector``, ``fixer`` and ``publish``, and ``hunt`` for what
they share.
"""

from __future__ import annotations

from orchestrator.agents.bisector import bisector, repro_builder
from orchestrator.agents.fixer import fix_proposer
from orchestrator.agents.hunt import MAX_BATCHES, MISS, HuntInputs
from orchestrator.agents.intake import repo_fetch, repo_intake
from orchestrator.agents.publish import notifier, pr_author, pr_open, reviewed_pr_author
from orchestrator.agents.reruns import flake_report, flake_rerunner, rerun_planner

__all__ = [
    "MAX_BATCHES",
    "MISS",
    "HuntInputs",
    "repo_fetch",
    "repo_intake",
    "rerun_planner",
    "flake_rerunner",
    "flake_report",
    "bisector",
    "repro_builder",
    "fix_proposer",
    "pr_author",
    "reviewed_pr_author",
    "pr_open",
    "notifier",
]
