"""Crash chaos: SIGKILL a child driving a 62-node plan at random moments, resume, compare.

A child process (``plans/chaos_driver.py``) runs ``plans/chaos_plan.py`` — parallel
chains beside a map fan-out, deterministic retries, and effects that append to a side
file. The test SIGKILLs it at random moments at least ``MIN_KILLS`` times, reads the
ledger post mortem after each kill, and resumes in a new child. At the end:

* the run succeeded, its outputs equal an uncrashed run's, its chain verifies and it
  replays byte for byte;
* no node that had succeeded by some kill started again in a later process;
* no effect whose result was journaled was performed again (the side file shows each
  performance with the number of the process that did it); an effect in flight at a
  kill may have been performed again, but only under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from orchestrator import RunState, Runtime
from orchestrator.errors import RunNotFound
from orchestrator.ledger.events import EffectRecorded, NodeDispatched, NodeSucceeded, decode

DRIVER = Path(__file__).parent / "plans" / "chaos_driver.py"
MIN_KILLS = 20
KILL_DELAY = (0.02, 0.3)  # seconds a child runs before it is killed
SEED = int(os.environ.get("CHAOS_SEED", "20240611"))  # vary it to explore


class Child:
    """One driver process; ``incarnation`` numbers it (0 starts the run, k resumes it)."""

    live: ClassVar[list[Child]] = []

    def __init__(self, workdir: Path, home: Path, mode: str, incarnation: int) -> None:
        self.incarnation = incarnation
        self.err_path = workdir / f"child-{incarnation}.err"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ORCHESTRATOR_") or k == "ORCHESTRATOR_TRUST"
        }
        env.update(
            CHAOS_SIDE=str(workdir / "side.jsonl"),
            CHAOS_STARTS=str(workdir / "starts.log"),
            CHAOS_INCARNATION=str(incarnation),
        )
        self._err: IO[str] = self.err_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(home), str(workdir / "run_id"), mode],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        Child.live.append(self)

    def wait_ready(self) -> bool:
        """Block until the child is about to touch the run; False if it exited first."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip() == "ready"

    def finish(self, timeout: float | None = None) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self._err.close()
            Child.live.remove(self)
        return code

    @classmethod
    def reap_all(cls) -> None:
        """Kill and reap whatever a failed test left running."""
        for child in list(cls.live):
            child.proc.kill()
            child.finish()

    def stderr(self) -> str:
        return self.err_path.read_text()[-3000:]


@dataclass
class PostMortem:
    """What the ledger held right after a kill."""

    killed: int  # incarnation of the killed child
    counted: bool  # the child had written to the ledger before it died
    status: str
    succeeded: set[str]
    journaled: set[str]
    events: int


def read_ledger(home: Path, run_id: str) -> tuple[RunState, list[Any]]:
    with Runtime(home=home) as rt:
        report = rt.verify(run_id)
        assert report.ok, f"ledger chain broken: {report}"
        rows = rt.rows(run_id)
    events = [decode(r.body) for r in rows]
    return RunState.fold(events), events


def post_mortem(home: Path, run_id: str, killed: int, before: int) -> PostMortem:
    state, events = read_ledger(home, run_id)
    return PostMortem(
        killed=killed,
        counted=len(events) > before,
        status=state.status,
        succeeded={k for k, ns in state.nodes.items() if ns.status == "succeeded"},
        journaled={e.key for e in events if isinstance(e, EffectRecorded)},
        events=len(events),
    )


