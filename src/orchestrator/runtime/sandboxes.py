"""Sandboxes for node attempts: the backend is resolved on first use, then pooled.

A node attempt gets its sandbox lazily, on its first live ``exec``/``read``/``write``: an
attempt whose effects are all served from the journal (resume, replay) starts none.

Everything an attempt writes lives on its disk (:class:`~orchestrator.sandbox.disk.Disk`,
limited to ``Limits.disk_mb``) in the attempt's durable directory ``DURABLE``:
``DURABLE/disk/workspace`` when the node has no repository (a warm sandbox's directory,
disk included, is renamed there), ``DURABLE/disk/{upper,work,merged}`` for an overlay over
one. So what a node wrote survives a crash of the orchestrator and is there again when it
resumes; the disk is unmounted when the attempt's sandbox is released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import DiskError, SandboxError, SnapshotError, StorageError
from orchestrator.node import NodeSpec
from orchestrator.sandbox.base import BackendName, Meter, SandboxSpec
from orchestrator.sandbox.disk import Disk, remove_tree
from orchestrator.sandbox.factory import choose
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.pool import WORKSPACE, SandboxPool, sweep
from orchestrator.sandbox.process import AgentSandbox
from orchestrator.sandbox.roots import WorkspacePolicy
from orchestrator.sandbox.snapshot.scan import SnapshotIndex
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.sandbox.workspace import OverlayWorkspace, sweep_mounts

SAVE_EVERY_S = 1.0
"""A save that is not needed at once waits until the last one is this old (seconds)."""

log = logging.getLogger(__name__)


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
        self._unmounting: set[asyncio.Task[None]] = set()

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
        if lower is None and (fresh or not await asyncio.to_thread(durable.exists)):
            sandbox = await pool.acquire(sandbox_spec)
            await asyncio.to_thread(_adopt, sandbox, durable)
            return sandbox, None
        # Carrying on in a directory it already wrote to, or an overlay over a repository:
        # a sandbox started for that directory.
        hidden = self.policy.hidden if self.policy is not None else (self.home,)
        disk, overlay = await asyncio.to_thread(
            _prepare, lower, durable, fresh, limits.disk_mb, hidden
        )
        workspace = overlay.merged if overlay is not None else disk.root / WORKSPACE
        try:
            sandbox = await pool.acquire(sandbox_spec, workspace=workspace)
        except BaseException:
            await asyncio.to_thread(disk.unmount)
            raise
        sandbox.disk = disk
        return sandbox, overlay

    async def release(self, sandbox: AgentSandbox, overlay: OverlayWorkspace | None) -> Meter:
        meter = sandbox.meter()
        assert self._pool is not None
        await self._pool.release(sandbox)
        if sandbox.disk is not None:  # the overlay (if any) and the disk under it
            # Off the attempt's path: its outcome does not wait for the unmount.
            task = asyncio.create_task(_unmount(sandbox.disk))
            self._unmounting.add(task)
            task.add_done_callback(self._unmounting.discard)
        return meter

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await asyncio.gather(*self._unmounting)


async def _unmount(disk: Disk) -> None:
    try:
        await asyncio.to_thread(disk.unmount)
    except DiskError as exc:  # still mounted: the run's end or `gc` removes it later
        log.warning("cannot unmount %s: %s", disk.root, exc)


def workspace_path(durable: Path, overlay: bool) -> Path:
    """Where the host sees what the attempt's sandbox sees at ``/workspace``."""
    root = Disk(durable, None).root
    return OverlayWorkspace(None, root).merged if overlay else root / WORKSPACE


def _prepare(
    lower: Path | None,
    durable: Path,
    fresh: bool,
    disk_mb: int | None,
    hidden: tuple[Path, ...],
) -> tuple[Disk, OverlayWorkspace | None]:
    """Mount the attempt's disk at ``durable`` (emptied first when ``fresh``) and, with
    ``lower``, a copy-on-write view of it whose upper layer is on that disk, ``hidden``
    left out of it."""
    if lower is not None and not lower.is_dir():
        raise SandboxError(f"the workspace source {str(lower)!r} is not a directory")
    # A killed orchestrator leaves its overlays mounted; this attempt is ours (the run
    # lock says so), so unmount before mounting again over the same upper layer.
    sweep_mounts(durable)
    if fresh:
        remove_tree(durable)
    disk = Disk(durable, disk_mb).mount()
    try:
        if lower is None:
            (disk.root / WORKSPACE).mkdir(exist_ok=True)
            return disk, None
        return disk, OverlayWorkspace(lower, disk.root, hidden=hidden).mount()
    except BaseException:
        disk.unmount()
        raise


def _adopt(sandbox: AgentSandbox, durable: Path) -> None:
    """Make ``durable`` the warm sandbox's directory, its disk included: one rename, the
    sandbox keeps its bind. ``durable`` holds nothing yet (or only a discarded attempt)."""
    disk = sandbox.disk
    assert disk is not None, "a pool sandbox comes with its disk"
    durable.parent.mkdir(parents=True, exist_ok=True)
    remove_tree(durable)
    disk.move(durable)
    sandbox.workspace = disk.root / WORKSPACE


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
        self._changed = False
        self._index: SnapshotIndex | None = None
        self._saved_at = 0.0

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

    def touched(self) -> None:
        """The workspace may have changed since the last save."""
        self._changed = True

    async def save(self, *, now: bool) -> str | None:
        """Snapshot the workspace into the chunk store if it changed since the last save
        (incrementally: unchanged files are not read again) and, unless ``now``, that save
        is SAVE_EVERY_S old; its snapshot id, or None when not saved (a resume then redoes
        more). A save that fails is logged, not raised: the run's outcome must not depend
        on the object store."""
        sandbox = self._sandbox
        if not self._changed or sandbox is None or self._chunks is None:
            return None
        if not now and time.monotonic() - self._saved_at < SAVE_EVERY_S:
            return None
        try:
            snap, self._index = await sandbox.snapshot(self._chunks, self._index)
        except (SnapshotError, StorageError, OSError) as exc:
            log.warning("workspace of %s not saved: %s", self._durable.name, exc)
            return None
        self._changed, self._saved_at = False, time.monotonic()
        return snap.id

    async def release(self) -> tuple[BackendName, Meter] | None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is None:
            return None
        return sandbox.backend, await self._broker.release(sandbox, self._overlay)
