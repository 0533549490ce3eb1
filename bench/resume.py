"""Benchmark: SIGKILL a run at ~10,000 ledger events, then time resuming it elsewhere.

1. A child process (this file, ``--drive``) starts a run of 10 parallel lanes of 300
   chained nodes; every node performs 8 recorded effects (``ctx.random``/``ctx.log``), so
   each node writes 10 events and the whole run would write ~30,000.
2. The parent polls the SQLite file read-only (``SELECT count(*) FROM events``) and
   SIGKILLs the child once the ledger holds >= 10,000 events.
3. A NEW process (this file, ``--resume``) calls ``Runtime.resume(run_id)``: it loads the
   plan from the recorded ``plan_ref`` (``bench/resume.py:build_plan``), verifies and folds
   the ledger, re-enters the in-flight nodes (their journaled effects are served from
   the ledger) and dispatches new work. A listener notes when the first new
   NodeDispatched is staged, then pauses the run (SIGTERM to itself: drain and park).

Reported: (a) wall time from spawning the resume process to its first new NodeDispatched
(interpreter start and imports included) and (b) in-process time from calling
``resume()`` to that dispatch (target < 0.5 s).

    uv run python bench/resume.py
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # as early as possible: before the heavy imports below

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from pydantic import BaseModel  # noqa: E402

from orchestrator import NodeContext, Plan, Runtime, node  # noqa: E402
from orchestrator.ledger.events import (  # noqa: E402
    BaseEvent,
    NodeDispatched,
    NodeResumed,
    RunResumed,
)

T_IMPORTED = time.time()

LANES = 10
LENGTH = 300
EFFECTS = 8
KILL_AT = 10_000
TARGET_S = 0.5
PLAN_REF = f"{Path(__file__).resolve()}:build_plan"


class Num(BaseModel):
    x: int


@node()
async def work(ctx: NodeContext, inputs: Num) -> Num:
    acc = 0.0
    for i in range(EFFECTS):
        if i % 2:
            await ctx.log("step", i=i)
        else:
            acc += await ctx.random()
    return Num(x=inputs.x + 1 + int(acc > 100))


def build_plan() -> Plan:
    plan = Plan("bench-resume")
    for lane in range(LANES):
        prev = plan.add(work, name=f"lane{lane}.0", x=lane)
        for i in range(1, LENGTH):
            prev = plan.add(work, name=f"lane{lane}.{i}", x=prev.out.x)
    return plan


# ---- child: drive a run until killed ---------------------------------------------------


def drive(home: Path) -> None:
    from orchestrator.runtime.loader import load_plan

    plan = load_plan(PLAN_REF)

    def on_start(run_id: str) -> None:
        (home / "run_id.tmp").write_text(run_id)
        (home / "run_id.tmp").replace(home / "run_id")

    with Runtime(home=home) as rt:
        asyncio.run(rt.start(plan, plan_ref=PLAN_REF, on_start=on_start))


# ---- child: resume and time the first new dispatch -------------------------------------


def resume(home: Path, run_id: str) -> None:
    marks: dict[str, float] = {"process": T_PROCESS, "imported": T_IMPORTED}

    def listener(event: BaseEvent) -> None:
        if isinstance(event, RunResumed):
            marks["run_resumed"] = time.time()
        elif isinstance(event, NodeResumed):
            marks.setdefault("first_node_resumed", time.time())
        elif isinstance(event, NodeDispatched) and "first_dispatch" not in marks:
            marks["first_dispatch"] = time.time()
            marks["first_dispatch_perf"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)  # pause: drain in-flight nodes and park

    rt = Runtime(home=home)
    marks["runtime_open"] = time.time()
    durability = getattr(rt.store, "durability", "unknown")
    marks["resume_call"] = time.time()
    call = time.perf_counter()
    state = asyncio.run(rt.resume(run_id, listeners=(listener,)))
    marks["resume_returned"] = time.time()
    rt.close()
    marks["in_process_s"] = marks["first_dispatch_perf"] - call
    report = {"marks": marks, "status": state.status, "head_seq": state.head_seq}
    print(json.dumps({**report, "synchronous": durability}))


# ---- parent ----------------------------------------------------------------------------


def count_events(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def parts_breakdown(home: Path, run_id: str) -> str:
    """Time the pieces of resume's preamble in this process, for the report."""
    from orchestrator.ledger.events import decode
    from orchestrator.ledger.state import RunState
    from orchestrator.ledger.verify import verify_chain
    from orchestrator.runtime.loader import load_plan

    with Runtime(home=home) as rt:
        t0 = time.perf_counter()
        rows = rt.store.read(run_id)
        t1 = time.perf_counter()
        verify_chain(rows)
        t2 = time.perf_counter()
        RunState.fold(decode(r.body) for r in rows)
        t3 = time.perf_counter()
        plan = load_plan(PLAN_REF)
        t4 = time.perf_counter()
        plan.describe()
        t5 = time.perf_counter()
    return (
        f"read {len(rows):,} rows {(t1 - t0) * 1000:.0f} ms, verify_chain "
        f"{(t2 - t1) * 1000:.0f} ms, fold {(t3 - t2) * 1000:.0f} ms, load_plan "
        f"{(t4 - t3) * 1000:.0f} ms, plan.describe {(t5 - t4) * 1000:.0f} ms"
    )


