"""SandboxPool with real sandboxes: concurrent acquires, refills, teardown and crash sweep.

The crash test SIGKILLs a child process holding warm and busy pools of gVisor and
bubblewrap sandboxes, checks what it left (gVisor's runsc keeps running a busy sandbox;
bwrap dies with its parent; cgroups and directories stay), and that ``sweep`` removes all
of it while a live pool in this process keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.sandbox.base import SandboxSpec
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter, cgroups_available
from orchestrator.sandbox.gvisor import GvisorLauncher
from orchestrator.sandbox.local import LocalLauncher
from orchestrator.sandbox.pool import SandboxPool, sweep
from orchestrator.sandbox.process import AgentSandbox
from tests.backends import backends, needs, require
from tests.crashing import processes_with

CGROUPS, CGROUPS_WHY = cgroups_available()
BACKENDS = backends()
BOTH = needs("gvisor", "bwrap")
SPEC = SandboxSpec(effects=frozenset({"fs"}))


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def footprint(sandbox: AgentSandbox) -> tuple[int, tuple[Path, ...]]:
    """The sandbox's host process and cgroup directories (none without cgroups)."""
    proc = sandbox._proc
    assert proc is not None, f"sandbox {sandbox.id} is not running"
    cgroup = sandbox._cgroup
    return proc.pid, (cgroup.paths if cgroup is not None else ())


def runsc_containers(home: Path) -> list[str]:
    launcher = GvisorLauncher(home / "sandbox" / "gvisor")
    if not (launcher.state / "runsc").exists():
        return []
    return launcher.leftovers()


def live_dirs(home: Path) -> list[str]:
    live = home / "sandbox" / "live"
    return sorted(os.listdir(live)) if live.is_dir() else []


def owner_dirs(pid: int) -> list[Path]:
    """Cgroup owner directories (``o<pid>-<start>``) of orchestrator process ``pid``."""
    if not CGROUPS:
        return []
    parents = set(CgroupLimiter().parents.values())
    return [d for p in parents if p.is_dir() for d in p.glob(f"o{pid}-*")]


# ---- acquire, refill, close -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_acquires_get_distinct_working_sandboxes_and_close_cleans_up(
    backend: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    pool = SandboxPool(backend, home, size=2)  # type: ignore[arg-type]
    try:
        await pool.warm(SPEC)
        assert pool.counts() == {"warm": 2, "leased": 0}
        warmed = list(pool._warm[SPEC])

        leased = await asyncio.gather(*(pool.acquire(SPEC) for _ in range(8)))
        assert len({id(s) for s in leased}) == 8
        assert len({s.id for s in leased}) == 8
        assert len({s.workspace for s in leased}) == 8
        assert {s.id for s in warmed} <= {s.id for s in leased}  # the warm ones went first
        assert pool.counts()["leased"] == 8

        # Every one works, in its own workspace, seeing no one else's.
        results = await asyncio.gather(
            *(s.exec(["sh", "-c", f"echo {s.id} > owner; ls"]) for s in leased)
        )
        for sandbox, result in zip(leased, results, strict=True):
            assert (result.code, result.stdout) == (0, b"owner\n"), result.stderr
            assert (sandbox.workspace / "owner").read_text() == f"{sandbox.id}\n"
            assert sandbox.workspace.parents[2] == home / "sandbox" / "live"
            assert os.path.ismount(sandbox.workspace.parent)  # on its own disk

        # The pool refills behind the acquires, back to its size and not beyond: once every
        # refill has finished, nothing else adds to it.
        assert await eventually(lambda: not pool._refills)
        assert pool.counts() == {"warm": 2, "leased": 8}

        # Releasing tears one down: its process, cgroup and directory go.
        first = leased[0]
        pid, cgroup_dirs = footprint(first)
        await pool.release(first)
        assert not alive(pid)
        assert not [d for d in cgroup_dirs if d.exists()]
        assert first.id not in live_dirs(home)
        assert pool.counts() == {"warm": 2, "leased": 7}

        everything = list(pool._warm[SPEC]) + leased[1:]
        prints = [footprint(s) for s in everything]
        assert len(live_dirs(home)) == 9
    finally:
        await pool.close()

    assert pool.counts() == {"warm": 0, "leased": 0}
    assert not [pid for pid, _ in prints if alive(pid)]
    assert not [d for _, dirs in prints for d in dirs if d.exists()]
    assert live_dirs(home) == []
    assert all(processes_with(s.id) == [] for s in everything)
    if backend == "gvisor":
        assert runsc_containers(home) == []
        assert os.listdir(home / "sandbox" / "gvisor" / "bundles") == []
    # A closed pool starts nothing more.
    await pool.warm(SPEC)
    assert pool.counts() == {"warm": 0, "leased": 0}


# ---- crash and sweep ------------------------------------------------------------------------

