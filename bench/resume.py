"""Benchmark: SIGKILL a run at ~10,000 ledger events, then time resuming it elsewhere.

Three modes, each with a fresh home directory:

* ledger: the local SQLite ledger survives the kill; the new process resumes from it.
* local checkpoint: the run takes periodic checkpoints (``RunConfig(checkpoint_interval=
  INTERVAL)``) to an object store in a local directory; after the kill the parent DELETES
  the SQLite ledger (ledger.db, -wal, -shm) and the new process rebuilds it with
  ``Runtime.restore_ledger`` from the signed checkpoints before resuming.
* S3 checkpoint: the same, with the checkpoints in S3, served by moto on loopback
  (started here in a child process; a bucket is created for the run).

Per mode:

1. A child process (this file, ``--drive``) starts a run of 10 parallel lanes of 300
   chained nodes; every node performs 8 recorded effects (``ctx.random``/``ctx.log``), so
   each node writes 10 events and the whole run would write ~30,000.
2. The parent polls the SQLite file read-only (``SELECT count(*) FROM events``, and the
   highest ``cut`` of the CheckpointTaken events) and SIGKILLs the child once the ledger
   holds >= 10,000 events (checkpoint modes: once a checkpoint covers >= 10,000 events,
   so the ledger rebuilt from object storage alone has >= 10,000 events).
3. A NEW process (this file, ``--resume``) calls ``Runtime.restore_ledger(run_id)``
   (checkpoint modes) and ``Runtime.resume(run_id)``: it loads the plan from the recorded
   ``plan_ref`` (``bench/resume.py:build_plan``), verifies and folds the ledger, re-enters
   the in-flight nodes (their journaled effects are served from the ledger) and
   dispatches new work. A listener notes when the first new NodeDispatched is staged,
   then pauses the run (SIGTERM to itself: drain and park).

Reported: (a) wall time from spawning the resume process to its first new NodeDispatched
(interpreter start and imports included) and (b) in-process time from calling
``resume()`` to that dispatch (target < 0.5 s); for the checkpoint modes also the time of
``restore_ledger()`` and the in-process total from calling it to the first new dispatch
(target < 1 s locally; the issue sets no target for S3).

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
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from pydantic import BaseModel  # noqa: E402

from orchestrator import NodeContext, Plan, RunConfig, Runtime, node  # noqa: E402
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
TARGET_S = 0.5  # (b) resume() -> first new dispatch, local ledger intact
TARGET_RESTORE_S = 1.0  # restore_ledger() + resume() -> first new dispatch, local checkpoint
INTERVAL = 0.1  # checkpoint_interval of the checkpointed runs (seconds)
PLAN_REF = f"{Path(__file__).resolve()}:build_plan"
BUCKET = "bench-resume"
LEDGER_FILES = ("ledger.db", "ledger.db-wal", "ledger.db-shm")


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


def drive(home: Path, objects: str | None) -> None:
    from orchestrator.runtime.loader import load_plan

    plan = load_plan(PLAN_REF)

    def on_start(run_id: str) -> None:
        (home / "run_id.tmp").write_text(run_id)
        (home / "run_id.tmp").replace(home / "run_id")

    config = RunConfig(checkpoint_interval=INTERVAL) if objects else None
    with Runtime(home=home, objects=objects) as rt:
        asyncio.run(rt.start(plan, config=config, plan_ref=PLAN_REF, on_start=on_start))


# ---- child: (restore and) resume, and time the first new dispatch ----------------------


def resume(home: Path, run_id: str, objects: str | None) -> None:
    marks: dict[str, Any] = {"process": T_PROCESS, "imported": T_IMPORTED}

    def listener(event: BaseEvent) -> None:
        if isinstance(event, RunResumed):
            marks["run_resumed"] = time.time()
        elif isinstance(event, NodeResumed):
            marks.setdefault("first_node_resumed", time.time())
        elif isinstance(event, NodeDispatched) and "first_dispatch" not in marks:
            marks["first_dispatch"] = time.time()
            marks["first_dispatch_perf"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)  # pause: drain in-flight nodes and park

    if objects:
        # Instrumentation only: how long opening the object store takes (for S3 this
        # includes importing boto3 and building the client), inside restore_ledger().
        import orchestrator.runtime.engine as engine
        from orchestrator.storage.objects import ObjectStore, open_object_store

        def timed_open(url: str) -> ObjectStore:
            t = time.perf_counter()
            try:
                return open_object_store(url)
            finally:
                marks["open_objects_s"] = time.perf_counter() - t

        engine.__dict__["open_object_store"] = timed_open  # what Runtime.objects calls

    rt = Runtime(home=home, objects=objects)
    marks["runtime_open"] = time.time()
    durability = getattr(rt.store, "durability", "unknown")
    restored = 0
    if objects:
        marks["restore_call"] = time.time()
        restore_call = time.perf_counter()
        restored = rt.restore_ledger(run_id)
        marks["restore_s"] = time.perf_counter() - restore_call
    marks["resume_call"] = time.time()
    call = time.perf_counter()
    state = asyncio.run(rt.resume(run_id, listeners=(listener,)))
    marks["resume_returned"] = time.time()
    marks["in_process_s"] = marks["first_dispatch_perf"] - call
    if objects:
        marks["restore_to_dispatch_s"] = marks["first_dispatch_perf"] - restore_call
    checkpoints = len(rt.objects.list(f"runs/{run_id}/checkpoints/")) if objects else 0
    rt.close()
    report = {
        "marks": marks,
        "status": state.status,
        "head_seq": state.head_seq,
        "restored": restored,
        "checkpoints_after": checkpoints,
    }
    print(json.dumps({**report, "synchronous": durability}))


# ---- parent ----------------------------------------------------------------------------


def ledger_progress(db: Path) -> tuple[int, int]:
    """(events in the ledger, highest seq a recorded checkpoint covers, or -1)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        count = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        cut = conn.execute(
            "SELECT max(json_extract(CAST(body AS TEXT), '$.cut')) FROM events "
            "WHERE kind = 'CheckpointTaken'"
        ).fetchone()[0]
        return count, -1 if cut is None else int(cut)
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


