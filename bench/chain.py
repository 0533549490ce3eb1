"""Benchmark: 1,000 sequential durable nodes (node i's output feeds node i+1).

Every node costs one durable transaction (its NodeSucceeded shares a group commit with
the next node's NodeDispatched), so this measures the per-node overhead of the
scheduler plus one SQLite commit. Run once with the default ledger (WAL +
synchronous=NORMAL: no fsync per commit) and once with ``?synchronous=full`` (an fsync
per commit), and print both.

    uv run python bench/chain.py [--profile]
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from orchestrator import Plan, Runtime, node
from orchestrator.ledger.events import BaseEvent, RunCompleted, RunStarted

N = 1_000
TARGET_MS = 0.3


class Num(BaseModel):
    x: int


@node()
async def step(ctx: object, inputs: Num) -> Num:
    return Num(x=inputs.x + 1)


def build_plan(n: int = N) -> Plan:
    plan = Plan("bench-chain")
    prev = plan.add(step, name="n0", x=0)
    for i in range(1, n):
        prev = plan.add(step, name=f"n{i}", x=prev.out.x)
    return plan


def run_once(ledger_query: str, profile: bool = False, n: int = N) -> dict[str, float | str]:
    plan = build_plan(n)
    marks: dict[str, float] = {}

    def listener(event: BaseEvent) -> None:
        if isinstance(event, RunStarted):
            marks["started"] = time.perf_counter()
        elif isinstance(event, RunCompleted):
            marks["completed"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        home = Path(tmp)
        url = f"sqlite:///{home.resolve()}/ledger.db{ledger_query}" if ledger_query else None
        with Runtime(home=home, ledger=url) as rt:
            modes = getattr(rt.store, "durability", "unknown")
            profiler = cProfile.Profile() if profile else None
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            state = asyncio.run(rt.start(plan, listeners=(listener,)))
            if profiler is not None:
                profiler.disable()
            t1 = time.perf_counter()
            if state.status != "succeeded" or state.summary["succeeded"] != n:
                print(f"run did not succeed: {state.status} {state.summary}", file=sys.stderr)
                sys.exit(1)
            events = state.head_seq + 1
    if profiler is not None:
        print(f"\n--- cProfile of rt.start() ({modes}), top 25 by cumulative time ---")
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(25)
        print("--- top 20 by own time ---")
        stats.sort_stats("tottime").print_stats(20)
    return {
        "modes": modes,
        "total_s": t1 - t0,
        "exec_s": marks["completed"] - marks["started"],
        "events": events,
    }


def main() -> None:
    profile = "--profile" in sys.argv
    print(f"chain: {N:,} sequential durable nodes, trivial bodies, no effects")
    if profile:
        print("(--profile: the default-ledger run below is slowed by cProfile)")
    run_once("", n=20)  # warm-up: first-use costs (imports, schema builds) stay out of both
    normal = run_once("", profile=profile)
    full = run_once("?synchronous=full")
    for label, r in (("default", normal), ("sync=full", full)):
        total_ms = float(r["total_s"]) * 1000 / N
        exec_ms = float(r["exec_s"]) * 1000 / N
        if label == "default":
            verdict = f"target < {TARGET_MS} ms/node: {'OK' if total_ms < TARGET_MS else 'MISS'}"
        else:
            verdict = "no target: an fsync per commit"
        print(
            f"  {label:<9} [{r['modes']}]: {total_ms:.3f} ms/node ({verdict}); "
            f"RunStarted->RunCompleted {exec_ms:.3f} ms/node; "
            f"whole start() {float(r['total_s']):.3f} s, {r['events']:,} events"
        )
    ratio = float(full["total_s"]) / float(normal["total_s"])
    print(
        f"RESULT chain: {float(normal['total_s']) * 1000 / N:.3f} ms/node with synchronous=NORMAL "
        f"vs {float(full['total_s']) * 1000 / N:.3f} ms/node with synchronous=FULL "
        f"(FULL/NORMAL = {ratio:.1f}x); target < {TARGET_MS} ms/node"
    )


if __name__ == "__main__":
    main()
