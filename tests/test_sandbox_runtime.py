"""Sandboxes through the runtime: replay starts none; ``workspace="repo"`` is an overlay.

Runs use ``Runtime(home=..., sandbox=...)`` with real backends. Replay of a run whose nodes
used ``ctx.exec``/``read``/``write`` must serve every effect from the journal without a
sandbox, even when the requested backend could not start at all. A node working on a
repository sees its files, writes to a copy-on-write layer of its own and never to the
repository, and two parallel mapped nodes on the same repository do not see each other.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, node
from orchestrator.ledger.events import EffectRecorded, NodeDispatched, SandboxMetered, decode
from orchestrator.sandbox.disk import mounts_under
from orchestrator.sandbox.process import AgentSandbox
from tests.backends import backends, needs
from tests.plans.basic import words_plan

BACKENDS = backends()
NEEDS_BWRAP = needs("bwrap")

LIST = (
    "import json, os\n"
    "print(json.dumps(sorted(os.path.relpath(os.path.join(d, f))"
    " for d, _, fs in os.walk('.') for f in fs)))"
)


def events(rt: Runtime, run_id: str) -> list[object]:
    return [decode(r.body) for r in rt.store.read(run_id)]


def live_dirs(home: Path) -> list[str]:
    live = home / "sandbox" / "live"
    return sorted(os.listdir(live)) if live.is_dir() else []


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its content and mtime (ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def mounted_under(home: Path) -> list[Path]:
    """Every mount below ``home``: overlays and attempts' disks."""
    return mounts_under(home)


# ---- replay starts no sandbox -----------------------------------------------------------------