CHILD = r"""
import asyncio, json, os, sys
from pathlib import Path
from orchestrator.sandbox.base import SandboxSpec
from orchestrator.sandbox.pool import SandboxPool

home = Path(sys.argv[1])
spec = SandboxSpec(effects=frozenset({"fs"}))

async def main():
    pools = {b: SandboxPool(b, home, 2) for b in ("gvisor", "bwrap")}
    busy, tasks = {}, []
    for backend, pool in pools.items():
        await pool.warm(spec)
        sandbox = await pool.acquire(spec)
        # A command still running at the crash keeps gVisor's agent from seeing EOF.
        tasks.append(asyncio.create_task(
            sandbox.exec(["sh", "-c", "echo $$ > started; exec sleep 600"])
        ))
        while not (sandbox.workspace / "started").exists():
            await asyncio.sleep(0.01)
        busy[backend] = sandbox.id
    while any(p.counts()["warm"] < 2 for p in pools.values()):
        await asyncio.sleep(0.01)
    warm = {b: [s.id for s in p._warm[spec]] for b, p in pools.items()}
    print(json.dumps({"busy": busy, "warm": warm}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.slow
@BOTH
async def test_sweep_removes_what_a_killed_orchestrator_left_and_spares_a_live_pool(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)  # type: ignore[union-attr]
        if not line:
            _, err = await child.communicate()
            pytest.fail(f"the child pool never got ready: {err.decode()[-2000:]}")
        made = json.loads(line)
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
        await child.wait()  # reaped: a zombie would still count as a live owner
    assert child.returncode == -signal.SIGKILL
    prefix = f"sbx-{child.pid}-"
    ids = [made["busy"]["gvisor"], made["busy"]["bwrap"], *made["warm"]["gvisor"]]
    ids += made["warm"]["bwrap"]
    assert len(ids) == 6 and all(i.startswith(prefix) for i in ids)

    # What the crash left: the busy gVisor sandbox runs on (runsc is not tied to its
    # parent), bubblewrap died with its parent, and cgroups and directories remain.
    busy_gvisor = made["busy"]["gvisor"]
    assert busy_gvisor in runsc_containers(home)
    assert processes_with(busy_gvisor), "runsc of the busy gVisor sandbox should survive"
    assert await eventually(lambda: processes_with(f"live/{made['busy']['bwrap']}") == [])
    assert all(processes_with(f"live/{i}") == [] for i in made["warm"]["bwrap"])
    assert set(ids) <= set(live_dirs(home))
    if CGROUPS:
        assert owner_dirs(child.pid), "the dead owner's cgroups should still be there"

    # A live pool of this process, in the same home, during the sweep.
    async with SandboxPool("gvisor", home, 1) as gv, SandboxPool("bwrap", home, 1) as bw:
        await asyncio.gather(gv.warm(SPEC), bw.warm(SPEC))
        mine = [gv._warm[SPEC][0], bw._warm[SPEC][0]]
        before = [footprint(s) for s in mine]

        removed = await asyncio.to_thread(sweep, home)

        text = "\n".join(removed)
        assert f"runsc container {busy_gvisor}" in text
        assert all(i in text for i in ids), removed
        assert not [s.id for s in mine if s.id in text], removed
        # Nothing of the dead orchestrator is left ...
        assert await eventually(lambda: processes_with(prefix) == [], within=5)
        assert not [c for c in runsc_containers(home) if c.startswith(prefix)]
        assert not [d for d in live_dirs(home) if d.startswith(prefix)]
        bundles = home / "sandbox" / "gvisor" / "bundles"
        assert not [b for b in os.listdir(bundles) if b.startswith(prefix)]
        assert owner_dirs(child.pid) == []
        # ... and the live pool is untouched and still works.
        for sandbox, (pid, dirs) in zip(mine, before, strict=True):
            assert alive(pid)
            assert all(d.is_dir() for d in dirs)
            assert sandbox.id in live_dirs(home)
            result = await sandbox.exec(["sh", "-c", "echo still here > proof; cat proof"])
            assert (result.code, result.stdout) == (0, b"still here\n")
        assert mine[0].id in runsc_containers(home)
        # A second sweep finds nothing more to do.
        assert await asyncio.to_thread(sweep, home) == []
    assert live_dirs(home) == []
    assert runsc_containers(home) == []


def test_runsc_state_listing_is_what_the_sweep_reads(tmp_path: Path) -> None:
    """``runsc list`` of an empty state directory is empty, not an error the sweep
    would mistake for containers (guards the leftovers() parsing)."""
    require("gvisor")
    launcher = GvisorLauncher(tmp_path / "gvisor")
    (launcher.state / "runsc").mkdir(parents=True)
    assert launcher.leftovers() == []
    listed = subprocess.run(
        ["runsc", f"--root={launcher.state / 'runsc'}", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr


async def test_a_sandbox_dropped_before_it_starts_leaves_nothing_open(tmp_path: Path) -> None:
    """A pool closed while a refill still mounts the disk drops a sandbox that was never
    started (so never closed): it must hold no file, which would leak until collected."""
    before = sorted(os.listdir("/proc/self/fd"))
    never_started = AgentSandbox(LocalLauncher(), SPEC, tmp_path, None)
    assert sorted(os.listdir("/proc/self/fd")) == before
    async with AgentSandbox(LocalLauncher(), SPEC, tmp_path, None) as used:
        assert (await used.exec(["true"])).code == 0
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert never_started.meter().wall_s == 0.0
