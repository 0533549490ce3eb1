"""Errors of workspace snapshots."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError

__all__ = ["CorruptChunk", "SnapshotError", "UnsafeSnapshot"]


class SnapshotError(OrchestratorError):
    """A snapshot could not be taken, read or restored."""


class CorruptChunk(SnapshotError):
    """A stored chunk is missing or does not hash to its digest."""

    def __init__(self, digest: str, problem: str) -> None:
        self.digest = digest
        super().__init__(f"chunk {digest} {problem}")


class UnsafeSnapshot(SnapshotError):
    """A manifest that is malformed or could write outside the workspace on restore."""
