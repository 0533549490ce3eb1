"""Benchmark: sandbox start, warm-pool hand-out, exec round trip and idle memory per backend.

For each backend (gvisor, bwrap, local; or those named on the command line), with a
temporary home directory and a cgroup per sandbox (``limiter_for(home)``, as the pool
uses), it measures:

1. cold start to first command: a new ``AgentSandbox`` ``start()`` + ``exec(["true"])``,
   with its cgroup and, for comparison, without one (no ``preexec_fn``); and how long
   ``start()`` and ``close()`` block the event loop (a ticker task measures the gaps);
2. warm-pool acquire + ``true``: a ``SandboxPool`` filled first; each sample times
   ``acquire()`` + ``exec(["true"])``; release and refill happen outside the timed part.
   ``acquire`` starts the pool's background refill, which runs while the sample's exec
   waits for its answer: that cost is part of the figure, as it is in real use. As a
   diagnostic, the same again with the pool's size set to 0 while timed (no refill);
3. exec round trip in one running sandbox: ``exec(["true"])`` 50 times (after 5 untimed),
   with the agent-reported in-sandbox duration (fork + exec + wait) next to it;
4. memory per idle sandbox: K idle sandboxes, each cgroup's ``memory.usage_in_bytes``
   (and ``memory.stat`` rss/cache/shmem), the PSS and RSS of every process in it (from
   ``smaps_rollup``), and the CPU the idle sandboxes burn;
5. how many can be held warm: extrapolated from (4) against MemAvailable with a 50% margin,
   then actually tried up to a cap: started, each asked to run ``true``, then closed;
6. the disk-limited layer's cost: a pool sandbox started + ``true`` with its workspace on a
   default-sized (10 GiB) loop-mounted ext4 image vs on a plain directory
   (``disk_mb=None``), and the image alone (make + mount, unmount + remove).

Prints figures and a RESULT line per backend, never asserts; checks for leftover
processes, cgroups and runsc containers after each backend and at the end.

    uv run python bench/sandbox.py [gvisor] [bwrap] [local]
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.sandbox.base import BACKENDS, BackendName, SandboxSpec
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter
from orchestrator.sandbox.disk import Disk, remove_tree
from orchestrator.sandbox.factory import launcher_for, limiter_for
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.sandbox.process import AgentSandbox

TRUE = ["true"]
SPEC = SandboxSpec()
POOL_SIZE = 2
EXEC_WARMUP = 5
EXEC_RUNS = 50
SETTLE_S = 1.0  # let idle sandboxes finish starting up before measuring memory
IDLE_CPU_WINDOW_S = 2.0
SAFETY = 0.5  # use at most this fraction of available memory for warm sandboxes
CAPACITY_FLOOR = 0.5  # stop the capacity run if MemAvailable falls below this fraction
START_CONCURRENCY = 4  # sandboxes started at once in the capacity run


@dataclass(frozen=True)
class Plan:
    cold: int
    warm: int
    idle: int
    cap: int


PLANS: dict[BackendName, Plan] = {
    "gvisor": Plan(cold=8, warm=10, idle=5, cap=40),
    "bwrap": Plan(cold=10, warm=20, idle=10, cap=100),
    "local": Plan(cold=10, warm=20, idle=10, cap=100),
}
TARGET_WARM_MS: dict[BackendName, float | None] = {"gvisor": 10.0, "bwrap": 5.0, "local": None}
TARGET_EXEC_MS = 2.0
MiB = 1 << 20


# ----------------------------------------------------------------------------- helpers


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between order statistics."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(values: list[float]) -> str:
    """median / p90 / min / max of seconds, in ms."""
    if not values:
        return "no samples"
    v = [x * 1e3 for x in values]
    return (
        f"median {statistics.median(v):8.2f} ms  p90 {pct(v, 0.9):8.2f} ms  "
        f"min {min(v):7.2f}  max {max(v):7.2f}  (n={len(v)})"
    )


def meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    return out


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    except OSError:
        pass
    return out


def ppids() -> dict[int, int]:
    """pid -> ppid for every process visible in /proc."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        out[int(entry.name)] = int(fields[1])
    return out