def restore_breakdown(home: Path, run_id: str, objects: str, scratch: Path) -> str:
    """Time the pieces of restore_ledger in this process (into a scratch ledger), for the
    report. The object store now also holds the checkpoint the resumed run took when it
    parked, so this restores that one too."""
    from orchestrator.checkpoint import list_checkpoints, parse_segment, verify_checkpoints
    from orchestrator.ledger.verify import verify_chain
    from orchestrator.storage.objects import get_blob

    with Runtime(home=home, ledger=f"sqlite:///{scratch}", objects=objects) as rt:
        t0 = time.perf_counter()
        store = rt.objects
        t1 = time.perf_counter()
        keys = list_checkpoints(store, run_id)
        t2 = time.perf_counter()
        reports = verify_checkpoints(store, rt.chunks(), run_id, rt._signer_of(run_id))
        t3 = time.perf_counter()
        rows = [
            row
            for r in reports
            if r.manifest is not None
            for row in parse_segment(get_blob(store, r.manifest.segment.digest))
        ]
        t4 = time.perf_counter()
        verify_chain(rows)
        t5 = time.perf_counter()
        restored = rt.restore_ledger(run_id)
        t6 = time.perf_counter()
    return (
        f"open store {(t1 - t0) * 1000:.0f} ms (boto3 already imported here), list "
        f"{len(keys)} checkpoints {(t2 - t1) * 1000:.0f} ms, verify_checkpoints "
        f"{(t3 - t2) * 1000:.0f} ms, fetch+parse segments again {(t4 - t3) * 1000:.0f} ms, "
        f"verify_chain {len(rows):,} rows {(t5 - t4) * 1000:.0f} ms; "
        f"whole restore_ledger ({restored:,} events) {(t6 - t5) * 1000:.0f} ms"
    )


def ms(a: float, b: float) -> str:
    return f"{(b - a) * 1000:.0f} ms"


def drive_and_kill(me: str, home: Path, objects: str | None) -> tuple[str, int, int]:
    """Drive a run in a child until the kill condition, SIGKILL it; (run_id, events, cut)."""
    db = home / "ledger.db"
    started = time.perf_counter()
    args = [sys.executable, me, "--drive", str(home)] + ([objects] if objects else [])
    child = subprocess.Popen(args)
    events = cut = -1
    try:
        while True:
            if child.poll() is not None:
                raise SystemExit(f"driving child exited early ({child.returncode})")
            if (home / "run_id").exists():
                events, cut = ledger_progress(db)
                if objects is None and events >= KILL_AT:
                    break
                if objects is not None and events >= KILL_AT and cut + 1 >= KILL_AT:
                    break
            if time.perf_counter() - started > 60:
                raise SystemExit("timed out waiting for the ledger (and checkpoints) to grow")
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    gen_s = time.perf_counter() - started
    run_id = (home / "run_id").read_text()
    at_kill, cut_at_kill = ledger_progress(db)
    extra = ""
    if objects is not None:
        extra = f"; the newest recorded checkpoint covers {cut_at_kill + 1:,} events"
    print(
        f"  child SIGKILLed after {gen_s:.2f} s: saw {events:,} events, "
        f"{at_kill:,} committed at death{extra}"
    )
    return run_id, at_kill, cut_at_kill


def spawn_resume(
    me: str, home: Path, run_id: str, objects: str | None
) -> tuple[dict[str, Any], float]:
    args = [sys.executable, me, "--resume", str(home), run_id] + ([objects] if objects else [])
    spawn = time.time()
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1]), spawn