@NEEDS_BWRAP
async def test_replay_serves_sandbox_effects_from_the_journal_without_a_sandbox(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(home=home, sandbox="bwrap") as rt:
        state = await rt.start(words_plan(), {"text": "alpha beta"})
        recorded = events(rt, state.run_id)
    assert state.status == "succeeded", state.nodes
    assert state.nodes["join"].outputs == {"count": 2}

    # Every live attempt that touched its sandbox was metered, on the chosen backend.
    dispatched = {(e.node, e.attempt) for e in recorded if isinstance(e, NodeDispatched)}
    sandboxed = {
        (e.node, e.attempt)
        for e in recorded
        if isinstance(e, EffectRecorded) and e.effect in ("exec", "read", "write")
    }
    metered = [e for e in recorded if isinstance(e, SandboxMetered)]
    assert {(m.node, m.attempt) for m in metered} == sandboxed
    assert len(metered) == len(sandboxed) >= 3  # shout[0], shout[1], join
    assert ("split", 1) in dispatched - sandboxed  # no sandbox effect, no sandbox
    assert {m.backend for m in metered} == {"bwrap"}
    assert all(m.wall_s > 0 and m.vcpus > 0 for m in metered)
    assert live_dirs(home) == []

    # Replay asking for gVisor, with neither runsc nor bwrap findable and sandboxes
    # refusing to start: it must need none of them.
    started: list[str] = []

    async def refuse(self: AgentSandbox) -> None:
        started.append(self.id)
        raise AssertionError("replay started a sandbox")

    monkeypatch.setattr(AgentSandbox, "start", refuse)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with Runtime(home=home, sandbox="gvisor") as rt:
        report = await rt.replay(state.run_id, words_plan())
        assert report.ok, report.divergence
        assert report.events == len(recorded)
        assert report.head_hash == rt.store.read(state.run_id)[-1].hash
    assert started == []
    assert live_dirs(home) == []
    assert not (home / "sandbox" / "gvisor").exists()


# ---- workspace="repo": an overlay per attempt ----------------------------------------------


class RepoIn(BaseModel):
    repo: str


class Seen(BaseModel):
    before: str
    after: str
    files: list[str]


@node("edit-repo", effects={"fs"}, workspace="repo")
async def edit_repo(ctx: NodeContext, inputs: RepoIn) -> Seen:
    before = await ctx.read("README.md")
    await ctx.write("README.md", "rewritten by the node\n")
    await ctx.write("new/file.txt", "new\n")
    await ctx.exec(["sh", "-c", "rm src/a.txt && echo appended >> README.md"], check=True)
    listing = await ctx.exec(["python3", "-c", LIST], check=True)
    after = await ctx.read("README.md")
    await ctx.tool("upper-layer", upper_layer)
    return Seen(before=before, after=after, files=json.loads(listing.stdout))


def upper_layer(workspace: str) -> dict[str, object]:
    """What the attempt's upper layer (next to the merged view, on its disk) holds."""
    upper = Path(workspace).parent / "upper"
    whiteout = os.lstat(upper / "src" / "a.txt")
    return {
        "readme": (upper / "README.md").read_text(),
        "new": (upper / "new" / "file.txt").read_text(),
        "whiteout": [os.major(whiteout.st_rdev), os.minor(whiteout.st_rdev)],
        # At most its owner changed (given to the sandbox's unprivileged identity): a
        # metadata-only copy-up holds no data.
        "b_copied": (upper / "src" / "b.txt").exists()
        and "trusted.overlay.metacopy" not in os.listxattr(upper / "src" / "b.txt"),
        "on_its_disk": os.path.ismount(upper.parent),
    }


def make_repo(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("original readme\n")
    (root / "src" / "a.txt").write_text("A\n")
    (root / "src" / "b.txt").write_text("B\n")
    return root


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_repo_node_sees_the_repo_and_writes_only_to_its_own_layer(
    backend: str, home: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    original = tree(repo)
    plan = Plan("edit-repo", inputs=RepoIn)
    plan.add(edit_repo, repo=plan.input("repo"))
    with Runtime(home=home, sandbox=backend) as rt:
        state = await rt.start(plan, {"repo": str(repo)})
        recorded = events(rt, state.run_id)
        replayed = await rt.replay(state.run_id, plan)
    assert state.status == "succeeded", state.nodes["edit-repo"].error
    assert state.nodes["edit-repo"].outputs == {
        "before": "original readme\n",
        "after": "rewritten by the node\nappended\n",
        "files": ["README.md", "new/file.txt", "src/b.txt"],
    }
    # The repository itself is exactly as it was: content and timestamps.
    assert tree(repo) == original
    # The node's writes were in its attempt's upper layer on its own disk, the deletion
    # as a whiteout; untouched files are not copied.
    layer = [e for e in recorded if isinstance(e, EffectRecorded) and e.effect == "tool"]
    assert [e.response["ok"] for e in layer] == [
        {
            "readme": "rewritten by the node\nappended\n",
            "new": "new\n",
            "whiteout": [0, 0],
            "b_copied": False,
            "on_its_disk": True,
        }
    ]
    # Torn down after the run: no overlay or disk left mounted, no pool directory, and
    # the finished run's work directory is gone.
    assert mounted_under(home) == []
    assert not (home / "runs" / state.run_id).exists()
    assert live_dirs(home) == []
    assert [e.backend for e in recorded if isinstance(e, SandboxMetered)] == [backend]
    assert replayed.ok, replayed.divergence


class RepoNames(BaseModel):
    repo: str
    names: list[str]


class NamesIn(BaseModel):
    names: list[str]


class Names(BaseModel):
    names: list[str]


class Item(BaseModel):
    repo: str
    name: str


class Listing(BaseModel):
    name: str
    files: list[str]
    readme: str


MEETING: asyncio.Barrier | None = None


async def meet() -> str:
    """Both mapped nodes have written before either looks (the barrier spans them)."""
    assert MEETING is not None
    async with asyncio.timeout(30):
        await MEETING.wait()
    return "met"


@node("names")
async def names_node(ctx: NodeContext, inputs: NamesIn) -> Names:
    return Names(names=inputs.names)


@node("mark", effects={"fs"}, workspace="repo")
async def mark(ctx: NodeContext, inputs: Item) -> Listing:
    await ctx.write(f"{inputs.name}.txt", f"{inputs.name}\n")
    await ctx.exec(["sh", "-c", f"echo {inputs.name} >> README.md"], check=True)
    await ctx.tool("meet", meet)
    listing = await ctx.exec(["python3", "-c", LIST], check=True)
    readme = await ctx.read("README.md")
    return Listing(name=inputs.name, files=json.loads(listing.stdout), readme=readme)


@NEEDS_BWRAP
async def test_parallel_mapped_nodes_on_one_repo_do_not_see_each_other(
    home: Path, tmp_path: Path
) -> None:
    global MEETING
    MEETING = asyncio.Barrier(2)
    repo = make_repo(tmp_path / "repo")
    original = tree(repo)
    plan = Plan("parallel-overlays", inputs=RepoNames)
    listed = plan.add(names_node, names=plan.input("names"))
    plan.map(mark, over=listed.out.names, item="name", max_items=4, repo=plan.input("repo"))
    with Runtime(home=home, sandbox="bwrap") as rt:
        state = await rt.start(plan, {"repo": str(repo), "names": ["left", "right"]})
    assert state.status == "succeeded", {k: n.error for k, n in state.nodes.items()}
    outputs = {n.outputs["name"]: n.outputs for n in state.nodes.values() if n.base == "mark"}
    assert set(outputs) == {"left", "right"}
    for name, other in (("left", "right"), ("right", "left")):
        seen = outputs[name]
        assert seen["files"] == sorted(["README.md", f"{name}.txt", "src/a.txt", "src/b.txt"])
        assert f"{other}.txt" not in seen["files"]
        assert seen["readme"] == f"original readme\n{name}\n"
    assert tree(repo) == original
    assert mounted_under(home) == []
