"""The orchestrator's home and keys stay out of every workspace; workspaces stay in roots.

The README's own example, ``--input repo=.``, overlays the directory that holds
``./.orchestrator``: a node must not see the ledger, the objects or the keys there, by
any path, on either isolating backend, nor may a snapshot of its workspace hold them. A
workspace path comes from data (a run input, an upstream node's output), so it is checked
at dispatch against the run's allowed roots; ``/etc`` is refused with one paragraph that
names the node and the input, and nothing runs.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Runtime, node
from orchestrator.errors import ConfigError, WorkspaceRefused
from orchestrator.ledger.events import SandboxMetered, decode
from orchestrator.sandbox.roots import WorkspacePolicy, check_roots
from orchestrator.sandbox.snapshot.manifest import load_manifest
from orchestrator.sandbox.snapshot.scan import snapshot
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.sandbox.workspace import OverlayWorkspace
from orchestrator.storage.localdir import LocalDirStore
from tests.backends import backends, needs
from tests.conftest import PLANS, cli

BACKENDS = backends()

# Everything a node could try from inside its workspace to reach the home.
LOOK = r"""
import json, os, sys
out = {"listing": sorted(os.listdir(".")), "read": {}, "mounts": "", "found": []}
for path in (".orchestrator/ledger.db", ".orchestrator/objects", "home-link/ledger.db",
             "/workspace/.orchestrator/ledger.db"):
    try:
        with open(path, "rb") as f:
            out["read"][path] = f.read(16).decode("latin-1")
    except OSError as exc:
        out["read"][path] = type(exc).__name__
with open("/proc/self/mounts") as f:
    out["mounts"] = f.read()
for d, dirs, files in os.walk("/", onerror=lambda e: None):
    if d.startswith(("/proc", "/sys", "/usr")):
        dirs[:] = []
        continue
    out["found"] += [os.path.join(d, n) for n in files if n.endswith((".key", "ledger.db"))]
