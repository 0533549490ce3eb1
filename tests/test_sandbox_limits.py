"""Sandbox cgroup limits against the real kernel: OOM kills, pid limits, CPU quota, cleanup.

Skipped only when this machine cannot create cgroups (e.g. not root, read-only cgroupfs).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from pydantic import ValidationError

from orchestrator.errors import CgroupError
from orchestrator.sandbox.cgroups.cgroup import Cgroup
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter, cgroups_available, sweep_stale
from orchestrator.sandbox.limits import Limits

AVAILABLE, REASON = cgroups_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"cgroups unusable here: {REASON}")


class Make(Protocol):
    """The ``make`` fixture: create a cgroup, removed again after the test."""

    def __call__(self, limits: Limits, name: str | None = None) -> Cgroup: ...


@pytest.fixture
def limiter() -> Iterator[CgroupLimiter]:
    lim = CgroupLimiter()
    yield lim
    lim.close()


@pytest.fixture
def make(limiter: CgroupLimiter) -> Iterator[Make]:
    made: list[Cgroup] = []

    def create(limits: Limits, name: str | None = None) -> Cgroup:
        cgroup = limiter.create(name or f"t-{secrets.token_hex(4)}", limits)
        made.append(cgroup)
        return cgroup

    yield create
    for cgroup in made:
        cgroup.remove()


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (re)parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_memory_limit_kills_and_reports_memory(make: Make) -> None:
    cgroup = make(Limits(memory_mb=64))
    proc = subprocess.run(
        [sys.executable, "-c", "x = bytearray(512 * 1024 * 1024)"],
        preexec_fn=cgroup.preexec,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9  # SIGKILL from the OOM killer
    assert cgroup.breach() == "memory"
    peak = cgroup.usage().memory_peak_bytes
    assert peak is not None
    assert peak <= 64 << 20


def test_within_limits_no_breach(make: Make) -> None:
    cgroup = make(Limits(memory_mb=256, pids=32))
    proc = subprocess.run(
        [sys.executable, "-c", "x = bytearray(16 * 1024 * 1024)"],
        preexec_fn=cgroup.preexec,
        timeout=60,
    )
    assert proc.returncode == 0
    assert cgroup.breach() is None


def test_pid_limit_reports_pids_and_kill_all_leaves_nothing(make: Make) -> None:
    cgroup = make(Limits(pids=20))
    proc = subprocess.Popen(
        ["sh", "-c", "for i in $(seq 1000); do sleep 5 & done; wait"],
        preexec_fn=cgroup.preexec,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: cgroup.breach() == "pids"), cgroup.pids()
        members = cgroup.pids()
        assert 1 < len(members) <= 20
        cgroup.kill_all()
        assert cgroup.pids() == []
        proc.wait(timeout=10)  # killed, or exited on its own after "Cannot fork"
        assert not [pid for pid in members if alive(pid)]
    finally:
        proc.kill()
        proc.wait()


def test_cpu_usage_reported_and_quota_throttles(make: Make) -> None:
    cgroup = make(Limits(cpu_share=0.5))
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"],
        preexec_fn=cgroup.preexec,
        timeout=60,
    )
    wall = time.monotonic() - start
    cpu_s = cgroup.usage().cpu_s
    assert cpu_s > 0.3
    assert cpu_s <= 0.5 * wall + 0.2  # a busy loop held to half a CPU


async def test_preexec_with_asyncio_subprocess(make: Make) -> None:
    cgroup = make(Limits())
    proc = await asyncio.create_subprocess_exec(
        "cat", "/proc/self/cgroup", stdout=asyncio.subprocess.PIPE, preexec_fn=cgroup.preexec
    )
    out, _ = await proc.communicate()
    lines = out.decode().splitlines()
    for controller in ("memory", "pids", "cpu"):
        [line] = [ln for ln in lines if controller in ln.split(":")[1].split(",")] or [
            ln for ln in lines if ln.startswith("0::")
        ]
        assert line.endswith(f"/{cgroup.name}"), line


def test_add_moves_a_running_process(make: Make) -> None:
    cgroup = make(Limits())
    proc = subprocess.Popen(["sleep", "30"])
    try:
        cgroup.add(proc.pid)
        assert cgroup.pids() == [proc.pid]
        cgroup.kill_all()
        assert proc.wait(timeout=10) == -9
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(CgroupError, match="orchestrator itself"):
        cgroup.add(os.getpid())


def test_remove_leaves_no_directory_and_keeps_final_numbers(limiter: CgroupLimiter) -> None:
    cgroup = limiter.create(f"t-{secrets.token_hex(4)}", Limits(memory_mb=64))
    assert all(p.is_dir() for p in cgroup.paths)
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=cgroup.preexec)
    cgroup.remove()
    assert proc.wait(timeout=10) == -9
    assert not any(p.exists() for p in cgroup.paths)
    assert cgroup.usage().cpu_s >= 0
    assert cgroup.breach() is None
    cgroup.remove()  # idempotent


def test_remove_tolerates_an_already_gone_cgroup(limiter: CgroupLimiter) -> None:
    cgroup = limiter.create(f"t-{secrets.token_hex(4)}", Limits())
    for path in cgroup.paths:
        path.rmdir()
    assert cgroup.pids() == []
    cgroup.remove()  # no error: nothing was left to kill or remove
    assert not any(p.exists() for p in cgroup.paths)
    assert (cgroup.breach(), cgroup.usage().cpu_s) == (None, 0)
    limiter.create(cgroup.name, Limits()).remove()  # and its name is free again


def test_names_are_checked_and_unique(make: Make, limiter: CgroupLimiter) -> None:
    for bad in ("", "../x", "a/b", ".hidden", "x" * 200):
        with pytest.raises(CgroupError, match="bad cgroup name"):
            limiter.create(bad, Limits())
    cgroup = make(Limits())
    with pytest.raises(CgroupError, match="already exists"):
        limiter.create(cgroup.name, Limits())


def test_limits_validate() -> None:
    assert Limits() == Limits(memory_mb=1024, pids=256, cpu_share=1.0, timeout_s=None)
    assert Limits(memory_mb=None, pids=None, cpu_share=None).memory_mb is None
    for bad in ({"memory_mb": 0}, {"pids": -1}, {"cpu_share": 0}, {"timeout_s": 0}):
        with pytest.raises(ValidationError):
            Limits(**bad)
    with pytest.raises(ValidationError):
        Limits().memory_mb = 5  # type: ignore[misc]
    assert hash(Limits()) == hash(Limits())


def test_unlimited_cgroup_has_no_limits(make: Make) -> None:
    cgroup = make(Limits(memory_mb=None, pids=None, cpu_share=None))
    proc = subprocess.run(["true"], preexec_fn=cgroup.preexec, timeout=30)
    assert proc.returncode == 0
    assert cgroup.breach() is None


CHILD = """
import json, os, subprocess, sys
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter
from orchestrator.sandbox.limits import Limits
limiter = CgroupLimiter()
cgroup = limiter.create(sys.argv[1], Limits(pids=8))
sleeper = subprocess.Popen(
    ["sleep", "60"], preexec_fn=cgroup.preexec, start_new_session=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(json.dumps({"pid": sleeper.pid, "paths": [str(p) for p in cgroup.paths]}), flush=True)
os._exit(0)  # crash: no cleanup
"""


def test_sweep_stale_cleans_a_cgroup_whose_owner_died(make: Make) -> None:
    prefix = f"t{secrets.token_hex(4)}-"
    mine = make(Limits(), f"{prefix}mine")  # a live owner's cgroup: never swept
    out = subprocess.run(
        [sys.executable, "-c", CHILD, f"{prefix}orphan"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    left = json.loads(out.stdout)
    paths = [Path(p) for p in left["paths"]]
    try:
        assert all(p.is_dir() for p in paths)
        assert alive(left["pid"])
        assert sweep_stale(f"t{secrets.token_hex(4)}-") == []  # other prefixes untouched
        assert all(p.is_dir() for p in paths)

        assert sweep_stale(prefix) == [f"{prefix}orphan"]
        assert not any(p.exists() for p in paths)
        assert not any(p.parent.exists() for p in paths)  # the dead owner's directory too
        assert wait_for(lambda: not alive(left["pid"]))
        assert all(p.is_dir() for p in mine.paths)
    finally:
        for path in paths:  # only if the test failed half-way
            if path.exists():
                Cgroup("leftover", 1, {"x": path}, Limits()).remove()


# ---- cgroup v2 and discovery, against fake trees (this machine runs v1) ----


def test_v2_breach_and_usage_are_read_from_v2_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (tmp_path / "pids.events").write_text("max 0\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (tmp_path / "memory.peak").write_text("1048576\n")
    cgroup = Cgroup("x", 2, {"unified": tmp_path}, Limits())
    assert cgroup.breach() == "memory"
    assert cgroup.usage().cpu_s == 2.5
    assert cgroup.usage().memory_peak_bytes == 1 << 20
    (tmp_path / "memory.events").write_text("oom 0\noom_kill 0\n")
    (tmp_path / "pids.events").write_text("max 3\n")
    assert cgroup.breach() == "pids"


def test_discovery_v2_and_comounted_v1(tmp_path: Path) -> None:
    unified = tmp_path / "cg2"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"30 1 0:26 / {unified} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "25 1 8:1 / / rw - ext4 /dev/vda rw\n"
    )
    own = tmp_path / "cgroup"
    own.write_text("0::/system.slice/orch.service\n")
    lim = CgroupLimiter(mountinfo=mountinfo, proc_cgroup=own)
    assert lim.version == 2
    assert lim.parents == {"unified": unified / "system.slice/orch.service/orchestrator"}
    lim = CgroupLimiter(parent="/sandboxes", mountinfo=mountinfo, proc_cgroup=own)
    assert lim.parents == {"unified": unified / "sandboxes"}

    mountinfo.write_text(
        "31 25 0:27 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "32 25 0:28 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "33 25 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    )
    own.write_text(
        "5:pids:/docker/abc\n4:memory:/docker/abc/sub\n3:cpu,cpuacct:/docker/abc\n"
        "1:name=systemd:/docker/abc\n"
    )
    lim = CgroupLimiter(mountinfo=mountinfo, proc_cgroup=own)
    assert lim.version == 1
    assert lim.parents == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/orchestrator"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct/orchestrator"),
        "memory": Path("/sys/fs/cgroup/memory/sub/orchestrator"),
        "pids": Path("/sys/fs/cgroup/pids/docker/abc/orchestrator"),
    }

    mountinfo.write_text("32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    with pytest.raises(CgroupError, match="pids, cpu are not mounted"):
        CgroupLimiter(mountinfo=mountinfo, proc_cgroup=own)
    mountinfo.write_text("25 1 8:1 / / rw - ext4 /dev/vda rw\n")
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        CgroupLimiter(mountinfo=mountinfo, proc_cgroup=own)


def test_cgroups_available_says_where_or_why_not(limiter: CgroupLimiter) -> None:
    where = ", ".join(str(p) for p in dict.fromkeys(limiter.parents.values()))
    assert cgroups_available() == (True, f"cgroup v{limiter.version} under {where}")
    # the cgroup it made to find out is gone again
    assert [d for p in limiter.parents.values() for d in p.glob(f"{limiter.owner}/probe-*")] == []
    # where none can be made (a parent below a file): no, and the reason names the place
    ok, reason = cgroups_available(parent="/cgroup.procs")
    assert not ok
    assert "/cgroup.procs" in reason, reason
