"""Resource limits end to end: real sandboxes in real cgroups, and a real run.

A memory hog and a fork bomb inside gVisor and bubblewrap sandboxes are stopped by the
sandbox's cgroup and reported as :class:`SandboxLimitExceeded`; nothing of the sandbox
survives (no processes, no cgroup directories) and the next sandbox works. Through the
runtime, a node whose command blows its memory limit fails with the reason on the ledger.
Skipped only when this machine cannot create cgroups (or lacks a backend's binary).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, node
from orchestrator.errors import SandboxError, SandboxLimitExceeded
from orchestrator.ledger.events import NodeFailed, SandboxMetered, decode
from orchestrator.sandbox.base import SandboxSpec
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter, cgroups_available
from orchestrator.sandbox.factory import launcher_for
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.process import AgentSandbox
from tests.backends import backends, needs
from tests.crashing import processes_with

AVAILABLE, REASON = cgroups_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"cgroups unusable here: {REASON}")

BACKENDS = backends()

HOG = "b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')"


@pytest.fixture
def limiter() -> Iterator[CgroupLimiter]:
    made = CgroupLimiter()
    yield made
    made.close()


def wait_until_gone(needle: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_with(needle)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def _sandbox(
    backend: str, home: Path, limiter: CgroupLimiter, limits: Limits
) -> AgentSandbox:
    sandbox = AgentSandbox(
        launcher_for(backend, home),  # type: ignore[arg-type]
        SandboxSpec(limits=limits),
        home / "ws" / secrets.token_hex(4),
        limiter,
    )
    await sandbox.start()
    return sandbox


def _cgroup_paths(sandbox: AgentSandbox) -> tuple[Path, ...]:
    cgroup = sandbox._cgroup
    assert cgroup is not None, "the sandbox runs without a cgroup"
    paths = cgroup.paths
    assert paths and all(p.is_dir() for p in paths)
    return paths


async def _host_is_fine(backend: str, home: Path, limiter: CgroupLimiter) -> None:
    later = await _sandbox(backend, home, limiter, Limits())
    try:
        result = await later.exec(["sh", "-c", "echo fine; sleep 0.01 & wait"])
        assert (result.code, result.stdout) == (0, b"fine\n")
    finally:
        await later.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_memory_hog_is_killed_and_reported(
    backend: str, tmp_path: Path, limiter: CgroupLimiter
) -> None:
    sandbox = await _sandbox(backend, tmp_path / "home", limiter, Limits(memory_mb=128))
    paths = _cgroup_paths(sandbox)
    try:
        with pytest.raises(SandboxLimitExceeded) as raised:
            await sandbox.exec(["python3", "-c", HOG], timeout=60)
    finally:
        await sandbox.close()
    assert raised.value.limit == "memory"
    assert "memory limit exceeded" in str(raised.value)
    assert "128 MB" in str(raised.value)
    assert not [p for p in paths if p.exists()], "the sandbox's cgroup outlived it"
    assert wait_until_gone(sandbox.id) == []
    await _host_is_fine(backend, tmp_path / "home", limiter)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_fork_bomb_is_contained_and_reported(
    backend: str, tmp_path: Path, limiter: CgroupLimiter
) -> None:
    # A unique sleep length marks the bomb's processes on the host (bwrap's are host
    # processes in their own pid namespace; gVisor's live inside its sentry).
    nap = f"9.{secrets.randbelow(10**6):06d}"
    sandbox = await _sandbox(backend, tmp_path / "home", limiter, Limits(pids=32))
    paths = _cgroup_paths(sandbox)
    started = time.monotonic()
    try:
        # The timeout bounds the bomb's wait: a command's output pipes stay open as long
        # as any of its background children lives, so without one the exec would last
        # as long as the sleeps do (the breach is only checked when the command ends).
        with pytest.raises(SandboxLimitExceeded) as raised:
            await sandbox.exec(["sh", "-c", f"while :; do sleep {nap} & done"], timeout=3)
    finally:
        await sandbox.close()
    assert time.monotonic() - started < 9  # stopped long before the sleeps would end
    assert raised.value.limit == "pids"
    assert "pids limit exceeded" in str(raised.value)
    assert not [p for p in paths if p.exists()], "the sandbox's cgroup outlived it"
    assert wait_until_gone(f"sleep {nap}") == []
    assert wait_until_gone(sandbox.id) == []
    await _host_is_fine(backend, tmp_path / "home", limiter)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_pids_limit_counts_the_sandboxes_processes_not_the_backends_threads(
    backend: str, tmp_path: Path, limiter: CgroupLimiter
) -> None:
    """``pids=64`` leaves room for a few dozen processes on every backend. (gVisor's
    runsc, gofer and sentry alone hold ~100 host tasks, and each process inside adds ~17,
    so a host limit taken literally failed even 10 parallel commands at the default 256.)
    """
    sandbox = await _sandbox(backend, tmp_path / "home", limiter, Limits(pids=64))
    try:
        result = await sandbox.exec(
            ["sh", "-c", "for i in $(seq 24); do sleep 0.5 & done; wait; echo all-ran"],
            timeout=30,
        )
        assert (result.code, result.stdout) == (0, b"all-ran\n"), result.stderr
        assert sandbox._breach() is None
    finally:
        await sandbox.close()


class BrokenLauncher:
    """A backend that fails: either while preparing its command or as a binary."""

    name = "bwrap"

    def __init__(self, fail_in_command: bool) -> None:
        self.fail_in_command = fail_in_command
        self.cleaned: list[str] = []

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent: Path
    ) -> list[str]:
        if self.fail_in_command:
            raise RuntimeError("cannot prepare the bundle")
        return ["/nonexistent/backend-binary", "--agent", str(agent)]

    def cleanup(self, sandbox_id: str) -> None:
        self.cleaned.append(sandbox_id)

    def host_limits(self, limits: Limits) -> Limits:
        return limits


@pytest.mark.parametrize("fail_in_command", [True, False], ids=["command", "binary"])
async def test_a_sandbox_that_fails_to_start_leaves_no_cgroup(
    tmp_path: Path, limiter: CgroupLimiter, fail_in_command: bool
) -> None:
    launcher = BrokenLauncher(fail_in_command)
    sandbox = AgentSandbox(launcher, SandboxSpec(), tmp_path / "ws", limiter)  # type: ignore[arg-type]
    expected = RuntimeError if fail_in_command else SandboxError
    with pytest.raises(expected) as raised:
        await sandbox.start()
    if not fail_in_command:
        assert "stopped answering" in str(raised.value)
        assert "backend-binary" in str(raised.value)  # the diagnostics say why
    would_be = [parent / limiter.owner / sandbox.id for parent in limiter.parents.values()]
    assert not [p for p in would_be if p.exists()]
    assert set(launcher.cleaned) == {sandbox.id}


# ---- through the runtime -------------------------------------------------------------------


class Nothing(BaseModel):
    pass


class Done(BaseModel):
    code: int


@node("hog", limits=Limits(memory_mb=128))
async def hog(ctx: NodeContext, inputs: Nothing) -> Done:
    result = await ctx.exec(["python3", "-c", HOG])
    return Done(code=result.code)


@node("modest", limits=Limits(memory_mb=128))
async def modest(ctx: NodeContext, inputs: Nothing) -> Done:
    result = await ctx.exec(["python3", "-c", "b = bytearray(16 << 20)"])
    return Done(code=result.code)


@needs("bwrap")
async def test_a_node_over_its_memory_limit_fails_with_the_reason_on_the_ledger(
    tmp_path: Path,
) -> None:
    plan = Plan("memory-limits")
    plan.add(hog)
    plan.add(modest)
    with Runtime(home=tmp_path / "home", sandbox="bwrap") as rt:
        state = await rt.start(plan)
        events = [decode(r.body) for r in rt.store.read(state.run_id)]
    assert state.status == "failed"
    assert state.nodes["modest"].status == "succeeded"
    assert state.nodes["modest"].outputs == {"code": 0}  # same limit, within it: fine
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert [(e.node, e.cause) for e in failed] == [("hog", "error")]
    assert "memory limit exceeded" in failed[0].reason.message
    assert "SandboxLimitExceeded" in failed[0].reason.message
    metered = {e.node: e for e in events if isinstance(e, SandboxMetered)}
    assert set(metered) == {"hog", "modest"}
    assert metered["hog"].backend == "bwrap"
    live = tmp_path / "home" / "sandbox" / "live"
    assert not live.exists() or os.listdir(live) == []
