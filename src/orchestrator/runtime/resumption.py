"""Where an attempt that was in flight at a crash goes on, so no journaled effect repeats.

An attempt's workspace is known at a few journal indexes: its initial (empty) state at
index 0, every ``WorkspaceSaved`` point (saved before each tool or model call when the
workspace changed, and before other effects at most every ``SAVE_EVERY_S``), what a
``NodeResumed`` reset it to, and the workspace snapshot of the latest checkpoint. The
latest of them also matches every later index up to the next effect that may change the
workspace (``exec``, ``write``): the journal is served up to there, and what follows is
performed again against the restored workspace. So a resume redoes sandbox commands (and
the ``now``/``random``/``sleep``/``log``/``checkpoint`` effects among them), never a
tool or model call that was journaled.
"""

from __future__ import annotations

from orchestrator.checkpoint import WorkspaceRef
from orchestrator.ledger.state import NodeState

CHANGES_WORKSPACE = frozenset({"exec", "write"})


def resume_point(ns: NodeState, checkpoint: WorkspaceRef | None) -> tuple[int, str | None]:
    """``(from_index, snapshot)`` for the in-flight attempt ``ns``: serve its journal up to
    ``from_index`` after restoring ``snapshot`` (None: the attempt's initial workspace)."""
    journal = ns.journal
    index, snapshot = ns.saved
    index = min(index, len(journal))
    if (
        checkpoint is not None
        and checkpoint.attempt == ns.attempt
        and index < checkpoint.journal_index <= len(journal)
    ):
        index, snapshot = checkpoint.journal_index, checkpoint.snapshot
    while index < len(journal) and journal[index].effect not in CHANGES_WORKSPACE:
        index += 1
    return index, snapshot