def mode_ledger(me: str, root: Path) -> str:
    print(f"(a/b) local ledger intact: SIGKILL at >= {KILL_AT:,} events, resume in a new process")
    home = root / "ledger"
    home.mkdir()
    run_id, at_kill, _ = drive_and_kill(me, home, None)
    result, spawn = spawn_resume(me, home, run_id, None)
    marks = result["marks"]
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
    return (
        f"RESULT resume (local ledger): (b) resume() -> first new NodeDispatched {in_s:.3f} s "
        f"(target < {TARGET_S} s: {'OK' if in_s < TARGET_S else 'MISS'}); "
        f"(a) process spawn -> first new NodeDispatched {wall_s:.3f} s "
        f"(ledger at {at_kill:,} events)"
    )


def mode_checkpoint(me: str, root: Path, name: str, objects: str, label: str) -> str:
    print(
        f"({label}) {name} checkpoints every {INTERVAL:g} s: SIGKILL once one covers >= "
        f"{KILL_AT:,} events, delete the SQLite ledger, restore_ledger + resume in a new process"
    )
    home = root / name.replace(" ", "-")
    home.mkdir()
    run_id, at_kill, _ = drive_and_kill(me, home, objects)
    for file in LEDGER_FILES:
        (home / file).unlink(missing_ok=True)
    assert not any((home / f).exists() for f in LEDGER_FILES)
    result, spawn = spawn_resume(me, home, run_id, objects)
    marks = result["marks"]
    wall_s = marks["first_dispatch"] - spawn
    restore_s = marks["restore_s"]
    resume_s = marks["in_process_s"]
    total_s = marks["restore_to_dispatch_s"]
    print(
        f"  resume process: interpreter start {ms(spawn, marks['process'])}, imports "
        f"{ms(marks['process'], marks['imported'])}, Runtime() "
        f"{ms(marks['imported'], marks['runtime_open'])}; restore_ledger() "
        f"{restore_s * 1000:.0f} ms ({result['restored']:,} events, of which opening the "
        f"object store {marks.get('open_objects_s', 0.0) * 1000:.0f} ms); resume() -> "
        f"RunResumed {ms(marks['resume_call'], marks['run_resumed'])}, -> first NodeResumed "
        f"{ms(marks['resume_call'], marks['first_node_resumed'])}, -> first new "
        f"NodeDispatched {ms(marks['resume_call'], marks['first_dispatch'])}"
    )
    print(
        f"  after the pause the run is {result['status']} at seq {result['head_seq']:,} "
        f"({ms(marks['first_dispatch'], marks['resume_returned'])} to drain and park); "
        f"{result['checkpoints_after']} checkpoints in the store now (one more: the park)"
    )
    scratch = root / f"scratch-{name.replace(' ', '-')}.db"
    print(
        f"  restore parts, timed in this process: "
        f"{restore_breakdown(home, run_id, objects, scratch)}"
    )
    if label == "c":
        target = f"target < {TARGET_RESTORE_S} s: {'OK' if total_s < TARGET_RESTORE_S else 'MISS'}"
    else:
        target = f"no target for S3; the {TARGET_RESTORE_S} s target is for local"
    lost = at_kill - result["restored"]
    return (
        f"RESULT resume ({name} checkpoint): ({label}) restore_ledger() + resume() -> first "
        f"new NodeDispatched {total_s:.3f} s ({target}) = restore_ledger "
        f"{restore_s:.3f} s + resume() {resume_s:.3f} s; process spawn -> first new "
        f"NodeDispatched {wall_s:.3f} s (restored {result['restored']:,} events from "
        f"checkpoints; the lost ledger had {at_kill:,}, {lost:,} after the last checkpoint)"
    )


def aws_env() -> None:
    """Fake credentials, and nothing from the machine's AWS configuration (inherited by
    every child)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """The tests' moto S3 server (tests/s3server.py) with BUCKET; yields the endpoint."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.s3server import moto_server as serve

    started = time.perf_counter()
    with serve(log, BUCKET) as (endpoint, _client):
        print(f"  moto S3 server at {endpoint}, up in {time.perf_counter() - started:.2f} s")
        yield endpoint


def main() -> None:
    me = str(Path(__file__).resolve())
    # SIGTERM -> SystemExit, so the finally blocks stop the children (moto also exits on
    # its own when our end of its stdin pipe closes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"resume: {LANES} lanes x {LENGTH} chained nodes, {EFFECTS} effects each "
        f"(~{LANES * LENGTH * (EFFECTS + 2):,} events in all)"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        root = Path(tmp)
        results.append(mode_ledger(me, root))
        store = root / "objects"
        results.append(mode_checkpoint(me, root, "local", str(store), "c"))
        aws_env()
        with moto_server(root / "moto.log") as endpoint:
            url = f"s3://{BUCKET}/bench?endpoint={endpoint}&region=us-east-1"
            results.append(mode_checkpoint(me, root, "S3", url, "d"))
    for line in results:
        print(line)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--drive":
        drive(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) >= 4 else None)
    elif len(sys.argv) >= 4 and sys.argv[1] == "--resume":
        resume(Path(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) >= 5 else None)
    else:
        main()
