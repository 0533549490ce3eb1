"""Crash chaos: SIGKILL the process driving a plan 100+ times at random moments, resume,
compare with an uncrashed run.

The plan (``plans/chaos_plan.py``) has sandboxed shell work (bwrap), host tool calls that
append to a side file, model calls to a loopback model server that counts them, retries
and a gate the driver approves. A zygote (``plans/chaos_driver.py zygote``) forks one
child per incarnation, so a hundred kills cost a hundred forks rather than a hundred
interpreter starts; each child is SIGKILLed at a random moment after it began its work,
the ledger is read post mortem, and the next child resumes. At the end:

* the run succeeded, its outputs equal an uncrashed run's, its chain verifies and it
  replays byte for byte;
* no node that had succeeded by some kill started again in a later process;
* no journaled tool call or model call was performed again: each side-file line and each
  model request is attributed to the process that made it, and none came after the
  effect was journaled (an effect in flight at a kill may be performed again, under the
  same idempotency key); no tool or model key is journaled twice;
* every resume kept every journaled tool and model call (served from the journal, against
  the workspace restored to where it stood), and every resume makes progress: every
  ``PATIENT_EVERY``-th child is killed only after it journaled an effect no earlier
  process had, or finished a node, which it must within ``PROGRESS_BOUND_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from orchestrator import RunState, Runtime, signing
from orchestrator.errors import RunNotFound
from orchestrator.ledger.events import (
    EffectRecorded,
    GateDecided,
    NodeDispatched,
    NodeResumed,
    NodeSucceeded,
    decode,
)
from orchestrator.runtime.context import SANDBOX_EFFECTS
from tests.backends import needs
from tests.llm_peers import Peer, serve

DRIVER = Path(__file__).parent / "plans" / "chaos_driver.py"
MIN_KILLS = 100
KILL_DELAY = (0.05, 0.6)  # seconds a child works (after it began) before it is killed
PATIENT_EVERY = 5  # every so many resumes, the child is killed only once it made progress
PROGRESS_BOUND_S = 60.0  # ... which it must within this long (a loaded machine is slow)
WAIT_S = 120.0  # bound on any single wait for a child
SEED = int(os.environ.get("CHAOS_SEED", "20240611"))  # vary it to explore
UNREPEATABLE = ("tool", "llm")


class Lines:
    """A child's stdout, read by a thread so every wait on it has a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.strip())
        self._queue.put(None)

    def next(self, timeout: float = WAIT_S) -> list[str]:
        line = self._queue.get(timeout=timeout)
        if line is None:
            raise EOFError("the process closed its output")
        return line.split()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Zygote:
    """The forking driver: one child per incarnation; numbers count from 0."""

    def __init__(self, workdir: Path, home: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self._err = (workdir / "zygote.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(home), str(workdir / "run_id"), "zygote"],
            env={**env, "CHAOS_ERR_DIR": str(workdir)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout)
        self.child = 0  # pid of the current child, 0 once it is reaped
        assert self.lines.next() == ["zygote"], self.stderr("zygote")

    def spawn(self, mode: str, number: int) -> tuple[int, bool]:
        """Fork incarnation ``number``; its pid, and whether it began (False: it exited)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mode} {number}\n")
        self.proc.stdin.flush()
        pid, began = 0, False
        while not pid or not began:
            word, *rest = self.lines.next()
            if word == "pid":
                pid = self.child = int(rest[1])
            elif word == "ready":
                began = True
            elif word == "exit":
                self.child = 0
                return pid, False
        return pid, True

    def reap(self, timeout: float = WAIT_S) -> int:
        """Wait for the current child's exit; its exit code (-9: SIGKILLed)."""
        while True:
            word, *rest = self.lines.next(timeout)
            if word == "exit":
                self.child = 0
                return int(rest[1])

    def close(self) -> None:
        if self.child:  # a failed test left it running: it would outlive the zygote
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGKILL)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
            self.lines.join(10)  # the output's end follows the exit
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def stderr(self, number: int | str) -> str:
        path = self.workdir / f"child-{number}.err"
        if number == "zygote":
            path = self.workdir / "zygote.err"
        return path.read_text()[-3000:] if path.exists() else ""


@dataclass
class PostMortem:
    """What the ledger held right after a kill."""

    killed: int  # incarnation of the killed child
    counted: bool  # the child had written to the ledger before it died
    status: str
    succeeded: set[str]
    journaled: set[str]
    lengths: dict[tuple[str, int], int]  # journal length of every running attempt
    requests: int  # model requests the server had seen
    events: int


def read_ledger(home: Path, run_id: str) -> tuple[RunState, list[Any]]:
    with Runtime(home=home) as rt:
        report = rt.verify(run_id)
        assert report.ok, f"ledger chain broken: {report}"
        rows = rt.rows(run_id)
    events = [decode(r.body) for r in rows]
    return RunState.fold(events), events


def post_mortem(home: Path, run_id: str, killed: int, before: int, peer: Peer) -> PostMortem:
    requests = len(peer.requests)
    state, events = read_ledger(home, run_id)
    return PostMortem(
        killed=killed,
        counted=len(events) > before,
        status=state.status,
        succeeded={k for k, ns in state.nodes.items() if ns.status == "succeeded"},
        journaled={e.key for e in events if isinstance(e, EffectRecorded)},
        lengths={
            (k, ns.attempt): len(ns.journal)
            for k, ns in state.nodes.items()
            if ns.status == "running"
        },
        requests=requests,
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


def prompt_of(body: Any) -> str:
    return str(body["messages"][-1]["content"])


def child_env(workdir: Path, peer: Peer, approver: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ORCHESTRATOR_") or k in ("ORCHESTRATOR_TRUST", "ORCHESTRATOR_KEYS")
    }
    env.update(
        CHAOS_SIDE=str(workdir / "side.jsonl"),
        CHAOS_STARTS=str(workdir / "starts.log"),
        CHAOS_LLM=peer.base_url,
        CHAOS_APPROVER=str(approver),
        OPENAI_API_KEY="sk-chaos",
    )
    return env


def await_progress(home: Path, run_id: str, last: PostMortem | None, seen: int) -> float | None:
    """Seconds until the ledger holds an effect not journaled at the last kill, or a
    node's success (or the run's end); None if that takes over PROGRESS_BOUND_S."""
    began = time.monotonic()
    journaled = last.journaled if last is not None else set()
    with Runtime(home=home) as rt:
        while time.monotonic() - began < PROGRESS_BOUND_S:
            for row in rt.store.read(run_id, seen - 1):
                if row.kind in ("NodeSucceeded", "RunCompleted", "RunParked"):
                    return time.monotonic() - began
                if row.kind == "EffectRecorded":
                    event = decode(row.body)
                    assert isinstance(event, EffectRecorded)
                    if event.key not in journaled:
                        return time.monotonic() - began
            time.sleep(0.05)
    return None


def run_chaos(
    zygote: Zygote, home: Path, rng: random.Random, peer: Peer, waits: list[float]
) -> tuple[str, list[PostMortem]]:
    """Start, then kill and resume until MIN_KILLS kills landed; let the last child finish.

    A kill counts when the killed child had written to the ledger (RunStarted, or for a
    resuming child at least its RunResumed): one that died while still setting up its
    resumption is recorded too, but crashed no live work.
    """
    kills: list[PostMortem] = []
    number = 0
    pid, began = zygote.spawn("start", number)
    assert began, f"the first child never started the run:\n{zygote.stderr(number)}"
    run_id = (zygote.workdir / "run_id").read_text()
    seen = 0  # ledger length at the last post-mortem
    while sum(pm.counted for pm in kills) < MIN_KILLS:
        if number % PATIENT_EVERY == 0:
            # Kills faster than a resume's cold start (a sandbox backend probe, a model
            # client) leave nothing to make progress with; given time, every resume must.
            took = await_progress(home, run_id, kills[-1] if kills else None, seen)
            assert took is not None, f"resume {number} made no progress in {PROGRESS_BOUND_S}s"
            waits.append(took)
        time.sleep(rng.uniform(*KILL_DELAY))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        code = zygote.reap()
        if code != -signal.SIGKILL:  # it exited on its own just before the kill
            assert code == 0, f"child {number} exited {code}:\n{zygote.stderr(number)}"
            return run_id, kills
        pm = post_mortem(home, run_id, number, seen, peer)
        if pm.status == "succeeded":  # killed while exiting after the run had ended
            return run_id, kills
        assert pm.status in ("running", "parked"), pm.status
        kills.append(pm)
        seen = pm.events
        number += 1
        pid, began = zygote.spawn("resume", number)
        assert began, f"child {number} died early:\n{zygote.stderr(number)}"
    code = zygote.reap()
    assert code == 0, f"the last child exited {code}:\n{zygote.stderr(number)}"
    return run_id, kills


@pytest.fixture
def peers() -> Iterator[tuple[Peer, Peer]]:
    """Two loopback model servers: the chaos run's and the reference run's."""
    with contextlib.ExitStack() as stack:
        chaos = stack.enter_context(contextlib.contextmanager(serve)("openai"))
        reference = stack.enter_context(contextlib.contextmanager(serve)("openai"))
        yield chaos, reference


@pytest.mark.slow
@pytest.mark.timeout(600)
@needs("bwrap")
def test_sigkill_chaos_resumes_to_the_uncrashed_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peers: tuple[Peer, Peer]
) -> None:
    began = time.monotonic()
    monkeypatch.delenv("ORCHESTRATOR_LEDGER", raising=False)  # the ledgers under tmp_path
    monkeypatch.delenv("CHAOS_STARTS", raising=False)  # replay here must leave no marks
    rng = random.Random(SEED)
    waits: list[float] = []  # seconds patient resumes took to make progress
    peer, ref_peer = peers
    approver = tmp_path / "approver.key"
    signing.save(signing.generate(), approver)
    ref_dir, chaos_dir = tmp_path / "reference", tmp_path / "chaos"
    ref_dir.mkdir()
    chaos_dir.mkdir()
    ref_home, home = ref_dir / "home", chaos_dir / "home"

    # The uncrashed reference runs beside the chaos run (its own home, side file, server).
    reference = Zygote(ref_dir, ref_home, child_env(ref_dir, ref_peer, approver))
    chaos = Zygote(chaos_dir, home, child_env(chaos_dir, peer, approver))
    try:
        _, ref_began = reference.spawn("start", 0)
        assert ref_began, reference.stderr(0)
        run_id, kills = run_chaos(chaos, home, rng, peer, waits)
        assert reference.reap() == 0, reference.stderr(0)
    finally:
        chaos.close()
        reference.close()
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
    assert len(state.nodes) >= 30
    assert state.outputs() == ref_state.outputs()
    with Runtime(home=home) as rt:
        head = rt.verify(run_id).head_hash
        replayed = asyncio.run(rt.replay(run_id))
    assert replayed.ok, str(replayed.divergence)
    assert replayed.head_hash == head
    assert sum(isinstance(e, GateDecided) for e in events) == 1

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

    # Tool and model calls are journaled once per key; sandbox commands may be journaled
    # again (performed again against the workspace restored to where they began).
    journal: dict[str, EffectRecorded] = {}
    redone_commands = 0
    for e in events:
        if isinstance(e, EffectRecorded):
            if e.effect in UNREPEATABLE:
                assert e.key not in journal, f"{e.effect} {e.key} journaled twice"
            elif e.key in journal:
                redone_commands += e.effect in SANDBOX_EFFECTS
            journal[e.key] = e

    # Every resume served every journaled effect that is not a sandbox command.
    journals: dict[tuple[str, int], list[EffectRecorded]] = defaultdict(list)
    for e in events:
        if isinstance(e, NodeDispatched):
            journals[(e.node, e.attempt)] = []
        elif isinstance(e, EffectRecorded):
            journals[(e.node, e.attempt)].append(e)
        elif isinstance(e, NodeResumed):
            kept = journals[(e.node, e.attempt)]
            dropped = [x for x in kept[e.from_index :] if x.effect not in SANDBOX_EFFECTS]
            assert not [x for x in dropped if x.effect in UNREPEATABLE], (
                f"{e.node} resumed from #{e.from_index}, dropping {dropped[0].effect} "
                f"#{dropped[0].index}"
            )
            journals[(e.node, e.attempt)] = kept[: e.from_index]

    # No journaled tool call was performed again. The ledger names, for each key, the
    # process whose performance was journaled (append_line returns its incarnation).
    journaled_by: dict[str, int] = {}
    for pm in kills:
        for key in pm.journaled:
            journaled_by.setdefault(key, pm.killed)
    lines = side_lines(chaos_dir / "side.jsonl")
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_key[line["key"]].append(line)
    appends = {k: e for k, e in journal.items() if e.effect == "tool"}
    assert set(by_key) == set(appends), "side file and ledger disagree on which effects ran"
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

    # No journaled model call was sent again: a prompt (one per journal index) reaches the
    # server once, plus once more for each kill that found the call in flight.
    asked: dict[str, int] = defaultdict(int)
    for seen in peer.requests:
        if isinstance(seen.body, dict):  # else cut off by a kill before it was all sent
            asked[prompt_of(seen.body)] += 1
    calls = {k: e for k, e in journal.items() if e.effect == "llm"}
    assert sum(asked.values()) >= len(calls) > 0
    resent = []
    for key, e in calls.items():
        in_flight = sum(
            pm.lengths.get((e.node, e.attempt)) == e.index and key not in pm.journaled
            for pm in kills
        )
        sent = asked[prompt_of(e.request)]
        assert 1 <= sent <= 1 + in_flight, f"model call {key} sent {sent} times"
        if key in journaled_by:  # nothing reached the server for it after it was journaled
            at_kill = next(pm for pm in kills if pm.killed == journaled_by[key]).requests
            later = [
                s
                for s in peer.requests[at_kill:]
                if isinstance(s.body, dict) and prompt_of(s.body) == prompt_of(e.request)
            ]
            assert not later, f"model call {key} sent again after it was journaled"
        if sent > 1:
            resent.append(key)

    # Reference sanity: without crashes every effect ran exactly once.
    ref_lines = side_lines(ref_dir / "side.jsonl")
    assert len({line["key"] for line in ref_lines}) == len(ref_lines) == len(appends)
    assert len(ref_peer.requests) == len(calls)

    elapsed = time.monotonic() - began
    print(
        f"\nchaos: {counted} kills of live work ({len(kills) - counted} more during a "
        f"resume's setup) over {final_incarnation + 1} processes, {len(events)} events; "
        f"{len(appends)} tool calls ({len(lines)} performances, {len(again)} performed "
        f"again while in flight at a kill, 0 after being journaled), {len(calls)} model "
        f"calls ({sum(asked.values())} requests, {len(resent)} sent again while in flight), "
        f"{redone_commands} sandbox commands performed again against a restored workspace, "
        f"{len(starts)} body starts; patient resumes made progress within "
        f"{max(waits, default=0):.1f}s (median {sorted(waits)[len(waits) // 2]:.1f}s); "
        f"{elapsed:.1f}s"
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
