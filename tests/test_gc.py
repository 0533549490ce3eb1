"""Garbage collection of checkpoint storage: only what no checkpoint names ever goes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, RunConfig, Runtime, node
from orchestrator.checkpoint import Manifest
from orchestrator.errors import GcRefused
from orchestrator.gc import collect_garbage
from orchestrator.sandbox.snapshot.manifest import load_manifest
from orchestrator.storage.objects import blob_key, get_blob, put_blob
from tests.backends import require
from tests.conftest import cli
from tests.crashing import PLANS, spawn_run, wait_until

BASIC = PLANS / "basic.py"


class Nothing(BaseModel):
    pass


class Done(BaseModel):
    ok: bool


@node("writer", effects={"fs"})
async def writer(ctx: NodeContext, inputs: Nothing) -> Done:
    # Three workspace states; shared.txt is the same in all of them (one chunk, deduped).
    await ctx.exec(["sh", "-c", "echo shared > shared.txt; echo a-one > a.txt"], check=True)
    await ctx.checkpoint("one")
    await ctx.exec(["sh", "-c", "echo a-two > a.txt; echo b-two > b.txt"], check=True)
    await ctx.checkpoint("two")
    await ctx.exec(["sh", "-c", "echo a-three > a.txt; rm b.txt"], check=True)
    await ctx.checkpoint("three")
    return Done(ok=True)


def writer_plan() -> Plan:
    plan = Plan("gc-writer")
    plan.add(writer)
    return plan


@pytest.fixture
def finished(home: Path) -> tuple[Runtime, str]:
    # Only the explicit checkpoints and the final one: a periodic checkpoint cancelled at
    # the run's end can leave an orphan segment blob (garbage, which is fine) or even a
    # manifest the ledger never recorded (a broken chain), which would make these flaky.
    require("bwrap")
    rt = Runtime(home=home, sandbox="bwrap")
    state = asyncio.run(rt.start(writer_plan(), config=RunConfig(checkpoint_interval=60)))
    assert state.status == "succeeded", state.summary
    return rt, state.run_id


def manifests(rt: Runtime, run_id: str) -> dict[str, Manifest]:
    return {r.key: r.manifest for r in rt.checkpoints(run_id) if r.manifest is not None}


def refs(rt: Runtime, manifest: Manifest) -> set[str]:
    """Every object key one checkpoint manifest references."""
    chunks = rt.chunks()
    keys = {blob_key(manifest.segment.digest)}
    for ref in manifest.workspaces.values():
        keys.add(chunks.key(ref.snapshot))
        for entry in load_manifest(chunks, ref.snapshot).entries:
            keys.update(chunks.key(d) for d in entry.chunks)
    return keys


def content_keys(rt: Runtime) -> set[str]:
    return set(rt.objects.list("chunks/")) | set(rt.objects.list("blobs/"))


def all_verify(rt: Runtime, run_id: str) -> None:
    reports = rt.checkpoints(run_id)
    assert reports
    assert all(r.ok for r in reports), [r.problem for r in reports if not r.ok]


def plant(rt: Runtime) -> set[str]:
    """Unreferenced objects: two blobs and two chunks of random bytes."""
    chunks = rt.chunks()
    planted = {blob_key(put_blob(rt.objects, os.urandom(300))) for _ in range(2)}
    planted |= {chunks.key(chunks.put(os.urandom(300))) for _ in range(2)}
    return planted


def test_an_intact_store_loses_nothing(finished: tuple[Runtime, str]) -> None:
    rt, run_id = finished
    before = content_keys(rt)
    named = set().union(*(refs(rt, m) for m in manifests(rt, run_id).values()))
    assert named <= before
    report = collect_garbage(rt.objects, rt.chunks())
    assert report.deleted == 0 and report.garbage == []
    assert report.missing == 0
    assert report.manifests == len(manifests(rt, run_id)) == 4  # one, two, three, succeeded
    assert report.snapshots == 3
    assert content_keys(rt) == before
    all_verify(rt, run_id)


def test_planted_garbage_and_only_it_is_removed(finished: tuple[Runtime, str]) -> None:
    rt, run_id = finished
    before = content_keys(rt)
    planted = plant(rt)
    odd = "chunks/zz/not-a-digest"  # not a content address: never touched
    rt.objects.put(odd, b"x")
    report = collect_garbage(rt.objects, rt.chunks())
    assert set(report.garbage) == planted
    assert (report.deleted_chunks, report.deleted_blobs, report.ignored) == (2, 2, 1)
    assert report.deleted_bytes is not None and report.deleted_bytes >= 4 * 300
    assert content_keys(rt) == before | {odd}
    all_verify(rt, run_id)
    assert collect_garbage(rt.objects, rt.chunks()).deleted == 0  # idempotent


def test_dropping_a_checkpoint_frees_only_what_it_alone_named(
    finished: tuple[Runtime, str],
) -> None:
    rt, run_id = finished
    by_key = manifests(rt, run_id)
    by_label = {m.label: m for m in by_key.values()}
    two = by_label["two"].workspaces["writer"].snapshot
    # Retention drops every checkpoint holding workspace state two.
    dropped = {k for k, m in by_key.items() if two in {w.snapshot for w in m.workspaces.values()}}
    kept = set(by_key) - dropped
    assert kept and dropped
    freed = set().union(*(refs(rt, by_key[k]) for k in dropped))
    still = set().union(*(refs(rt, by_key[k]) for k in kept))
    chunks = rt.chunks()
    b_two = chunks.key(chunks.put(b"b-two\n"))  # already stored: put only names it
    shared = chunks.key(chunks.put(b"shared\n"))
    assert b_two in freed - still, "b.txt of state two exists only there"
    assert shared in freed & still, "shared.txt is deduplicated across states"

    for key in dropped:
        rt.objects.delete(key)
    report = collect_garbage(rt.objects, rt.chunks())
    assert set(report.garbage) == freed - still
    assert rt.objects.exists(shared) and not rt.objects.exists(b_two)
    assert chunks.key(two) in report.garbage
    # What is left is whole: every remaining checkpoint's segment, snapshot and chunks.
    for key in kept:
        manifest = by_key[key]
        get_blob(rt.objects, manifest.segment.digest)
        for ref in manifest.workspaces.values():
            for entry in load_manifest(chunks, ref.snapshot).entries:
                for digest in entry.chunks:
                    chunks.get(digest)
    # Verification reports nothing missing; only the manifest right after a dropped one
    # no longer chains to its predecessor (the chain does not know about retention).
    for r in rt.checkpoints(run_id):
        assert r.ok or "does not chain to the previous checkpoint" in (r.problem or ""), r.problem


def test_an_unreadable_manifest_stops_everything(finished: tuple[Runtime, str]) -> None:
    rt, run_id = finished
    planted = plant(rt)
    victim = sorted(manifests(rt, run_id))[1]
    rt.objects.put(victim, b'{"manifest": {"run_id": "trunc')
    before = content_keys(rt)
    with pytest.raises(GcRefused, match=victim):
        collect_garbage(rt.objects, rt.chunks())
    assert content_keys(rt) == before and planted <= before


def test_an_unloadable_snapshot_stops_everything(finished: tuple[Runtime, str]) -> None:
    rt, run_id = finished
    planted = plant(rt)
    one = next(m for m in manifests(rt, run_id).values() if m.label == "one")
    snapshot = one.workspaces["writer"].snapshot
    rt.objects.delete(rt.chunks().key(snapshot))
    before = content_keys(rt)
    with pytest.raises(GcRefused, match=snapshot):
        collect_garbage(rt.objects, rt.chunks())
    assert content_keys(rt) == before and planted <= before


def test_dry_run_reports_and_deletes_nothing(finished: tuple[Runtime, str], home: Path) -> None:
    rt, run_id = finished
    planted = plant(rt)
    before = content_keys(rt)
    report = collect_garbage(rt.objects, rt.chunks(), dry_run=True)
    assert report.dry_run and set(report.garbage) == planted and report.deleted == 4
    assert content_keys(rt) == before

    dry = cli(home, "gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    data = json.loads(dry.stdout)
    assert data["dry_run"] and set(data["garbage"]) == planted
    assert content_keys(rt) == before
    text = cli(home, "gc")
    assert text.returncode == 0, text.stderr
    assert "deleted 2 chunk(s) and 2 blob(s)" in " ".join(text.stdout.split())
    assert content_keys(rt) == before - planted
    all_verify(rt, run_id)


def test_cli_refuses_while_a_run_is_live(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = spawn_run(home, f"{BASIC}:waiting", f"path={gate}")
    try:
        state = wait_until(home, lambda s: s.nodes["wait-for-file"].status == "running")
        with Runtime(home=home) as rt:
            planted = plant(rt)
            refused = cli(home, "gc")
            assert refused.returncode != 0
            message = " ".join(refused.stderr.split())
            assert "refusing to collect garbage" in message and state.run_id in message
            assert f"pid {proc.pid}" in message
            assert "Traceback" not in refused.stderr
            assert cli(home, "gc", "--dry-run").returncode != 0
            assert planted <= content_keys(rt)
            gate.write_text("open")
            assert proc.wait(timeout=60) == 0
            done = cli(home, "gc", "--json")
            assert done.returncode == 0, done.stderr
            assert planted <= set(json.loads(done.stdout)["garbage"])
            assert not planted & content_keys(rt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