def main() -> None:
    me = str(Path(__file__).resolve())
    print(
        f"resume: {LANES} lanes x {LENGTH} chained nodes, {EFFECTS} effects each; "
        f"SIGKILL at >= {KILL_AT:,} events, resume in a new process"
    )
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        home = Path(tmp)
        db = home / "ledger.db"
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, me, "--drive", str(home)])
        events = 0
        try:
            while True:
                if child.poll() is not None:
                    print(f"driving child exited early ({child.returncode})", file=sys.stderr)
                    sys.exit(1)
                if (home / "run_id").exists():
                    events = count_events(db)
                    if events >= KILL_AT:
                        break
                if time.perf_counter() - started > 60:
                    print("timed out waiting for the ledger to grow", file=sys.stderr)
                    sys.exit(1)
                time.sleep(0.005)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        gen_s = time.perf_counter() - started
        run_id = (home / "run_id").read_text()
        at_kill = count_events(db)
        print(
            f"  child SIGKILLed after {gen_s:.2f} s: saw {events:,} events, "
            f"{at_kill:,} committed at death"
        )

        spawn = time.time()
        out = subprocess.run(
            [sys.executable, me, "--resume", str(home), run_id],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        marks = result["marks"]

        def ms(a: float, b: float) -> str:
            return f"{(b - a) * 1000:.0f} ms"

        wall_s = marks["first_dispatch"] - spawn
        in_s = marks["in_process_s"]
        print(
            f"  resume process [WAL, synchronous={result['synchronous']}]: "
            f"interpreter start {ms(spawn, marks['process'])}, imports "
            f"{ms(marks['process'], marks['imported'])}, Runtime() "
            f"{ms(marks['imported'], marks['runtime_open'])}; resume() -> RunResumed "
            f"{ms(marks['resume_call'], marks['run_resumed'])} (load plan, read, verify, "
            f"fold), -> first NodeResumed {ms(marks['resume_call'], marks['first_node_resumed'])}"
            f", -> first new NodeDispatched {ms(marks['resume_call'], marks['first_dispatch'])}"
        )
        print(
            f"  after the pause the run is {result['status']} at seq {result['head_seq']:,} "
            f"({ms(marks['first_dispatch'], marks['resume_returned'])} to drain and park)"
        )
        print(f"  preamble parts, timed in this process: {parts_breakdown(home, run_id)}")
    print(
        f"RESULT resume: (b) resume() -> first new NodeDispatched {in_s:.3f} s "
        f"(target < {TARGET_S} s: {'OK' if in_s < TARGET_S else 'MISS'}); "
        f"(a) process spawn -> first new NodeDispatched {wall_s:.3f} s "
        f"(ledger at {at_kill:,} events)"
    )


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--drive":
        drive(Path(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "--resume":
        resume(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
