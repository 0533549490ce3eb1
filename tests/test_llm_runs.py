"""Runs that call real vendor SDKs against loopback peers: what the ledger and the budget
book record, that API keys never reach anything the Orchestrator writes or prints, and
that a call journaled before a crash is never made again (on resume or replay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator import RunConfig, Runtime
from orchestrator.budget import Prices
from orchestrator.ledger.events import EffectRecorded, NodeResumed, decode
from tests.conftest import PLANS, cli
from tests.crashing import sigkill, wait_until
from tests.llm_peers import Peer
from tests.plans.gated import asking_plan

GATED = PLANS / "gated.py"
KEYS = {
    "anthropic": ("ANTHROPIC_API_KEY", "sk-ant-api03-LEAKCHECK-" + "k" * 40),
    "openai": ("OPENAI_API_KEY", "sk-proj-LEAKCHECK-" + "q" * 40),
}
MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4o-mini"}
PROMPTS = ["say hi, please", "and once more"]


def peer_for(wire: str, request: pytest.FixtureRequest) -> Peer:
    peer: Peer = request.getfixturevalue(f"{wire}_peer")
    return peer


def spec_for(wire: str, peer: Peer) -> str:
    return f"{wire}@{peer.base_url}"  # the peer's base_url already ends in /v1 for openai


def key_was_sent(peer: Peer, key: str) -> bool:
    # both SDKs (anthropic 2.x, openai) send the key as a bearer token
    return all(r.headers.get("authorization") == f"Bearer {key}" for r in peer.requests)


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


# ---- 9. both vendors: outputs, usage, spend; the key stays out of everything ----------------


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
async def test_vendor_calls_are_metered_and_the_key_stays_out(
    wire: str, home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, key = KEYS[wire]
    monkeypatch.setenv(variable, key)
    peer = peer_for(wire, request)
    peer.text, peer.input_tokens, peer.output_tokens = "the peer says hi", 23, 45
    model = MODELS[wire]
    config = RunConfig(llm=spec_for(wire, peer), model=model)
    rt = Runtime(home=home)
    try:
        state = await rt.start(asking_plan(2), {"prompts": PROMPTS}, config)
        assert state.status == "succeeded", state.summary
        run_id = state.run_id
        assert len(peer.requests) == 2 and key_was_sent(peer, key)
        for i in range(2):
            assert state.nodes[f"ask[{i}]"].outputs == {"text": "the peer says hi", "tokens": 68}
        # usage as the peer reported it; spend from the default price table
        price = Prices().for_model(model)
        each = (23 * price.input_per_mtok + 45 * price.output_per_mtok) / 1e6
        assert each > 0
        calls = [
            e
            for e in (decode(r.body) for r in rt.store.read(run_id))
            if isinstance(e, EffectRecorded) and e.effect == "llm"
        ]
        assert len(calls) == 2
        for call in calls:
            assert call.request["provider"] == wire and call.request["model"] == model
            assert call.usage == {"input_tokens": 23, "output_tokens": 45, "spend_usd": each}
        book = state.book
        assert book.tokens_by_model == {model: 136}
        assert book.total.tokens == 136
        assert book.total.spend_usd == pytest.approx(2 * each, rel=1e-12)
        assert book.nodes["ask[0]"].total.spend_usd == pytest.approx(each, rel=1e-12)
        receipt = state.receipts[-1].body
        assert receipt["tokens_by_model"] == {model: 136}
        assert receipt["totals"]["spend_usd"] == pytest.approx(2 * each, abs=1e-9)

        # a vendor error that echoes the key is recorded with the key cut out
        peer.fail(401, times=1, message=f"invalid api key {key}")
        failed = await rt.start(asking_plan(1), {"prompts": ["fail, please"]}, config)
        assert failed.status == "failed"
        error = failed.nodes["ask[0]"].error
        assert error is not None and "401" in error.message and "[redacted]" in error.message

        # the ledger (with its WAL, while the store is open), receipts, checkpoints, keys
        assert (home / "ledger.db-wal").stat().st_size > 0  # scanned with the rest
        assert files_holding(home, key.encode()) == []
        assert files_holding(home, key[-40:].encode()) == []
    finally:
        rt.close()
    assert files_holding(home, key.encode()) == []
    assert (home / "receipts" / f"{run_id}.jsonl").is_file()
    assert any((home / "objects").rglob("*"))
    env = {variable: key}
    for args in (
        ["ledger", run_id],
        ["ledger", "--json", run_id],
        ["ledger", failed.run_id],
        ["ledger", "--json", failed.run_id],
        ["status", "--once", run_id],
        ["status", "--json", run_id],
        ["status", "--json", failed.run_id],
        ["receipts", "--json", run_id],
        ["ls"],
    ):
        shown = cli(home, *args, env=env)
        assert shown.returncode == 0, (args, shown.stderr)
        assert key not in shown.stdout + shown.stderr, args
    assert model in cli(home, "ledger", "--json", run_id, env=env).stdout


# ---- 10. a call journaled before a SIGKILL is never made again -------------------------------


def spawn(home: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.cli", "--home", str(home), "run", "-q", *args]
    with open(home / "child.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **env})


def llm_calls(events: list[Any]) -> list[EffectRecorded]:
    return [e for e in events if isinstance(e, EffectRecorded) and e.effect == "llm"]


def test_resume_after_sigkill_does_not_call_the_model_again(
    home: Path, tmp_path: Path, anthropic_peer: Peer
) -> None:
    variable, key = KEYS["anthropic"]
    env = {variable: key}
    go = tmp_path / "go"
    prompt = "what is the answer?"
    proc = spawn(
        home,
        env,
        f"{GATED}:waiting",
        "--input",
        f"prompt={prompt}",
        "--input",
        f"go={go}",
        "--llm",
        spec_for("anthropic", anthropic_peer),
        "--model",
        "claude-haiku-4-5",
    )
    try:
        state = wait_until(home, lambda s: len(s.nodes["ask_then_wait"].journal) == 1)
    finally:
        sigkill(proc)  # the call is journaled; the node is still waiting for `go`
    run_id = state.run_id
    assert state.nodes["ask_then_wait"].status == "running"
    asked = [r for r in anthropic_peer.requests if r.path == "/v1/messages"]
    assert len(asked) == 1 and asked[0].body["messages"][0]["content"] == prompt

    go.touch()
    resumed = cli(home, "resume", "--json", run_id, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    outputs = json.loads(resumed.stdout)["nodes"]["ask_then_wait"]["outputs"]
    assert outputs == {"text": anthropic_peer.text, "tokens": 18}
    assert len(anthropic_peer.requests) == 1  # served from the journal, not asked again
    with Runtime(home=home) as rt:
        events = [decode(r.body) for r in rt.store.read(run_id)]
        final = rt.state(run_id)
    marks = [e for e in events if isinstance(e, NodeResumed)]
    assert [(m.node, m.from_index) for m in marks] == [("ask_then_wait", 1)]
    assert len(llm_calls(events)) == 1
    assert final.book.tokens_by_model == {"claude-haiku-4-5": 18}

    # replay re-runs the body against the journal: no request, and no key needed
    replayed = cli(home, "replay", run_id, env={variable: ""})
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay OK" in replayed.stdout
    assert len(anthropic_peer.requests) == 1