def side_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_lines(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for line in path.read_text().splitlines():
        word, node, attempt, incarnation = line.split()
        assert word == "start"
        out.append((node, int(attempt), int(incarnation)))
    return out


def run_chaos(workdir: Path, home: Path, rng: random.Random) -> tuple[str, list[PostMortem]]:
    """Start, then kill and resume until MIN_KILLS kills landed; let the last child finish.

    A kill counts when the killed child had written to the ledger (RunStarted, or for a
    resuming child at least its RunResumed): one that died while still setting up its
    resumption is recorded too, but crashed no live work.
    """
    kills: list[PostMortem] = []
    child = Child(workdir, home, "start", 0)
    assert child.wait_ready(), f"the first child never started the run:\n{child.stderr()}"
    run_id = (workdir / "run_id").read_text()
    seen = 0  # ledger length at the last post-mortem
    while sum(pm.counted for pm in kills) < MIN_KILLS:
        time.sleep(rng.uniform(*KILL_DELAY))
        if child.proc.poll() is not None:
            break  # it finished the run before the kill
        os.kill(child.proc.pid, signal.SIGKILL)
        code = child.finish()
        if code != -signal.SIGKILL:  # it exited on its own just before the kill
            assert code == 0, f"child {child.incarnation} exited {code}:\n{child.stderr()}"
            return run_id, kills
        pm = post_mortem(home, run_id, child.incarnation, seen)
        if pm.status != "running":  # killed while exiting after the run had ended
            assert pm.status == "succeeded", pm.status
            return run_id, kills
        kills.append(pm)
        seen = pm.events
        child = Child(workdir, home, "resume", child.incarnation + 1)
        assert child.wait_ready(), f"child {child.incarnation} died early:\n{child.stderr()}"
    code = child.finish(timeout=120)
    assert code == 0, f"the last child exited {code}:\n{child.stderr()}"
    return run_id, kills


@pytest.fixture
def reap() -> Iterator[None]:
    yield
    Child.reap_all()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("reap")
def test_sigkill_chaos_resumes_to_the_uncrashed_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    began = time.monotonic()
    monkeypatch.delenv("ORCHESTRATOR_LEDGER", raising=False)  # the ledgers under tmp_path
    monkeypatch.delenv("CHAOS_STARTS", raising=False)  # replay here must leave no marks
    rng = random.Random(SEED)
    ref_dir, chaos_dir = tmp_path / "reference", tmp_path / "chaos"
    ref_dir.mkdir()
    chaos_dir.mkdir()
    ref_home, home = ref_dir / "home", chaos_dir / "home"

    # The uncrashed reference runs beside the chaos run (separate home and side file).
    reference = Child(ref_dir, ref_home, "start", 0)
    run_id, kills = run_chaos(chaos_dir, home, rng)
    assert reference.finish(timeout=120) == 0, reference.stderr()
    ref_id = (ref_dir / "run_id").read_text()
    ref_state, ref_events = read_ledger(ref_home, ref_id)
    assert ref_state.status == "succeeded"

    counted = sum(pm.counted for pm in kills)
    assert counted >= MIN_KILLS, (
        f"only {counted} kills landed before the run finished; lengthen the plan"
    )
    final_incarnation = len(kills)

    # The run completed, with the uncrashed run's outputs, a whole chain, and replays.
    state, events = read_ledger(home, run_id)
    assert state.status == "succeeded", state.summary
    assert len(state.nodes) >= 50
    assert state.outputs() == ref_state.outputs()
    with Runtime(home=home) as rt:
        head = rt.verify(run_id).head_hash
        replayed = asyncio.run(rt.replay(run_id))
    assert replayed.ok, str(replayed.divergence)
    assert replayed.head_hash == head
    resumes = sum(e.kind == "RunResumed" for e in events)
    assert resumes == final_incarnation - (len(kills) - counted)

    # Every node succeeded exactly once; every attempt was dispatched exactly once.
    succeeded = [e.node for e in events if isinstance(e, NodeSucceeded)]
    assert sorted(succeeded) == sorted(state.nodes)
    dispatched = [(e.node, e.attempt) for e in events if isinstance(e, NodeDispatched)]
    assert len(dispatched) == len(set(dispatched))
    # Retries are decided by attempt numbers alone, so crashes change none of them.
    ref_dispatched = [(e.node, e.attempt) for e in ref_events if isinstance(e, NodeDispatched)]
    assert sorted(dispatched) == sorted(ref_dispatched)
    assert any(attempt > 1 for _, attempt in dispatched)

    # No completed node ran twice: once succeeded in the ledger at some kill, no later
    # process started its body again.
    done_by: dict[str, int] = {}
    for pm in kills:
        for node in pm.succeeded:
            done_by.setdefault(node, pm.killed)
    starts = start_lines(chaos_dir / "starts.log")
    reran = [(n, a, i) for n, a, i in starts if n in done_by and i > done_by[n]]
    assert not reran, f"completed nodes started again: {reran[:10]}"
    assert {i for _, _, i in starts} <= set(range(final_incarnation + 1))

    # No journaled effect was performed again. The ledger names, for each key, the
    # process whose performance was journaled (append_line returns its incarnation).
    journal: dict[str, EffectRecorded] = {}
    for e in events:
        if isinstance(e, EffectRecorded):
            assert e.key not in journal, f"effect {e.key} journaled twice"
            journal[e.key] = e
    lines = side_lines(chaos_dir / "side.jsonl")
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_key[line["key"]].append(line)
    appends = {k: e for k, e in journal.items() if e.effect == "tool"}
    assert set(by_key) == set(appends), "side file and ledger disagree on which effects ran"
    journaled_by: dict[str, int] = {}
    for pm in kills:
        for key in pm.journaled:
            journaled_by.setdefault(key, pm.killed)
    again = []
    for key, performed in by_key.items():
        recorded = appends[key]
        owner = recorded.response["ok"]["incarnation"]
        payload = recorded.request["args"][1]
        incs = sorted(p["incarnation"] for p in performed)
        assert all(p["payload"] == payload for p in performed), key
        assert incs.count(owner) == 1, f"{key}: performed {incs}, journaled from {owner}"
        assert incs[-1] == owner, f"{key} journaled from {owner}, performed again by {incs}"
        if key in journaled_by:
            assert incs[-1] <= journaled_by[key], f"{key} performed after it was journaled"
        if len(incs) > 1:
            again.append((key, incs))

    # Reference sanity: without crashes every effect ran exactly once.
    ref_lines = side_lines(ref_dir / "side.jsonl")
    assert len({line["key"] for line in ref_lines}) == len(ref_lines) == len(appends)

    elapsed = time.monotonic() - began
    print(
        f"\nchaos: {counted} kills of live work ({len(kills) - counted} more during a "
        f"resume's setup) over {final_incarnation + 1} processes, "
        f"{len(events)} events, {len(lines)} side-file lines for {len(appends)} effects, "
        f"{len(again)} effect(s) performed again under the same key after a kill "
        f"{again[:5]}, {len(starts)} body starts, {elapsed:.1f}s"
    )


def test_a_run_is_registered_only_together_with_its_first_event(tmp_path: Path) -> None:
    # Registering a run and committing its RunStarted are one transaction: when the
    # write fails, no run is left behind whose every fold would raise.
    from orchestrator.errors import LedgerConflict
    from orchestrator.ledger.store import StoredEvent

    run_id = "20260101-000000-dead00"
    clash = [StoredEvent(0, "RunStarted", b"{}", "0" * 64)] * 2  # the same seq twice
    with Runtime(home=tmp_path / "home") as rt:
        with pytest.raises(LedgerConflict):
            rt.store.create_run(run_id, "chaos", "2026-01-01T00:00:00.000000Z", clash)
        with pytest.raises(RunNotFound):
            rt.state(run_id)
        with pytest.raises(RunNotFound):
            asyncio.run(rt.resume(run_id))
        assert rt.store.runs() == []
