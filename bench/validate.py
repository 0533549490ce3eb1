"""Benchmark: build and validate a 10,000-node plan (100 layers x 100 nodes).

Layer 0 takes constants; every node of layer k > 0 is wired from two nodes of layer k-1
(a typed ``int`` port each), so validation type-checks 19,900 edges, 200 constants and
walks the whole DAG for cycles. Plan construction, ``plan.validate()`` and (for
reference; ``Runtime.start`` pays it too) the canonical ``plan.digest`` are timed apart.

    uv run python bench/validate.py
"""

from __future__ import annotations

import sys
import time

from pydantic import BaseModel

from orchestrator import Plan, node

LAYERS = 100
WIDTH = 100
TARGET_S = 0.5


class Pair(BaseModel):
    a: int
    b: int


class Num(BaseModel):
    x: int


@node()
async def cell(ctx: object, inputs: Pair) -> Num:
    return Num(x=inputs.a + inputs.b)


def build_plan() -> Plan:
    plan = Plan("bench-validate")
    prev = [plan.add(cell, name=f"L0.{i}", a=i, b=1) for i in range(WIDTH)]
    for layer in range(1, LAYERS):
        prev = [
            plan.add(
                cell,
                name=f"L{layer}.{i}",
                a=prev[i].out.x,
                b=prev[(i * 7 + layer) % WIDTH].out.x,
            )
            for i in range(WIDTH)
        ]
    return plan


def main() -> None:
    n = LAYERS * WIDTH
    print(
        f"validate: {LAYERS} layers x {WIDTH} nodes = {n:,} nodes, 2 typed int ports each "
        "(no Runtime or ledger involved: SQLite synchronous mode does not apply)"
    )
    rows = []
    for _ in range(3):
        t0 = time.perf_counter()
        plan = build_plan()
        t1 = time.perf_counter()
        problems = plan.validate()
        t2 = time.perf_counter()
        plan_digest = plan.digest
        t3 = time.perf_counter()
        if len(plan.nodes) != n or problems:
            print(f"unexpected: {len(plan.nodes)} nodes, problems {problems[:3]}", file=sys.stderr)
            sys.exit(1)
        rows.append((t1 - t0, t2 - t1, t3 - t2))
        print(
            f"  construction {(t1 - t0) * 1000:.1f} ms, validate() {(t2 - t1) * 1000:.1f} ms "
            f"({(t2 - t1) * 1e6 / n:.1f} us/node), describe+digest {(t3 - t2) * 1000:.1f} ms "
            f"[{plan_digest[:12]}]"
        )
    cold, best = rows[0][1], min(r[1] for r in rows)
    print(
        f"RESULT validate: {cold:.3f} s cold, {best:.3f} s best of {len(rows)} for "
        f"{n:,} nodes (construction {rows[0][0]:.3f} s cold); target < {TARGET_S} s: "
        f"{'OK' if cold < TARGET_S else 'MISS'}"
    )


if __name__ == "__main__":
    main()
