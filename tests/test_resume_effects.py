"""SIGKILL a node after it journaled sandbox commands and a host tool: the resume restores
its saved workspace (which gc keeps meanwhile) and serves the journal, so the tool is not
performed again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.checkpoint import WorkspaceRef
from orchestrator.ledger.events import EffectRecorded, NodeResumed, WorkspaceSaved, decode
from orchestrator.ledger.state import NodeState
from orchestrator.runtime.resumption import resume_point
from tests.backends import needs
from tests.conftest import cli
from tests.crashing import PLANS, sigkill, spawn_run, wait_until


@needs("bwrap")
@pytest.mark.timeout(180)
def test_a_resumed_node_does_not_perform_its_journaled_tool_again(
    home: Path, tmp_path: Path
) -> None:
    side, release = tmp_path / "side.jsonl", tmp_path / "release"
    proc = spawn_run(
        home,
        f"{PLANS / 'effects.py'}:plan",
        f"side={side}",
        f"release={release}",
        env={"ORCHESTRATOR_SANDBOX": "bwrap"},
    )
    # killed inside `hold`: exec, tool, exec journaled, the workspace saved before `hold`
    state = wait_until(home, lambda s: len(s.nodes["work"].journal) == 3, timeout=60)
    wait_until(home, lambda s: s.nodes["work"].saved[0] == 3, timeout=30)
    sigkill(proc)
    release.touch()
    # no checkpoint names the saved workspace; gc must keep it all the same
    collected = cli(home, "gc")
    assert collected.returncode == 0, collected.stderr
    with Runtime(home=home, sandbox="bwrap") as rt:
        final = asyncio.run(rt.resume(state.run_id))
        events = [decode(r.body) for r in rt.store.read(state.run_id)]
        replayed = asyncio.run(rt.replay(state.run_id))
    assert final.status == "succeeded", final.nodes["work"].error
    # the tool ran once; the file holds both lines once, from the restored workspace
    assert [json.loads(line)["key"] for line in side.read_text().splitlines()] == [
        f"{state.run_id}/work/1/1"
    ]
    assert final.nodes["work"].outputs == {"text": "one\ntwo\n", "count": 1}
    saved = [e for e in events if isinstance(e, WorkspaceSaved)]
    resumed = [e for e in events if isinstance(e, NodeResumed)]
    assert [e.index for e in saved][:2] == [1, 3]  # before the tool, before `hold`
    assert [(e.from_index, e.snapshot) for e in resumed] == [(3, saved[1].snapshot)]
    assert replayed.ok, str(replayed.divergence)


def journal_of(*kinds: str) -> list[EffectRecorded]:
    return [
        EffectRecorded(
            seq=i,
            ts="",
            node="n",
            attempt=1,
            index=i,
            effect=kind,
            key=f"r/n/1/{i}",
            request={},
            request_digest="",
            response={"ok": None},
        )
        for i, kind in enumerate(kinds)
    ]


def test_the_resume_point_serves_every_effect_up_to_the_next_workspace_change() -> None:
    ns = NodeState("n", "n", status="running", attempt=1)
    ns.journal = journal_of("tool", "exec", "read", "tool", "llm", "exec", "sleep")
    # never saved: the initial workspace matches up to the first command
    assert resume_point(ns, None) == (1, None)
    ns.saved = (3, "s3")  # saved before the second tool: served through the model call
    assert resume_point(ns, None) == (5, "s3")
    # a later checkpoint snapshot of the same attempt wins; one of another attempt not
    ns.saved = (1, "s1")
    assert resume_point(ns, WorkspaceRef(attempt=1, snapshot="c6", journal_index=6)) == (7, "c6")
    assert resume_point(ns, WorkspaceRef(attempt=2, snapshot="c6", journal_index=6)) == (1, "s1")
