"""A warm pool: sandboxes started ahead of demand, handed out on acquire, torn down after use.

Each sandbox owns a fresh directory ``HOME/sandbox/live/ID`` with its disk (limited to the
spec's ``disk_mb``, see :mod:`orchestrator.sandbox.disk`) and its workspace
``disk/workspace`` on it. The pool
keeps ``size`` ready sandboxes per spec (effects and limits), refills in the background
after every acquire, and on close tears down everything it started. ``sweep`` removes what
a killed orchestrator left behind (processes, cgroups, runsc containers, directories) and
the sandboxes that teardown gave up on (recorded under ``HOME/sandbox/leaked``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import DiskError
from orchestrator.sandbox.base import BackendName, SandboxSpec
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter, sweep_stale
from orchestrator.sandbox.disk import Disk, remove_tree
from orchestrator.sandbox.factory import launcher_for, limiter_for
from orchestrator.sandbox.gvisor import GvisorLauncher
from orchestrator.sandbox.process import (
    SANDBOX_PREFIX,
    START_TIMEOUT_S,
    AgentSandbox,
    owner_alive,
)
from orchestrator.sandbox.teardown import (
    TEARDOWN_GRACE_S,
    bounded,
    in_own_thread,
    leaks_dir,
    sweep_leaks,
)

WORKSPACE = "workspace"

log = logging.getLogger(__name__)


class SandboxPool:
    """Warm sandboxes of one backend, keyed by spec."""

    def __init__(self, backend: BackendName, home: Path, size: int = 2) -> None:
        self.backend = backend
        self.home = home
        self.size = size
        self.live_dir = home / "sandbox" / "live"
        self.leaks_dir = leaks_dir(home)
        self._launcher = launcher_for(backend, home)
        self._limiter: CgroupLimiter | None = limiter_for(home)
        self._warm: dict[SandboxSpec, list[AgentSandbox]] = {}
        self._refills: set[asyncio.Task[None]] = set()
        self._starting: dict[SandboxSpec, int] = {}
        self._leased: set[AgentSandbox] = set()
        self._closed = False

    async def _start_one(self, spec: SandboxSpec, workspace: Path | None = None) -> AgentSandbox:
        sandbox = AgentSandbox(self._launcher, spec, Path(), self._limiter, leaks=self.leaks_dir)
        try:
            if workspace is None:
                disk = Disk(self.live_dir / sandbox.id, spec.limits.disk_mb)
                mounting = asyncio.ensure_future(asyncio.to_thread(disk.mount))
                try:
                    sandbox.disk = await asyncio.shield(mounting)
                except asyncio.CancelledError:
                    # the mount goes on in its thread (bounded by its own timeout): let it
                    # end before clearing up, or its mount would outlive the clean-up
                    await asyncio.wait([mounting])
                    raise
                workspace = disk.root / WORKSPACE
            sandbox.workspace = workspace
            await sandbox.start()
        except BaseException:
            await self._remove(sandbox)
            raise
        return sandbox

    async def _remove(self, sandbox: AgentSandbox) -> None:
        """Delete a sandbox's directory; what stays mounted is left to the next sweep."""
        try:
            await asyncio.to_thread(remove_tree, self.live_dir / sandbox.id)
        except DiskError as exc:
            log.warning("sandbox %s: %s; the next sweep removes it", sandbox.id, exc)

    async def warm(self, spec: SandboxSpec) -> None:
        """Fill the pool for ``spec`` up to ``size`` ready sandboxes, one at a time."""
        ready = self._warm.setdefault(spec, [])
        while not self._closed and len(ready) + self._starting.get(spec, 0) < self.size:
            self._starting[spec] = self._starting.get(spec, 0) + 1
            try:
                sandbox = await self._start_one(spec)
            except Exception as exc:  # a background refill: acquire starts one and reports
                log.warning("could not warm a %s sandbox: %s", self.backend, exc)
                return
            finally:
                self._starting[spec] -= 1
            if self._closed:
                await self.release(sandbox)
                return
            ready.append(sandbox)

    async def acquire(self, spec: SandboxSpec, workspace: Path | None = None) -> AgentSandbox:
        """A ready sandbox for ``spec`` (started now if none is warm); refills behind.

        With ``workspace`` (a directory that exists only now, such as an overlay over a
        repository) the sandbox is started for it rather than taken from the warm set.
        """
        if workspace is not None:
            sandbox = await self._start_one(spec, workspace)
            self._leased.add(sandbox)
            return sandbox
        ready = self._warm.setdefault(spec, [])
        sandbox = ready.pop() if ready else await self._start_one(spec)
        self._leased.add(sandbox)
        if self.size > 0:
            task = asyncio.create_task(self.warm(spec))
            self._refills.add(task)
            task.add_done_callback(self._refills.discard)
        return sandbox

    async def release(self, sandbox: AgentSandbox) -> None:
        """Tear a used sandbox down; its workspace goes with it."""
        self._leased.discard(sandbox)
        await sandbox.close()
        await self._remove(sandbox)

    async def close(self) -> None:
        self._closed = True
        refills = list(self._refills)
        for task in refills:
            task.cancel()
        if refills:  # a sandbox being started is torn down within its grace
            await asyncio.wait(refills, timeout=START_TIMEOUT_S + TEARDOWN_GRACE_S)
        everything = [s for ready in self._warm.values() for s in ready] + list(self._leased)
        self._warm.clear()
        await asyncio.gather(*(self.release(s) for s in everything), return_exceptions=True)
        if self.leaks_dir.is_dir():  # what would not die earlier may be gone by now
            await bounded(
                in_own_thread(lambda: sweep_leaks(self.leaks_dir, self._cleanup)),
                TEARDOWN_GRACE_S,
                "sweeping leaked sandboxes",
            )

    def _cleanup(self, backend: str, sandbox_id: str) -> None:
        if backend == self.backend:
            self._launcher.cleanup(sandbox_id)

    def counts(self) -> dict[str, int]:
        return {"warm": sum(len(r) for r in self._warm.values()), "leased": len(self._leased)}

    async def __aenter__(self) -> SandboxPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def sweep(home: Path) -> list[str]:
    """Remove what killed orchestrators left: cgroups and their processes, runsc
    containers and sandbox directories — only those whose owning process is gone, never a
    live orchestrator's. Returns what it removed."""
    gvisor = GvisorLauncher(home / "sandbox" / "gvisor")

    def cleanup(backend: str, sandbox_id: str) -> None:
        if backend == "gvisor" and shutil.which(gvisor.executable):
            gvisor.cleanup(sandbox_id)

    removed = [f"leaked sandbox {i}" for i in sweep_leaks(leaks_dir(home), cleanup)]
    removed += [f"cgroup {name}" for name in sweep_stale(SANDBOX_PREFIX)]
    if shutil.which(gvisor.executable) and (gvisor.state / "runsc").exists():
        for container in gvisor.leftovers():
            if not owner_alive(container):
                try:
                    gvisor.cleanup(container)
                except subprocess.TimeoutExpired:
                    continue  # runsc is wedged on it: the next sweep tries again
                removed.append(f"runsc container {container}")
    # Bundles of containers that already exited (runsc no longer lists them).
    for bundle in _children(gvisor.state / "bundles"):
        if not owner_alive(bundle.name):
            shutil.rmtree(bundle, ignore_errors=True)
            removed.append(f"directory {bundle}")
    live = home / "sandbox" / "live"
    for entry in _children(live):
        if not owner_alive(entry.name):
            try:
                removed += [f"mount {point}" for point in remove_tree(entry)]
            except DiskError as exc:  # busy beyond a lazy unmount: the next sweep retries
                log.warning("cannot sweep %s: %s", entry, exc)
                continue
            removed.append(f"directory {entry}")
    return removed


def _children(path: Path) -> Iterator[Path]:
    return iter(sorted(path.iterdir())) if path.is_dir() else iter(())
