"""Benchmark: replay a ~100,000-event run ledger end to end.

The run: 10 layers x 100 nodes (each wired from a node of the previous layer); every node
performs 98 cheap recorded effects (alternating ``ctx.random()`` and ``ctx.log(...)``), so
the ledger holds 1,000 x (NodeDispatched + 98 EffectRecorded + NodeSucceeded) plus
RunStarted and RunCompleted = 100,002 events. ``Runtime.replay(run_id, plan)`` is then
timed end to end (read, chain verification, decode, re-running every body against its
journal, re-encoding and comparing every event), and its regenerated head hash is checked
against the ledger's.

    uv run python bench/replay.py [--profile]
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import pstats
import sys
import tempfile
import time

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, node

LAYERS = 10
WIDTH = 100
EFFECTS = 98
TARGET_S = 3.0


class Num(BaseModel):
    x: int


class Acc(BaseModel):
    x: int
    acc: float


@node()
async def busy(ctx: NodeContext, inputs: Num) -> Acc:
    acc = 0.0
    for i in range(EFFECTS):
        if i % 2:
            await ctx.log("tick", i=i, x=inputs.x)
        else:
            acc += await ctx.random()
    return Acc(x=inputs.x + 1, acc=round(acc, 6))


def build_plan() -> Plan:
    plan = Plan("bench-replay")
    prev = [plan.add(busy, name=f"L0.{i}", x=i) for i in range(WIDTH)]
    for layer in range(1, LAYERS):
        prev = [
            plan.add(busy, name=f"L{layer}.{i}", x=prev[(i + layer) % WIDTH].out.x)
            for i in range(WIDTH)
        ]
    return plan


def main() -> None:
    profile = "--profile" in sys.argv
    plan = build_plan()
    print(
        f"replay: {LAYERS} layers x {WIDTH} nodes, {EFFECTS} effects each "
        f"(ctx.random / ctx.log alternating)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp, Runtime(home=tmp) as rt:
        print(f"  ledger: {getattr(rt.store, 'durability', 'unknown')}")
        t0 = time.perf_counter()
        state = asyncio.run(rt.start(plan))
        gen_s = time.perf_counter() - t0
        if state.status != "succeeded":
            print(f"generating run did not succeed: {state.summary}", file=sys.stderr)
            sys.exit(1)
        run_id = state.run_id
        # Replay normally runs in a fresh process (`orchestrator replay`): drop the
        # generating run's in-memory state (100k journaled events) before timing it.
        del state
        gc.collect()
        head = rt.store.head(run_id)
        assert head is not None
        events = head.seq + 1
        print(
            f"  generated {events:,} events in {gen_s:.2f} s "
            f"({gen_s * 1e6 / events:.1f} us/event, {events / gen_s:,.0f} events/s)"
        )

        t0 = time.perf_counter()
        rows = rt.store.read(run_id)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        verified = rt.verify(run_id)
        verify_s = time.perf_counter() - t0
        print(
            f"  parts (for reference): store.read {read_s:.3f} s, "
            f"verify (read + re-hash + decode) {verify_s:.3f} s, ok={verified.ok}"
        )
        del rows
        gc.collect()

        profiler = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        report = asyncio.run(rt.replay(run_id, plan))
        if profiler is not None:
            profiler.disable()
        replay_s = time.perf_counter() - t0

    if profiler is not None:
        print("\n--- cProfile of Runtime.replay (slowed by the profiler), top 30 cumulative ---")
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(30)
        print("--- top 25 by own time ---")
        stats.sort_stats("tottime").print_stats(25)

    match = report.ok and report.head_hash == head.hash and report.events == events
    print(
        f"  replay: {report.events:,} events in {replay_s:.2f} s "
        f"({replay_s * 1e6 / max(report.events, 1):.1f} us/event); "
        f"head {report.head_hash[:16]} vs ledger {head.hash[:16]}: "
        f"{'OK' if match else 'DIVERGED'}"
    )
    if report.divergence is not None:
        print(f"  divergence: {report.divergence}")
    print(
        f"RESULT replay: {events:,} events replayed in {replay_s:.2f} s "
        f"(generation {gen_s:.2f} s); target < {TARGET_S} s: "
        f"{'OK' if replay_s < TARGET_S else 'MISS'}; head hash {'OK' if match else 'DIVERGED'}"
    )
    if not match:
        sys.exit(1)


if __name__ == "__main__":
    main()