def descendants(root: int, table: dict[int, int] | None = None) -> set[int]:
    """Every process whose parent chain reaches ``root`` (``root`` itself excluded)."""
    table = table if table is not None else ppids()
    children: dict[int, list[int]] = {}
    for pid, parent in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def smaps(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in bytes from /proc/PID/smaps_rollup; (0, 0) if it is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def sandbox_pid(sandbox: AgentSandbox) -> int | None:
    proc = getattr(sandbox, "_proc", None)  # the launcher's process (bwrap, runsc, env)
    return proc.pid if proc is not None else None


class Cgroups:
    """Where a sandbox's v1 cgroup directories are (limiter parent / owner / sandbox id)."""

    def __init__(self, limiter: CgroupLimiter | None) -> None:
        self.limiter = limiter
        self.version = limiter.version if limiter is not None else None

    def dir(self, controller: str, sandbox_id: str) -> Path | None:
        if self.limiter is None:
            return None
        parents = self.limiter.parents
        parent = parents.get("unified" if self.version == 2 else controller)
        return parent / self.limiter.owner / sandbox_id if parent is not None else None

    def memory(self, sandbox_id: str) -> dict[str, int | None]:
        d = self.dir("memory", sandbox_id)
        if d is None:
            return {}
        if self.version == 2:
            stat = read_kv(d / "memory.stat")
            return {
                "usage": read_int(d / "memory.current"),
                "rss": stat.get("anon"),
                "cache": stat.get("file"),
                "shmem": stat.get("shmem"),
            }
        stat = read_kv(d / "memory.stat")
        return {
            "usage": read_int(d / "memory.usage_in_bytes"),
            "rss": stat.get("rss"),
            "cache": stat.get("cache"),
            "shmem": stat.get("shmem"),
        }

    def cpu_ns(self, sandbox_id: str) -> int | None:
        if self.version == 2:
            d = self.dir("cpu", sandbox_id)
            usec = read_kv(d / "cpu.stat").get("usage_usec") if d else None
            return usec * 1000 if usec is not None else None
        d = self.dir("cpuacct", sandbox_id)
        return read_int(d / "cpuacct.usage") if d is not None else None

    def procs(self, sandbox_id: str) -> set[int]:
        d = self.dir("memory", sandbox_id)
        if d is None:
            return set()
        try:
            return {int(p) for p in (d / "cgroup.procs").read_text().split()}
        except OSError:
            return set()

    def leftovers(self) -> list[str]:
        if self.limiter is None:
            return []
        out = []
        for controller, parent in self.limiter.parents.items():
            owner = parent / self.limiter.owner
            if owner.is_dir():
                subs = [p.name for p in owner.iterdir() if p.is_dir()]
                if subs:
                    out.append(f"cgroup {controller}: {len(subs)} left under {owner}: {subs[:5]}")
        return out


def sandbox_pids(sandbox: AgentSandbox, cgroups: Cgroups) -> tuple[set[int], set[int]]:
    """(processes in the sandbox's cgroup, processes in its launcher's tree)."""
    in_cgroup = cgroups.procs(sandbox.id)
    root = sandbox_pid(sandbox)
    tree = ({root} | descendants(root)) if root is not None else set()
    return in_cgroup, tree


def leftovers(home: Path, cgroups: Cgroups) -> list[str]:
    """Processes, cgroups and runsc containers this benchmark left behind."""
    found: list[str] = []
    me = os.getpid()
    table = ppids()
    kids = descendants(me, table)
    if kids:
        found.append(f"descendant processes: {sorted((p, comm(p)) for p in kids)[:10]}")
    needle = str(home).encode()
    for pid in table:
        if pid == me or pid in kids:
            continue
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:
                continue
            if needle in data:
                found.append(f"process {pid} ({comm(pid)}) mentions {home} in its {what}")
                break
    found += cgroups.leftovers()
    runsc_root = home / "sandbox" / "gvisor" / "runsc"
    runsc = shutil.which("runsc")
    if runsc and runsc_root.exists():
        listed = subprocess.run(
            [runsc, f"--root={runsc_root}", "list", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        names = listed.stdout.split()
        if names:
            found.append(f"runsc containers: {names[:10]}")
    return found


async def close_all(sandboxes: list[AgentSandbox]) -> None:
    await asyncio.gather(*(s.close() for s in sandboxes), return_exceptions=True)


# ------------------------------------------------------------------------ measurements


@dataclass
class Result:
    backend: BackendName
    cold: list[float] = field(default_factory=list)
    cold_start_only: list[float] = field(default_factory=list)
    cold_nocg: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    warm_acquire: list[float] = field(default_factory=list)
    warm_norefill: list[float] = field(default_factory=list)
    stall_cg: list[float] = field(default_factory=list)
    stall_nocg: list[float] = field(default_factory=list)
    execs: list[float] = field(default_factory=list)
    exec_inside: list[float] = field(default_factory=list)
    mem_cgroup: float | None = None
    mem_pss: float | None = None
    mem_rss: float | None = None
    extrapolated: int | None = None
    tried: int = 0
    held: int = 0
    answered: int = 0
    capacity_start_s: float | None = None
    errors: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    disk_on: list[float] = field(default_factory=list)
    disk_off: list[float] = field(default_factory=list)
    disk_mount: list[float] = field(default_factory=list)
    disk_remove: list[float] = field(default_factory=list)


async def cold_start(
    backend: BackendName, home: Path, limiter: CgroupLimiter | None, n: int, result: Result
) -> None:
    launcher = launcher_for(backend, home)

    async def once(i: int, label: str, lim: CgroupLimiter | None) -> tuple[float, float, int]:
        workspace = home / "cold" / f"{label}-{i}"
        sandbox = AgentSandbox(launcher, SPEC, workspace, lim)
        try:
            t0 = time.perf_counter()
            await sandbox.start()
            t1 = time.perf_counter()
            r = await sandbox.exec(TRUE)
            t2 = time.perf_counter()
        finally:
            await sandbox.close()
            shutil.rmtree(workspace, ignore_errors=True)
        return t2 - t0, t1 - t0, r.code

    await once(-1, "warmup", limiter)  # untimed: first-touch page cache, runsc binary, etc.
    bad = 0
    for i in range(n):
        total, start, code = await once(i, "cg", limiter)
        result.cold.append(total)
        result.cold_start_only.append(start)
        bad += code != 0
    for i in range(n):
        total, _, code = await once(i, "nocg", None)
        result.cold_nocg.append(total)
        bad += code != 0
    close_stalls: dict[bool, list[float]] = {True: [], False: []}
    for lim, stalls in ((limiter, result.stall_cg), (None, result.stall_nocg)):
        for i in range(min(n, 5)):
            workspace = home / "cold" / f"stall-{i}"
            sandbox = AgentSandbox(launcher, SPEC, workspace, lim)
            try:
                stalls.append(await loop_stall(sandbox.start))
                await sandbox.exec(TRUE)
            finally:
                close_stalls[lim is not None].append(await loop_stall(sandbox.close))
                shutil.rmtree(workspace, ignore_errors=True)
    first = [a - b for a, b in zip(result.cold, result.cold_start_only, strict=True)]
    print(f"  cold start+true (cgroup)    {ms(result.cold)}")
    print(f"    of which start()          {ms(result.cold_start_only)}")
    print(f"    of which first exec       {ms(first)}")
    print(f"  cold start+true (no cgroup) {ms(result.cold_nocg)}")
    print(f"  event-loop stall in start(), cgroup    {ms(result.stall_cg)}")
    print(f"  event-loop stall in start(), no cgroup {ms(result.stall_nocg)}")
    print(f"  event-loop stall in close(), cgroup    {ms(close_stalls[True])}")
    print(f"  event-loop stall in close(), no cgroup {ms(close_stalls[False])}")
    if bad:
        print(f"  !! {bad} cold-start `true` runs exited non-zero")


async def loop_stall(work: Callable[[], Awaitable[Any]]) -> float:
    """The longest time the event loop was blocked while ``work`` ran (a ticker task
    measures the gaps between its 0.5 ms sleeps): what any other sandbox's exec in flight
    at that moment would be delayed by."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.0005)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        await work()
    finally:
        done = True
        await task
    return worst


async def wait_full(pool: SandboxPool, limit_s: float = 120.0) -> None:
    """Until the pool holds ``size`` ready sandboxes (the background refill included)."""
    deadline = time.monotonic() + limit_s
    while True:
        await pool.warm(SPEC)
        if pool.counts()["warm"] >= pool.size:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool did not refill in {limit_s}s: {pool.counts()}")
        await asyncio.sleep(0.002)


async def warm_pool(backend: BackendName, home: Path, n: int, result: Result) -> None:
    pool = SandboxPool(backend, home, size=POOL_SIZE)
    bad = 0
    try:
        t0 = time.perf_counter()
        await pool.warm(SPEC)
        fill = time.perf_counter() - t0
        print(f"  pool fill (size {POOL_SIZE})         {fill * 1e3:8.1f} ms")
        for i in range(n + 1):
            await wait_full(pool)
            t0 = time.perf_counter()
            sandbox = await pool.acquire(SPEC)
            t1 = time.perf_counter()
            r = await sandbox.exec(TRUE)
            t2 = time.perf_counter()
            await pool.release(sandbox)
            bad += r.code != 0
            if i == 0:
                continue  # untimed first hand-out
            result.warm.append(t2 - t0)
            result.warm_acquire.append(t1 - t0)
        # Diagnostic: the same with no background refill started by acquire() (size 0
        # while timed), i.e. what the hand-out costs when no sandbox start competes.
        for _ in range(n):
            await wait_full(pool)
            pool.size = 0
            try:
                t0 = time.perf_counter()
                sandbox = await pool.acquire(SPEC)
                r = await sandbox.exec(TRUE)
                t2 = time.perf_counter()
            finally:
                pool.size = POOL_SIZE
            await pool.release(sandbox)
            bad += r.code != 0
            result.warm_norefill.append(t2 - t0)
        await wait_full(pool)
    finally:
        await pool.close()
    print(f"  warm acquire+true           {ms(result.warm)}")
    print(f"    of which acquire()        {ms(result.warm_acquire)}")
    print(f"  same, no refill in flight   {ms(result.warm_norefill)}")
    if bad:
        print(f"  !! {bad} warm-pool `true` runs exited non-zero")


async def exec_round_trip(
    backend: BackendName, home: Path, limiter: CgroupLimiter | None, result: Result
) -> None:
    workspace = home / "exec"
    async with AgentSandbox(launcher_for(backend, home), SPEC, workspace, limiter) as sandbox:
        for _ in range(EXEC_WARMUP):
            await sandbox.exec(TRUE)
        bad = 0
        for _ in range(EXEC_RUNS):
            t0 = time.perf_counter()
            r = await sandbox.exec(TRUE)
            result.execs.append(time.perf_counter() - t0)
            result.exec_inside.append(r.duration)
            bad += r.code != 0
    shutil.rmtree(workspace, ignore_errors=True)
    print(f"  exec true round trip        {ms(result.execs)}")
    print(f"    in-sandbox fork+exec+wait {ms(result.exec_inside)}")
    overhead = [a - b for a, b in zip(result.execs, result.exec_inside, strict=True)]
    print(f"    host/pipe/JSON overhead   {ms(overhead)}")
    if bad:
        print(f"  !! {bad} `true` runs exited non-zero")


async def start_many(
    backend: BackendName,
    home: Path,
    limiter: CgroupLimiter | None,
    count: int,
    label: str,
    concurrency: int = 1,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[AgentSandbox], list[str]]:
    launcher = launcher_for(backend, home)
    started: list[AgentSandbox] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            if stop is not None and stop():
                return
            sandbox = AgentSandbox(launcher, SPEC, home / label / str(i), limiter)
            try:
                await sandbox.start()
            except Exception as exc:  # report, keep going
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                return
            started.append(sandbox)

    tasks: list[Awaitable[None]] = [one(i) for i in range(count)]
    await asyncio.gather(*tasks)
    return started, errors


async def idle_memory(
    backend: BackendName, home: Path, limiter: CgroupLimiter | None, k: int, result: Result
) -> None:
    cgroups = Cgroups(limiter)
    sandboxes, errors = await start_many(backend, home, limiter, k, "idle")
    try:
        for e in errors:
            print(f"  !! idle sandbox failed to start: {e}")
        await asyncio.sleep(SETTLE_S)
        usage: list[int] = []
        rss_stat: list[int] = []
        cache_stat: list[int] = []
        shmem_stat: list[int] = []
        pss_sum: list[int] = []
        rss_sum: list[int] = []
        nprocs: list[int] = []
        mismatch = 0
        breakdown: dict[str, list[int]] = {}
        for sandbox in sandboxes:
            mem = cgroups.memory(sandbox.id)
            if mem.get("usage") is not None:
                usage.append(mem["usage"] or 0)
                rss_stat.append(mem.get("rss") or 0)
                cache_stat.append(mem.get("cache") or 0)
                shmem_stat.append(mem.get("shmem") or 0)
            in_cgroup, tree = sandbox_pids(sandbox, cgroups)
            if in_cgroup and in_cgroup != tree:
                mismatch += 1
            pids = in_cgroup | tree
            nprocs.append(len(pids))
            pss = rss = 0
            for pid in pids:
                p, r = smaps(pid)
                pss += p
                rss += r
                breakdown.setdefault(comm(pid), []).append(p)
            pss_sum.append(pss)
            rss_sum.append(rss)

        def mib(values: list[int]) -> str:
            if not values:
                return "n/a"
            return (
                f"mean {statistics.mean(values) / MiB:7.2f} MiB  "
                f"median {statistics.median(values) / MiB:7.2f}  "
                f"min {min(values) / MiB:7.2f}  max {max(values) / MiB:7.2f}"
            )

        print(f"  idle sandboxes: {len(sandboxes)}, processes each: {sorted(set(nprocs))}")
        if mismatch:
            print(f"    note: {mismatch} sandbox(es) with cgroup.procs != launcher process tree")
        print(f"  per sandbox, cgroup usage   {mib(usage)}")
        print(f"    memory.stat rss           {mib(rss_stat)}")
        print(f"    memory.stat cache         {mib(cache_stat)}")
        print(f"    memory.stat shmem         {mib(shmem_stat)}")
        print(f"  per sandbox, PSS of procs   {mib(pss_sum)}")
        print(f"  per sandbox, RSS of procs   {mib(rss_sum)}")
        parts = ", ".join(
            f"{name} {sum(v) / len(sandboxes) / MiB:.2f}"
            for name, v in sorted(breakdown.items(), key=lambda kv: -sum(kv[1]))
        )
        print(f"    PSS by process name (MiB per sandbox): {parts}")
        if usage:
            result.mem_cgroup = statistics.median(usage)
        if pss_sum:
            result.mem_pss = statistics.mean(pss_sum)
            result.mem_rss = statistics.mean(rss_sum)
        # CPU burnt while idle
        before = [cgroups.cpu_ns(s.id) for s in sandboxes]
        await asyncio.sleep(IDLE_CPU_WINDOW_S)
        after = [cgroups.cpu_ns(s.id) for s in sandboxes]
        deltas = [
            b - a for a, b in zip(before, after, strict=True) if a is not None and b is not None
        ]
        if deltas:
            share = sum(deltas) / len(deltas) / 1e9 / IDLE_CPU_WINDOW_S
            print(
                f"  idle CPU per sandbox        {share * 100:7.3f} % of one CPU "
                f"(over {IDLE_CPU_WINDOW_S:g}s; "
                f"{share * len(deltas) * 100:.2f} % for all {len(deltas)})"
            )
    finally:
        await close_all(sandboxes)
        shutil.rmtree(home / "idle", ignore_errors=True)


def available_memory() -> tuple[int, str]:
    """Memory available to sandboxes: MemAvailable, or less if this process's memory
    cgroup (which the sandbox cgroups nest under) has a tighter limit."""
    avail = meminfo()["MemAvailable"]
    why = "MemAvailable"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, used = (
                read_int(d / "memory.limit_in_bytes"),
                read_int(d / "memory.usage_in_bytes"),
            )
            if limit is not None and used is not None and limit - used < avail:
                avail, why = limit - used, f"own memory cgroup limit {limit / MiB:.0f} MiB"
    return avail, why


async def capacity(
    backend: BackendName,
    home: Path,
    limiter: CgroupLimiter | None,
    cap: int,
    result: Result,
) -> None:
    cgroups = Cgroups(limiter)
    avail, why = available_memory()
    per = result.mem_cgroup or result.mem_pss
    if per:
        result.extrapolated = int(avail * SAFETY / per)
        print(
            f"  extrapolated capacity       {result.extrapolated} sandboxes "
            f"({why} {avail / 2**30:.1f} GiB x {SAFETY:.0%} / {per / MiB:.1f} MiB each)"
        )
        if result.mem_pss:
            print(
                f"    by PSS instead            {int(avail * SAFETY / result.mem_pss)} sandboxes "
                f"({result.mem_pss / MiB:.1f} MiB each)"
            )
    target = min(cap, result.extrapolated) if result.extrapolated else cap
    result.tried = target
    floor = meminfo()["MemAvailable"] * CAPACITY_FLOOR

    def low_memory() -> bool:
        return meminfo()["MemAvailable"] < floor

    mem0 = meminfo()["MemAvailable"]
    t0 = time.perf_counter()
    sandboxes, errors = await start_many(
        backend, home, limiter, target, "many", concurrency=START_CONCURRENCY, stop=low_memory
    )
    started_s = time.perf_counter() - t0
    result.capacity_start_s = started_s
    result.held = len(sandboxes)
    try:
        print(
            f"  held warm: {len(sandboxes)}/{target} started in {started_s:.2f} s "
            f"({started_s / max(len(sandboxes), 1) * 1e3:.1f} ms each, "
            f"{START_CONCURRENCY} at a time)"
        )
        for e in sorted(set(errors))[:5]:
            print(f"  !! start failed ({errors.count(e)}x): {e}")
        if low_memory():
            print("  !! stopped early: MemAvailable fell below the floor")
        await asyncio.sleep(SETTLE_S)
        mem1 = meminfo()["MemAvailable"]
        t1 = time.perf_counter()
        answers = await asyncio.gather(
            *(s.exec(TRUE, timeout=60) for s in sandboxes), return_exceptions=True
        )
        exec_s = time.perf_counter() - t1
        result.answered = sum(
            1 for a in answers if not isinstance(a, BaseException) and a.code == 0
        )
        failures = [a for a in answers if isinstance(a, BaseException)]
        print(
            f"  all asked `true` at once: {result.answered}/{len(sandboxes)} answered 0 "
            f"in {exec_s * 1e3:.1f} ms total"
        )
        for f in failures[:3]:
            print(f"  !! exec failed: {type(f).__name__}: {str(f)[:200]}")
        usage = [cgroups.memory(s.id).get("usage") or 0 for s in sandboxes]
        if sandboxes:
            print(
                f"  memory while held: cgroups {sum(usage) / MiB:.0f} MiB "
                f"({sum(usage) / len(sandboxes) / MiB:.1f} each); MemAvailable fell by "
                f"{(mem0 - mem1) / MiB:.0f} MiB ({(mem0 - mem1) / len(sandboxes) / MiB:.1f} each)"
            )
    finally:
        t2 = time.perf_counter()
        await close_all(sandboxes)
        print(f"  closed {len(sandboxes)} in {time.perf_counter() - t2:.2f} s")
        shutil.rmtree(home / "many", ignore_errors=True)


async def disk_layer(backend: BackendName, home: Path, n: int, result: Result) -> None:
    """Start (+ ``true``) pool sandboxes with and without the disk image, alternating."""
    specs = {True: SandboxSpec(), False: SandboxSpec(limits=Limits(disk_mb=None))}
    async with SandboxPool(backend, home, size=0) as pool:
        for i in range(n + 1):
            for on, spec in specs.items():
                t0 = time.perf_counter()
                sandbox = await pool.acquire(spec)
                await sandbox.exec(TRUE)
                elapsed = time.perf_counter() - t0
                await pool.release(sandbox)
                if i:  # the first of each is a warm-up
                    (result.disk_on if on else result.disk_off).append(elapsed)
    for i in range(n):
        t0 = time.perf_counter()
        disk = await asyncio.to_thread(Disk(home / "disks" / str(i), Limits().disk_mb).mount)
        t1 = time.perf_counter()
        await asyncio.to_thread(remove_tree, disk.base)
        result.disk_mount.append(t1 - t0)
        result.disk_remove.append(time.perf_counter() - t1)
    print(f"  pool start+true, 10 GiB disk {ms(result.disk_on)}")
    print(f"  pool start+true, no disk     {ms(result.disk_off)}")
    print(f"  disk image make+mount        {ms(result.disk_mount)}")
    print(f"  disk unmount+remove          {ms(result.disk_remove)}")


# -------------------------------------------------------------------------------- main


def fmt(value: float | None, target: float | None, unit: str = "ms") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:.2f} {unit}"
    if target is not None:
        text += f" (target <{target:g}: {'ok' if value < target else 'MISSED'})"
    return text


def result_line(r: Result) -> str:
    def med(v: list[float]) -> float | None:
        return statistics.median(v) * 1e3 if v else None

    def p90(v: list[float]) -> float | None:
        return pct(v, 0.9) * 1e3 if v else None

    warm_target = TARGET_WARM_MS[r.backend]
    parts = [
        f"cold median {fmt(med(r.cold), None)} p90 {fmt(p90(r.cold), None)}",
        f"warm median {fmt(med(r.warm), warm_target)} p90 {fmt(p90(r.warm), None)}"
        f" [no refill in flight: median {fmt(med(r.warm_norefill), None)};"
        f" loop stall per start() median {fmt(med(r.stall_cg), None)}]",
        f"exec median {fmt(med(r.execs), TARGET_EXEC_MS)} p90 {fmt(p90(r.execs), None)}",
        f"idle mem cgroup {fmt(r.mem_cgroup / MiB if r.mem_cgroup else None, None, 'MiB')}"
        f" pss {fmt(r.mem_pss / MiB if r.mem_pss else None, None, 'MiB')}",
        f"capacity extrapolated {r.extrapolated}",
        f"held {r.held}/{r.tried} answered {r.answered}"
        + (f" started in {r.capacity_start_s:.2f} s" if r.capacity_start_s is not None else ""),
        f"start+true with disk median {fmt(med(r.disk_on), None)}"
        f" (without {fmt(med(r.disk_off), None)})",
        f"leftovers {len(r.leftovers)}",
    ]
    if r.errors:
        parts.append(f"errors {len(r.errors)}")
    return f"RESULT {r.backend}: " + " | ".join(parts)


async def bench(backend: BackendName, home: Path) -> Result:
    plan = PLANS[backend]
    result = Result(backend)
    limiter = limiter_for(home)
    cgroups = Cgroups(limiter)
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("cold start", lambda: cold_start(backend, home, limiter, plan.cold, result)),
        ("warm pool", lambda: warm_pool(backend, home, plan.warm, result)),
        ("exec round trip", lambda: exec_round_trip(backend, home, limiter, result)),
        ("idle memory", lambda: idle_memory(backend, home, limiter, plan.idle, result)),
        ("capacity", lambda: capacity(backend, home, limiter, plan.cap, result)),
        ("disk layer", lambda: disk_layer(backend, home, plan.cold, result)),
    ]
    for name, step in steps:
        try:
            await step()
        except Exception as exc:
            message = f"{name}: {type(exc).__name__}: {str(exc)[:300]}"
            result.errors.append(message)
            print(f"  !! {message}")
    result.leftovers = leftovers(home, cgroups)
    print(f"  leftovers after {backend}: {result.leftovers or 'none'}")
    if limiter is not None:
        limiter.close()
    return result


async def main(backends: list[BackendName]) -> None:
    info = meminfo()
    print(
        f"machine: {os.cpu_count()} CPUs, MemTotal {info['MemTotal'] / 2**30:.1f} GiB, "
        f"MemAvailable {info['MemAvailable'] / 2**30:.1f} GiB; python {sys.version.split()[0]}"
    )
    limiter = limiter_for(Path(tempfile.gettempdir()))
    print(
        "cgroups: "
        + (
            f"v{limiter.version} under {sorted({str(p) for p in limiter.parents.values()})}"
            if limiter is not None
            else "unavailable (no per-sandbox figures)"
        )
    )
    home = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    results: list[Result] = []
    try:
        for backend in backends:
            print(f"\n== {backend} ==")
            t0 = time.perf_counter()
            results.append(await bench(backend, home))
            print(f"  ({backend} took {time.perf_counter() - t0:.1f} s)")
    finally:
        final = leftovers(home, Cgroups(limiter))
        shutil.rmtree(home, ignore_errors=True)
    print()
    for r in results:
        print(result_line(r))
    print(f"leftovers at the end: {final or 'none'}; home removed: {not home.exists()}")


if __name__ == "__main__":
    chosen: list[BackendName] = [b for b in BACKENDS if b in sys.argv[1:]] or list(BACKENDS)
    asyncio.run(main(chosen))
