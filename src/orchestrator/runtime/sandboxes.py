"""Sandboxes for node attempts: the backend is resolved on first use, then pooled.

A node attempt gets its sandbox lazily, on its first live ``exec``/``read``/``write``: an
attempt whose effects are all served from the journal (resume, replay) starts none. The
pool's fresh workspace is renamed to the attempt's durable workspace directory, so what a
node wrote survives a crash of the orchestrator and is there again when it resumes.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from orchestrator.node import NodeSpec
from orchestrator.sandbox.base import BackendName, Meter, SandboxError, SandboxSpec
from orchestrator.sandbox.factory import choose
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.pool import SandboxPool, sweep
from orchestrator.sandbox.process import AgentSandbox
from orchestrator.sandbox.roots import WorkspacePolicy
from orchestrator.sandbox.snapshot import ChunkStore
from orchestrator.sandbox.workspace import OverlayWorkspace, sweep_mounts


class SandboxBroker:
    """Hands sandboxes of one run's backend to node attempts."""

    def __init__(
        self,
        home: Path,
        backend: str = "auto",
        warm: int = 2,
        on_chosen: Callable[[BackendName, str], None] | None = None,
        policy: WorkspacePolicy | None = None,
    ) -> None:
        self.home = home
        self.policy = policy
        self.on_chosen = on_chosen
        self.requested = backend
        self.warm = warm
        self.chosen: tuple[BackendName, str] | None = None
        self._pool: SandboxPool | None = None
        self._resolving = asyncio.Lock()

    async def pool(self) -> SandboxPool:
        async with self._resolving:
            if self._pool is None:
                await asyncio.to_thread(sweep, self.home)
                self.chosen = await choose(self.requested, self.home)
                if self.on_chosen is not None:
                    self.on_chosen(*self.chosen)
                self._pool = SandboxPool(self.chosen[0], self.home, self.warm)
            return self._pool

    def workspace_of(self, node: str, port: str, value: object) -> Path:
        """The host directory a node's workspace input names, checked against the run's
        allowed roots (:class:`~orchestrator.sandbox.roots.WorkspaceRefused` if not)."""
        if self.policy is None:
            return Path(str(value)).absolute()
        return self.policy.check(node, port, value)

    async def lease(
        self, spec: NodeSpec, durable: Path, lower: Path | None, *, fresh: bool = False
    ) -> tuple[AgentSandbox, OverlayWorkspace | None]:
        """A sandbox for one attempt whose workspace lives at ``durable``.

        Without ``lower`` a warm sandbox's fresh workspace is moved there. With ``lower``
        (the repository the node works on) the workspace is a copy-on-write overlay of
        it, its upper layer kept under ``durable`` so a resumed attempt sees its writes.
        """
        limits = spec.limits or Limits()
        if spec.timeout is not None and limits.timeout_s is None:
            limits = limits.model_copy(update={"timeout_s": spec.timeout})
        sandbox_spec = SandboxSpec(effects=spec.effects, limits=limits)
        pool = await self.pool()
        if lower is None:
            sandbox = await pool.acquire(sandbox_spec)
            _adopt(sandbox, durable, fresh)
            return sandbox, None
        hidden = self.policy.hidden if self.policy is not None else (self.home,)
        overlay = _overlay(lower, durable, fresh, hidden)
        try:
            return await pool.acquire(sandbox_spec, workspace=overlay.merged), overlay
        except BaseException:
            overlay.unmount()
            raise

    async def release(self, sandbox: AgentSandbox, overlay: OverlayWorkspace | None) -> Meter:
        meter = sandbox.meter()
        assert self._pool is not None
        await self._pool.release(sandbox)
        if overlay is not None:
            overlay.unmount()
        return meter

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def _overlay(lower: Path, durable: Path, fresh: bool, hidden: tuple[Path, ...]) -> OverlayWorkspace:
    """Mount a copy-on-write view of ``lower`` whose upper layer lives under ``durable``
    (emptied first when ``fresh``), ``hidden`` left out of it."""
    if not lower.is_dir():
        raise SandboxError(f"the workspace source {str(lower)!r} is not a directory")
    # A killed orchestrator leaves its overlays mounted; this attempt is ours (the run
    # lock says so), so unmount before mounting again over the same upper layer.
    sweep_mounts(durable)
    if fresh:
        shutil.rmtree(durable, ignore_errors=True)
    return OverlayWorkspace(lower, durable, hidden=hidden).mount()


def _adopt(sandbox: AgentSandbox, durable: Path, fresh: bool = False) -> None:
    """Make ``durable`` the sandbox's workspace: renames only, the sandbox keeps its bind.

    A resumed attempt carries on with what it already wrote, unless ``fresh``."""
    durable.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        shutil.rmtree(durable, ignore_errors=True)
    if durable.exists():
        for entry in durable.iterdir():
            entry.rename(sandbox.workspace / entry.name)
        durable.rmdir()
    sandbox.workspace.rename(durable)
    sandbox.workspace = durable


class SandboxHandle:
    """One attempt's sandbox, started on first need and released when the attempt ends."""

    def __init__(
        self,
        broker: SandboxBroker,
        spec: NodeSpec,
        durable: Path,
        lower: Path | None = None,
        restore: str | None = None,
        chunks: ChunkStore | None = None,
        fresh: bool = False,
    ) -> None:
        self.on_start: Callable[[], None] | None = None
        """Called once the sandbox runs (its compute is metered from then on)."""
        self._fresh = fresh
        self._restore = restore
        self._chunks = chunks
        self._broker = broker
        self._spec = spec
        self._durable = durable
        self._lower = lower
        self._sandbox: AgentSandbox | None = None
        self._overlay: OverlayWorkspace | None = None
        self._starting = asyncio.Lock()

    @property
    def started(self) -> AgentSandbox | None:
        """The attempt's sandbox, if it has one yet."""
        return self._sandbox

    async def get(self) -> AgentSandbox:
        async with self._starting:
            if self._sandbox is None:
                sandbox, self._overlay = await self._broker.lease(
                    self._spec, self._durable, self._lower, fresh=self._fresh
                )
                if self._restore is not None and self._chunks is not None:
                    # Resumed from a checkpoint: the workspace goes back to its snapshot
                    # before the first command performed again.
                    await sandbox.restore(self._restore, self._chunks)
                self._sandbox = sandbox
                if self.on_start is not None:
                    self.on_start()
            return self._sandbox

    async def release(self) -> tuple[BackendName, Meter] | None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is None:
            return None
        return sandbox.backend, await self._broker.release(sandbox, self._overlay)
