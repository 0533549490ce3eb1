"""The sandbox contract: start, exec, read, write, snapshot, restore, close.

A sandbox runs a node's commands in isolation and enforces what the node declares:
without ``net`` there is no network at all; without ``fs`` the workspace is read-only;
nothing outside the workspace and the system's read-only binaries is visible. Every
backend (gvisor, bwrap, local, and later microvm) implements :class:`Sandbox` and passes
the same contract tests.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict

from orchestrator.sandbox.limits import Limits

if TYPE_CHECKING:
    from orchestrator.sandbox.snapshot.restore import RestoreResult
    from orchestrator.sandbox.snapshot.scan import Snapshot, SnapshotIndex
    from orchestrator.sandbox.snapshot.store import ChunkStore

BackendName = Literal["gvisor", "bwrap", "local"]
BACKENDS: tuple[BackendName, ...] = ("gvisor", "bwrap", "local")


class SandboxSpec(BaseModel):
    """What one sandbox may do and use."""

    model_config = ConfigDict(frozen=True)

    effects: frozenset[str] = frozenset()
    limits: Limits = Limits()


class CommandResult(BaseModel):
    """One command's outcome inside a sandbox."""

    code: int
    stdout: bytes
    stderr: bytes
    duration: float
    timed_out: bool = False


class Meter(BaseModel):
    """Compute used by a sandbox: wall-clock, the CPU share it held, and CPU time burnt."""

    wall_s: float
    vcpus: float
    cpu_s: float

    @property
    def compute_h(self) -> float:
        """Wall-clock x vCPUs, in hours: what the budget charges."""
        return self.wall_s * self.vcpus / 3600


class Sandbox(Protocol):
    """One isolated place to run a node's commands, usable as an async context manager."""

    backend: BackendName
    spec: SandboxSpec
    workspace: Path

    async def start(self) -> None: ...

    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = ".",
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the command's own limit
    ) -> CommandResult: ...

    async def read(self, path: str) -> bytes: ...

    async def write(self, path: str, data: bytes) -> None: ...

    async def snapshot(
        self, store: ChunkStore, previous: SnapshotIndex | None = None
    ) -> tuple[Snapshot, SnapshotIndex]: ...

    async def restore(self, snapshot_id: str, store: ChunkStore) -> RestoreResult: ...

    def meter(self) -> Meter: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