print(json.dumps(out))
"""


class RepoIn(BaseModel):
    repo: str


class Looked(BaseModel):
    report: str


@node("look", workspace="repo", timeout=120)
async def look(ctx: NodeContext, inputs: RepoIn) -> Looked:
    result = await ctx.exec(["python3", "-c", LOOK], check=True)
    return Looked(report=result.stdout)


def look_plan() -> Plan:
    plan = Plan("look", inputs=RepoIn)
    plan.add(look, repo=plan.input("repo"))
    return plan


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_home_under_a_repo_workspace_is_invisible(
    backend: str, tmp_path: Path, key_dir: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("readme\n")
    home = repo / ".orchestrator"  # the README's layout: the home inside the repository
    (repo / "home-link").symlink_to(".orchestrator")
    with Runtime(home=home, sandbox=backend) as rt:
        state = await rt.start(look_plan(), {"repo": str(repo)})
    assert state.status == "succeeded", state.nodes["look"].error
    assert (home / "ledger.db").read_bytes().startswith(b"SQLite format 3")
    assert list((key_dir / "runs").glob("*.key"))  # the run's key exists, elsewhere
    seen = json.loads(state.nodes["look"].outputs["report"])  # type: ignore[index]
    assert seen["listing"] == ["README.md", "home-link"]
    assert set(seen["read"].values()) <= {"FileNotFoundError"}, seen["read"]
    # No mount shows the home (an overlay's options may name its layers' host paths,
    # which are no way in: nothing outside the workspace is mounted).
    points = [line.split()[1] for line in seen["mounts"].splitlines()]
    assert not [p for p in points if ".orchestrator" in p or p.startswith(str(home))]
    assert seen["found"] == []


def test_an_overlay_and_a_copy_leave_the_home_out_and_so_do_snapshots(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.py").write_text("a\n")
    home = repo / "src" / ".orchestrator"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "run.key").write_text("private")
    (home / "ledger.db").write_bytes(b"SQLite format 3\0")
    elsewhere = tmp_path / "bound"  # a second path to the home: a bind mount
    elsewhere.mkdir()
    store = ChunkStore(LocalDirStore(tmp_path / "objects"))
    for mode in ("overlay", "copy"):
        ws = OverlayWorkspace(repo, tmp_path / mode, mode=mode, hidden=[home])  # type: ignore[arg-type]
        with ws:
            assert sorted(os.listdir(ws.merged / "src")) == ["a.py"]
            snap, _ = snapshot(ws.merged, store)
            paths = [e.path for e in load_manifest(store, snap.id).entries]
            assert paths and not [p for p in paths if ".orchestrator" in p], paths
        ws.destroy()
    # By identity: a copy does not take the home in under another name either.
    os.symlink(home, repo / "alias")  # copied as a link, never followed
    (repo / "again").mkdir()
    os.system(f"mount --bind {home} {repo / 'again'}")
    try:
        ws = OverlayWorkspace(repo, tmp_path / "copy2", mode="copy", hidden=[home])
        with ws:
            assert not (ws.merged / "again").exists()  # the bind mount of the home
            assert os.readlink(ws.merged / "alias") == str(home)
        ws.destroy()
    finally:
        os.system(f"umount {repo / 'again'}")
    assert elsewhere.is_dir()


# ---- keys ------------------------------------------------------------------------------------


def test_run_keys_live_in_the_private_key_directory(home: Path, key_dir: Path) -> None:
    made = cli(home, "run", f"{PLANS / 'basic.py'}:plan", "--input", "text=a b", "--json")
    assert made.returncode == 0, made.stderr
    run_id = json.loads(made.stdout)["run_id"]
    key = key_dir / "runs" / f"{run_id}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((key_dir / "runs").stat().st_mode) == 0o700
    assert not list(home.rglob("*.key"))


def test_a_key_left_in_an_old_home_moves_to_the_key_directory(home: Path, key_dir: Path) -> None:
    made = cli(home, "run", f"{PLANS / 'basic.py'}:plan", "--input", "text=a b", "--json")
    run_id = json.loads(made.stdout)["run_id"]
    legacy = home / "keys" / "runs"
    legacy.mkdir(parents=True)
    for suffix in (".key", ".pub"):
        (key_dir / "runs" / f"{run_id}{suffix}").rename(legacy / f"{run_id}{suffix}")
    checked = cli(home, "checkpoints", "verify", run_id)
    assert checked.returncode == 0, checked.stderr
    assert (key_dir / "runs" / f"{run_id}.pub").exists()
    assert not list(legacy.iterdir())


# ---- allowed roots ---------------------------------------------------------------------------


class Out(BaseModel):
    repo: str


@node("pick", timeout=30)
async def pick(ctx: NodeContext, inputs: RepoIn) -> Out:
    return Out(repo=inputs.repo)


@node("read-shadow", workspace="repo", timeout=60)
async def read_shadow(ctx: NodeContext, inputs: Out) -> Looked:
    result = await ctx.exec(["cat", "shadow"])
    return Looked(report=result.stdout)


def upstream_plan() -> Plan:
    plan = Plan("upstream-etc", inputs=RepoIn)
    picked = plan.add(pick, repo=plan.input("repo"))
    plan.add(read_shadow, repo=picked.out.repo)
    return plan


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_upstream_node_cannot_point_a_workspace_at_etc(
    backend: str, home: Path, tmp_path: Path
) -> None:
    with Runtime(home=home, sandbox=backend) as rt:
        state = await rt.start(upstream_plan(), {"repo": "/etc"})
        recorded = [decode(r.body) for r in rt.store.read(state.run_id)]
        replayed = await rt.replay(state.run_id, upstream_plan())
    assert state.status == "failed"
    failed = state.nodes["read-shadow"]
    assert failed.error is not None and failed.error.type == "WorkspaceRefused"
    message = failed.error.message
    assert "node read-shadow" in message and "'repo'" in message and "/etc" in message
    assert "\n" not in message
    assert failed.attempt == 1  # not retried
    assert not [e for e in recorded if isinstance(e, SandboxMetered)]  # no sandbox ran
    assert replayed.ok, replayed.divergence


def test_a_symlink_inside_a_root_does_not_lead_out_of_it(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "etc").symlink_to("/etc")
    (root / "sub").mkdir()
    home, keys = tmp_path / "home", tmp_path / "keys"
    policy = WorkspacePolicy([root], home, keys)
    assert policy.check("n", "repo", str(root / "sub")) == (root / "sub").resolve()
    with pytest.raises(WorkspaceRefused, match=r"resolved: /etc\).*system directory /etc"):
        policy.check("n", "repo", str(root / "etc"))
    with pytest.raises(WorkspaceRefused, match="outside the run's allowed workspace roots"):
        policy.check("n", "repo", str(tmp_path))
    with pytest.raises(WorkspaceRefused, match="orchestrator's home"):
        WorkspacePolicy([tmp_path], home, keys).check("n", "repo", str(home / "objects"))
    with pytest.raises(WorkspaceRefused, match="key directory"):
        WorkspacePolicy([tmp_path], home, keys).check("n", "repo", str(keys))
    for bad in ("/", "/etc", "/usr/lib", str(home)):
        with pytest.raises(ConfigError, match="refused"):
            check_roots([bad], home, keys)


def test_the_cli_refuses_etc_and_runs_nothing(home: Path, tmp_path: Path) -> None:
    plan_file = tmp_path / "shadow.py"
    plan_file.write_text(
        "from pydantic import BaseModel\n"
        "from orchestrator import Plan, node\n"
        "class In(BaseModel):\n    repo: str\n"
        "class Out(BaseModel):\n    text: str\n"
        "@node('peek', workspace='repo', timeout=60)\n"
        "async def peek(ctx, inputs: In) -> Out:\n"
        "    return Out(text=(await ctx.exec(['cat', 'shadow'])).stdout)\n"
        "plan = Plan('shadow', inputs=In)\n"
        "plan.add(peek, repo=plan.input('repo'))\n"
    )
    ran = cli(home, "run", f"{plan_file}:plan", "--input", "repo=/etc", "--json", "-q")
    assert ran.returncode != 0
    state = json.loads(ran.stdout)
    assert state["nodes"]["peek"]["error"].startswith("WorkspaceRefused: node peek was not")
    assert "Traceback" not in ran.stderr
    with Runtime(home=home) as rt:
        recorded = [decode(r.body) for r in rt.store.read(state["run_id"])]
        config = rt.state(state["run_id"]).config
    assert not [e for e in recorded if isinstance(e, SandboxMetered)]
    assert config["workspace_roots"] == [str(tmp_path.resolve())]  # recorded for resume
    bad_root = cli(home, "run", f"{plan_file}:plan", "-i", "repo=.", "--workspace-root", "/")
    assert bad_root.returncode == 1
    assert "workspace root '/' is refused" in " ".join(bad_root.stderr.split())


@needs("bwrap")
def test_sandbox_exec_never_shows_the_home_nor_takes_a_directory_over(
    home: Path, tmp_path: Path
) -> None:
    home.mkdir()
    refused = cli(home, "sandbox", "exec", "--backend", "bwrap", "--workspace", ".", "--", "ls")
    assert refused.returncode == 1
    assert "orchestrator's home" in " ".join(refused.stderr.split())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "file.txt").write_text("x")
    ran = cli(home, "sandbox", "exec", "--backend", "bwrap", "--workspace", str(mine), "--", "ls")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "file.txt\n"
    assert (mine / "file.txt").stat().st_uid == os.geteuid()  # owners kept
