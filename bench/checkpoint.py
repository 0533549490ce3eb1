"""Benchmark: checkpoints of a run with 4 live sandboxes of 200 MB workspaces each.

The real Runtime (bwrap sandboxes, the local object store under the home) runs a plan of
4 parallel nodes. Each node:

1. builds ~200 MB in its workspace with one ``ctx.exec`` of ``python3`` inside the
   sandbox: 2,000 files x 100 KB of text-like data (random lines from a per-workspace
   pool: compressible, no repeats across workspaces), in 20 x 10 directories;
2. waits for the other three inside a recorded host tool (its effect gate is held, so no
   periodic checkpoint snapshots a half-ready set of workspaces), then stays between
   effects until every workspace has had its first snapshot: the next periodic
   checkpoint snapshots all 4 fresh workspaces (800 MB) at once;
3. loops: rewrite 1% of its files (20) with one ``ctx.exec``, then ``asyncio.sleep`` —
   while ``RunConfig(checkpoint_interval=1.0)`` takes periodic checkpoints.

Measured: each checkpoint's wall time from taking the checkpointer's lock to returning
(``Checkpointer.take`` and each workspace snapshot are wrapped with timers: the ledger
records when a checkpoint ended, not when it began), ``pause_ms`` from the ledger's
CheckpointTaken events (how long a node was held still), and the bytes each checkpoint
wrote, from the object store itself: the files (chunks, blobs, manifest) whose mtime
falls after the previous checkpoint ended and before this one did.

Steady state = the periodic checkpoints of the loop after the first WARMUP ones: a file
modified within 2 s of a snapshot (``RACY_WINDOW_NS``) is re-read by the next one, so
right after the build the next checkpoints still re-hash the last-written files.
Afterwards a dry run of ``orchestrator gc`` reports any unreferenced objects. Prints
figures, never asserts.

    uv run python bench/checkpoint.py [--dir DIR] [--rounds N]
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, RunConfig, Runtime, node
from orchestrator.checkpoint import Checkpointer
from orchestrator.gc import collect_garbage
from orchestrator.ledger.events import CheckpointTaken, decode
from orchestrator.sandbox.process import AgentSandbox

WORKERS = 4
FILES = 2_000
FILE_SIZE = 100_000
CHANGED = FILES // 100
INTERVAL = 1.0
ROUND_SLEEP = 1.0
WARMUP = 3
TARGET_STEADY_S = 1.0
SLACK_S = 0.02

CREATE = """
import os, random, sys
seed, files, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(5000)]
pool = [" ".join(rng.choices(words, k=rng.randint(3, 12))) + "\\n" for _ in range(50000)]
for i in range(files):
    d = f"pkg{i % 20:02d}/mod{i // 20 % 10}"
    os.makedirs(d, exist_ok=True)
    data = "".join(rng.choices(pool, k=size // 40)).encode()[:size]
    with open(f"{d}/file{i:04d}.txt", "wb") as f:
        f.write(data)
"""

CHANGE = """
import random, sys
seed, files, size, changed = (int(a) for a in sys.argv[1:5])
rng = random.Random(seed)
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(2000)]
pool = [" ".join(rng.choices(words, k=rng.randint(3, 12))) + "\\n" for _ in range(5000)]
for i in rng.sample(range(files), changed):
    data = "".join(rng.choices(pool, k=size // 40)).encode()[:size]
    with open(f"pkg{i % 20:02d}/mod{i // 20 % 10}/file{i:04d}.txt", "wb") as f:
        f.write(data)
"""


# ---- the plan -------------------------------------------------------------------------


class Work(BaseModel):
    index: int
    rounds: int


class Done(BaseModel):
    rounds: int


class _Sync:
    """In-process rendezvous of the 4 nodes (they share the runtime's event loop)."""

    def __init__(self) -> None:
        self.built = 0
        self.all_built = asyncio.Event()
        self.first_done = asyncio.Event()
        self.built_at: float | None = None
        self.snapped: set[str] = set()


SYNC: _Sync | None = None


async def _all_built() -> int:
    assert SYNC is not None
    SYNC.built += 1
    if SYNC.built == WORKERS:
        SYNC.built_at = time.time()
        SYNC.all_built.set()
    await SYNC.all_built.wait()
    return SYNC.built


@node("filler", effects={"fs"})
async def filler(ctx: NodeContext, inputs: Work) -> Done:
    assert SYNC is not None
    seed = 1_000 * (inputs.index + 1)
    create = ["python3", "-I", "-S", "-c", CREATE, str(seed), str(FILES), str(FILE_SIZE)]
    await ctx.exec(create, check=True)
    await ctx.tool("all-built", _all_built)  # gate held: not snapshotted half-way
    await SYNC.first_done.wait()  # between effects until every workspace is snapshotted
    for r in range(inputs.rounds):
        args = [str(seed + r + 1), str(FILES), str(FILE_SIZE), str(CHANGED)]
        await ctx.exec(["python3", "-I", "-S", "-c", CHANGE, *args], check=True)
        await asyncio.sleep(ROUND_SLEEP)
    return Done(rounds=inputs.rounds)


def build_plan(rounds: int) -> Plan:
    plan = Plan("bench-checkpoint")
    for i in range(WORKERS):
        plan.add(filler, name=f"ws{i}", index=i, rounds=rounds)
    return plan


# ---- instrumentation ------------------------------------------------------------------

TAKES: list[dict[str, Any]] = []
_TAKE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("take", default=None)


class _TimedLock(asyncio.Lock):
    """The checkpointer's lock, noting when the current take acquired it."""

    async def acquire(self) -> bool:
        got = await super().acquire()
        record = _TAKE.get()
        if record is not None:
            record["started"] = time.perf_counter()
        return got


def instrument() -> None:
    take, snapshot = Checkpointer.take, AgentSandbox.snapshot

    async def timed_take(self: Checkpointer, label: str, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self._lock, _TimedLock):
            assert not self._lock.locked()
            self._lock = _TimedLock()
        record: dict[str, Any] = {"label": label, "snaps": []}
        token = _TAKE.set(record)
        try:
            event = await take(self, label, *args, **kwargs)
        finally:
            _TAKE.reset(token)
        record["seconds"] = time.perf_counter() - record["started"]
        record["t1"] = time.time()
        if SYNC is not None:
            SYNC.snapped.update(s["node"] for s in record["snaps"])
            if len(SYNC.snapped) == WORKERS:
                SYNC.first_done.set()
        record["event"] = event
        TAKES.append(record)
        return event

    async def timed_snapshot(self: AgentSandbox, store: Any, previous: Any = None) -> Any:
        started = time.perf_counter()
        snap, index = await snapshot(self, store, previous)
        record = _TAKE.get()
        if record is not None:
            record["snaps"].append(
                {
                    "node": Path(self.workspace).name.split(".")[0],
                    "fresh": previous is None,
                    "seconds": time.perf_counter() - started,
                    "read": snap.read_bytes,
                    "new": snap.new_bytes,
                    "reused": snap.reused_files,
                }
            )
        return snap, index

    Checkpointer.take = timed_take  # type: ignore[method-assign]
    AgentSandbox.snapshot = timed_snapshot  # type: ignore[method-assign]


def store_writes(objects_root: Path, ends: list[float]) -> list[tuple[int, int]]:
    """(objects, bytes) each checkpoint wrote: every file of the store goes to the first
    checkpoint that ended after its mtime (nothing else writes to the store; the slack
    covers the filesystem's coarse timestamps)."""
    out = [(0, 0) for _ in ends]
    for dirpath, _, names in os.walk(objects_root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            i = bisect.bisect_left(ends, st.st_mtime - SLACK_S)
            if i < len(out):
                out[i] = (out[i][0] + 1, out[i][1] + st.st_size)
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# ---- main -----------------------------------------------------------------------------


def main() -> None:
    global SYNC
    args = sys.argv[1:]
    parent = args[args.index("--dir") + 1] if "--dir" in args else None
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 20
    instrument()
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-", dir=parent) as tmp:
        home = Path(tmp) / "home"
        print(
            f"home {home}; {WORKERS} bwrap sandboxes x {FILES} files x {FILE_SIZE // 1000} KB; "
            f"checkpoint_interval={INTERVAL}s; {rounds} rounds of {CHANGED} files changed "
            f"+ {ROUND_SLEEP}s sleep; cpus={os.cpu_count()}"
        )

        async def go(rt: Runtime) -> Any:
            global SYNC
            SYNC = _Sync()
            return await rt.start(
                build_plan(rounds), config=RunConfig(checkpoint_interval=INTERVAL)
            )

        started = time.time()
        with Runtime(home=home, sandbox="bwrap") as rt:
            state = asyncio.run(go(rt))
            elapsed = time.time() - started
            events = [decode(r.body) for r in rt.store.read(state.run_id)]
            objects_root = home / "objects"
            taken = {e.manifest: e for e in events if isinstance(e, CheckpointTaken)}
            assert SYNC is not None
            built_at = SYNC.built_at
            t = time.perf_counter()
            garbage = collect_garbage(rt.objects, rt.chunks(), dry_run=True)
            gc_s = time.perf_counter() - t
        print(f"run {state.run_id} {state.status} in {elapsed:.1f} s")
        if built_at is not None:
            print(f"4 workspaces built (in the sandboxes) {built_at - started:.1f} s after start")
        report(TAKES, taken, objects_root)
        why = " (left by a checkpoint cancelled as the run ended)" if garbage.deleted else ""
        print(f"gc dry run afterwards ({gc_s:.2f} s): {garbage.summary()}{why}")


def report(takes: list[dict[str, Any]], taken: dict[str, Any], objects_root: Path) -> None:
    rows = []
    writes = store_writes(objects_root, [t["t1"] for t in takes])
    for t, (count, size) in zip(takes, writes, strict=True):
        event = t["event"]
        rows.append((t, taken.get(event.manifest, event), count, size))
    print(
        f"{'#':>3} {'label':<10} {'secs':>6} {'snapped':>7} {'fresh':>5} {'read':>9} "
        f"{'new(snap)':>10} {'objects':>7} {'written':>9} {'pause_ms':>9}"
    )
    for i, (t, event, count, size) in enumerate(rows):
        snaps = t["snaps"]
        print(
            f"{i:>3} {t['label']:<10} {t['seconds']:>6.3f} {len(snaps):>7} "
            f"{sum(s['fresh'] for s in snaps):>5} {mb(sum(s['read'] for s in snaps)):>9} "
            f"{mb(sum(s['new'] for s in snaps)):>10} {count:>7} {mb(size):>9} "
            f"{event.pause_ms:>9.1f}"
        )
    fresh = [i for i, r in enumerate(rows) if any(x["fresh"] for x in r[0]["snaps"])]
    if not fresh:
        print("no checkpoint snapshotted a workspace")
        return
    first_i = fresh[-1]
    first, first_event, first_count, first_size = rows[first_i]
    per_ws = ", ".join(
        f"{s['node']} {s['seconds']:.2f}s{'' if s['fresh'] else ' (not fresh)'}"
        for s in first["snaps"]
    )
    split = "" if len(fresh) == 1 else f" (SPLIT over checkpoints {fresh})"
    n_fresh = sum(x["fresh"] for x in first["snaps"])
    print(
        f"\nfirst checkpoint (#{first_i}, {n_fresh} fresh workspaces{split}): "
        f"{first['seconds']:.2f} s, wrote {first_count} objects / {mb(first_size)} "
        f"(of {mb(sum(s['read'] for s in first['snaps']))} read); per workspace: {per_ws}; "
        f"pause_ms {first_event.pause_ms:.0f}"
    )
    loop = [r for r in rows[first_i + 1 :] if r[0]["label"] == "periodic" and r[0]["snaps"]]
    steady = loop[WARMUP:]
    if not steady:
        print("too few periodic checkpoints for a steady state; use more --rounds")
        return
    secs = sorted(r[0]["seconds"] for r in steady)
    written = [r[3] for r in steady]
    snapped = [len(r[0]["snaps"]) for r in steady]
    reads = [sum(s["read"] for s in r[0]["snaps"]) for r in steady]
    pause_all = max(r[1].pause_ms for r in rows)
    pause_steady = max(r[1].pause_ms for r in steady)
    p90 = secs[min(len(secs) - 1, int(0.9 * len(secs)))]
    print(
        f"steady state ({len(steady)} periodic checkpoints after {WARMUP} warm-up ones; "
        f"{statistics.mean(snapped):.1f} of {WORKERS} workspaces snapshotted on average, "
        f"the others busy in a command): median {statistics.median(secs):.3f} s, "
        f"p90 {p90:.3f} s, max {secs[-1]:.3f} s (target < {TARGET_STEADY_S} s); "
        f"read {mb(statistics.mean(reads))} and wrote {mb(statistics.mean(written))} "
        f"per checkpoint on average (max {mb(max(written))})"
    )
    print(
        f"longest pause a running node saw: {pause_all:.0f} ms overall "
        f"(first checkpoint included), {pause_steady:.0f} ms in steady state"
    )
    ok = "ok" if statistics.median(secs) < TARGET_STEADY_S else "MISSED"
    print(
        f"RESULT first={first['seconds']:.2f}s steady_median={statistics.median(secs):.3f}s "
        f"steady_max={secs[-1]:.3f}s ({ok}) steady_written={mb(statistics.mean(written))} "
        f"max_pause_ms={pause_all:.0f} steady_max_pause_ms={pause_steady:.0f}"
    )


if __name__ == "__main__":
    main()
