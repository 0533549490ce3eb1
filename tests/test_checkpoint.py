"""Checkpoints: taken on the interval, at ctx.checkpoint, at the end; verified; tamper found."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, RunConfig, Runtime, node
from orchestrator.checkpoint import BACKOFF_CAP, read_manifest, retry_delay
from orchestrator.ledger.events import CheckpointFailed, CheckpointTaken, decode
from orchestrator.storage.objects import blob_key
from tests.backends import needs, require


class Nothing(BaseModel):
    pass


class Done(BaseModel):
    lines: int


@node("busy-writer", effects={"fs"})
async def busy_writer(ctx: NodeContext, inputs: Nothing) -> Done:
    for i in range(6):
        await ctx.exec(["sh", "-c", f"echo line {i} >> log.txt"], check=True)
        await asyncio.sleep(0.15)  # between effects: the periodic checkpoint may snapshot now
    await ctx.checkpoint("written")
    counted = await ctx.exec(["sh", "-c", "wc -l < log.txt"], check=True)
    return Done(lines=int(counted.stdout))


def busy_plan() -> Plan:
    plan = Plan("busy")
    plan.add(busy_writer)
    return plan


@pytest.fixture
def finished(home: Path) -> tuple[Runtime, str]:
    require("bwrap")
    rt = Runtime(home=home, sandbox="bwrap")
    config = RunConfig(checkpoint_interval=0.2)
    state = asyncio.run(rt.start(busy_plan(), config=config))
    assert state.status == "succeeded"
    assert state.nodes["busy-writer"].outputs == {"lines": 6}
    return rt, state.run_id


def taken(rt: Runtime, run_id: str) -> list[CheckpointTaken]:
    events = [decode(r.body) for r in rt.store.read(run_id)]
    return [e for e in events if isinstance(e, CheckpointTaken)]


def test_periodic_explicit_and_final_checkpoints_verify(finished: tuple[Runtime, str]) -> None:
    rt, run_id = finished
    cps = taken(rt, run_id)
    periodic = [c for c in cps if c.label == "periodic"]
    assert len(periodic) >= 3, "a checkpoint every 0.2 s during a ~1 s node"
    assert [c.label for c in cps if c.label != "periodic"] == ["written", "succeeded"]
    assert any(c.workspaces == 1 for c in periodic), "the live sandbox's workspace is in them"
    reports = rt.checkpoints(run_id)
    assert [r.key for r in reports] == [c.manifest for c in cps]
    assert all(r.ok for r in reports), [r.problem for r in reports]
    # Object storage alone holds the whole ledger: the segments chain from seq 0 to the
    # last checkpoint's cut, which is the ledger's head minus that CheckpointTaken itself.
    manifests = [r.manifest for r in reports if r.manifest is not None]
    assert manifests[0].segment.first == 0
    for before, after in itertools.pairwise(manifests):
        assert after.segment.first == before.seq + 1
    assert manifests[-1].seq == rt.store.head(run_id).seq - 1  # type: ignore[union-attr]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampering_is_named(finished: tuple[Runtime, str], home: Path) -> None:
    rt, run_id = finished
    objects = home / "objects"
    reports = rt.checkpoints(run_id)
    with_workspace = next(r for r in reports if r.manifest and r.manifest.workspaces)
    assert with_workspace.manifest is not None
    ref = next(iter(with_workspace.manifest.workspaces.values()))

    # 1. a workspace chunk
    snapshot = rt.chunks().get(ref.snapshot)
    chunk = next(d for e in json.loads(snapshot)["entries"] for d in e.get("chunks", []))
    _flip(objects / "chunks" / chunk[:2] / chunk)
    bad = [r for r in rt.checkpoints(run_id) if not r.ok]
    assert bad and all(chunk in (r.problem or "") for r in bad)
    assert with_workspace.key in [r.key for r in bad]

    # 2. a manifest
    target = reports[-1].key
    _flip(objects / target)
    bad = {r.key: r.problem for r in rt.checkpoints(run_id) if not r.ok}
    assert target in bad and target in (bad[target] or "")

    # 3. a ledger segment
    first = reports[0]
    assert first.manifest is not None
    segment = objects / blob_key(first.manifest.segment.digest)
    _flip(segment)
    bad = {r.key: r.problem for r in rt.checkpoints(run_id) if not r.ok}
    assert first.key in bad and first.manifest.segment.digest in (bad[first.key] or "")


def test_a_manifest_signed_by_another_key_or_run_is_refused(
    finished: tuple[Runtime, str], home: Path
) -> None:
    from orchestrator import signing
    from orchestrator.checkpoint import SignedManifest

    rt, run_id = finished
    key = rt.checkpoints(run_id)[0].key  # even the first: the run's key is known locally
    signed = read_manifest(rt.objects, key)
    forger = signing.generate()
    forged_manifest = signed.manifest.model_copy(update={"signer": forger.public})
    forged = SignedManifest(
        manifest=forged_manifest, signature=forger.sign(forged_manifest.canonical())
    )
    rt.objects.put(key, forged.model_dump_json().encode())
    problem = {r.key: r.problem for r in rt.checkpoints(run_id)}[key]
    assert problem is not None and "which is not a key trusted for run" in problem


def test_cli_lists_and_verifies(finished: tuple[Runtime, str], home: Path) -> None:
    from tests.conftest import cli

    rt, run_id = finished
    ok = cli(home, "checkpoints", "verify", run_id)
    assert ok.returncode == 0, ok.stderr
    assert "checkpoints OK" in ok.stdout
    listed = json.loads(cli(home, "checkpoints", run_id, "--json").stdout)
    assert [c["key"] for c in listed] == [r.key for r in rt.checkpoints(run_id)]
    last = home / "objects" / listed[-1]["key"]
    _flip(last)
    failed = cli(home, "checkpoints", "verify", run_id)
    assert failed.returncode == 1
    assert listed[-1]["key"] in " ".join(failed.stderr.split())


def test_a_manifest_from_another_run_is_refused(finished: tuple[Runtime, str], home: Path) -> None:
    rt, run_id = finished
    other = asyncio.run(rt.start(busy_plan(), config=RunConfig(checkpoint_interval=60)))
    stranger = rt.checkpoints(other.run_id)[0].key
    planted = f"runs/{run_id}/checkpoints/{999_999:012d}.json"
    rt.objects.put(planted, rt.objects.get(stranger))
    problem = {r.key: r.problem for r in rt.checkpoints(run_id)}[planted]
    assert problem is not None and planted in problem and other.run_id in problem


class StoreAt(BaseModel):
    path: str


@node("store-breaker", effects={"fs"})
async def store_breaker(ctx: NodeContext, inputs: StoreAt) -> Done:
    """Writes in its sandbox, then takes the object store away (a file where its
    directory was) and keeps working while the checkpoints fail."""
    await ctx.exec(["sh", "-c", "echo before >> log.txt"], check=True)
    await ctx.checkpoint("before")
    await ctx.tool("break", _break_store, inputs.path)
    for i in range(4):
        await ctx.exec(["sh", "-c", f"echo after {i} >> log.txt"], check=True)
        await asyncio.sleep(0.15)
    counted = await ctx.exec(["sh", "-c", "wc -l < log.txt"], check=True)
    return Done(lines=int(counted.stdout))


def _break_store(path: str) -> None:
    root = Path(path)
    root.rename(root.with_name("objects.away"))
    root.write_text("not a directory")


@needs("bwrap")
def test_a_store_that_fails_never_fails_the_run_and_sync_catches_up(
    home: Path, tmp_path: Path
) -> None:
    objects = home / "objects"
    rt = Runtime(home=home, sandbox="bwrap", objects=str(objects), store_grace=0.3)
    plan = Plan("breaker", inputs=StoreAt)
    plan.add(store_breaker, path=plan.input("path"))
    state = asyncio.run(
        rt.start(plan, {"path": str(objects)}, config=RunConfig(checkpoint_interval=0.1))
    )
    assert state.status == "succeeded" and state.nodes["store-breaker"].outputs == {"lines": 5}
    events = [decode(r.body) for r in rt.store.read(state.run_id)]
    failed = [e for e in events if isinstance(e, CheckpointFailed)]
    assert failed and state.unsynced == failed[-1]
    assert failed[-1].label == "succeeded", "the final checkpoint was retried, then given up"
    # Failures in a row back off: each waits longer than the one before, up to the cap.
    periodic = [f.retry_in for f in failed if f.label == "periodic"]
    assert periodic == sorted(periodic) and periodic[0] == 0.2

    objects.unlink()
    objects.with_name("objects.away").rename(objects)
    taken = asyncio.run(rt.sync_checkpoints(state.run_id))
    assert taken is not None and taken.label == "sync"
    assert asyncio.run(rt.sync_checkpoints(state.run_id)) is None, "nothing left to upload"
    rows = rt.store.read(state.run_id)
    reports = rt.checkpoints(state.run_id)
    assert all(r.ok for r in reports), [r.problem for r in reports]
    manifests = [r.manifest for r in reports if r.manifest is not None]
    for before, after in itertools.pairwise(manifests):
        assert after.segment.first == before.seq + 1
    assert manifests[-1].seq == rows[-1].seq - 1
    public = rt.signer_public(state.run_id)
    with Runtime(home=tmp_path / "elsewhere", objects=str(objects)) as fresh:
        assert fresh.restore_ledger(state.run_id, public) == len(rows) - 1
        assert fresh.store.read(state.run_id) == rows[:-1]
    rt.close()


def test_retry_delay_doubles_up_to_its_cap() -> None:
    assert [retry_delay(1.0, n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(60.0, 3) == 60.0, "a long interval is never stretched further"
    assert retry_delay(0.5, 10_000) == BACKOFF_CAP
