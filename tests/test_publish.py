"""Publishing a branch: into the destination repository only, by setting its ref (a
checked-out branch is no obstacle), creating branches and never moving one this run did
not make. Real git repositories built in tmp; the runtime tests use real sandboxes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.agents import host
from orchestrator.errors import BranchRefused
from tests.backends import backends
from tests.conftest import cli
from tests.crashing import sigkill

ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Person",
    "GIT_AUTHOR_EMAIL": "person@example.invalid",
    "GIT_COMMITTER_NAME": "Person",
    "GIT_COMMITTER_EMAIL": "person@example.invalid",
}
CLI = [sys.executable, "-m", "orchestrator.cli"]
RUN = "20261203-170000-a1b2c3"
LATER_RUN = "20261204-090000-d4e5f6"


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env={**ENV, **(env or {})}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def origin(tmp_path: Path) -> Path:
    """A person's repository: one commit on main, main checked out."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "README").write_text("hello\n")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "start")
    return repo


def view(tmp_path: Path, repo: Path, branch: str, name: str = "view", when: str = "") -> Path:
    """What a node's sandbox sees: a clone of ``repo`` with one commit on ``branch``."""
    tree = tmp_path / name
    git(tmp_path, "clone", "--quiet", str(repo), str(tree))
    git(tree, "checkout", "--quiet", "-B", branch)
    (tree / "fix.txt").write_text("the change\n")
    git(tree, "add", "--all")
    dates = {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when} if when else {}
    git(tree, "commit", "--quiet", "-m", "the change", env=dates)
    return tree


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def test_branch_names_are_the_runs_own() -> None:
    name = "orchestrator/flaky-tests-test-x-0123abcd"
    assert host.branch_for_run(name, RUN) == f"{name}-a1b2c3"
    assert host.branch_for_run(name, LATER_RUN) != host.branch_for_run(name, RUN)
    odd = host.branch_for_run(name, "run/one")  # not a generated id: a digest of it
    assert odd.startswith(name + "-") and len(odd) == len(name) + 9
    subprocess.run(["git", "check-ref-format", "--branch", odd], check=True, capture_output=True)


def test_publishing_creates_the_branch_and_again_is_a_no_op(tmp_path: Path) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/esm-api", RUN)
    tree = view(tmp_path, repo, branch)
    sha = git(tree, "rev-parse", "HEAD")
    assert host.publish_branch(str(repo), branch, str(tree)) == sha
    assert git(repo, "rev-parse", branch) == sha
    before = refs(repo)
    # performed again (a resume after a kill during the publish): nothing moves
    assert host.publish_branch(str(repo), branch, str(tree)) == sha
    assert refs(repo) == before
    assert not (repo / ".git" / "FETCH_HEAD").exists()  # the fetch wrote no ref at all
    assert git(repo, "status", "--porcelain") == ""  # the person's checkout is untouched


def test_a_branch_checked_out_in_a_worktree_still_gets_published(tmp_path: Path) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/flaky-x-0123abcd", RUN)
    tree = view(tmp_path, repo, branch)
    sha = host.publish_branch(str(repo), branch, str(tree))
    # a person looks at it in a worktree; the run resumes and publishes again
    worktree = tmp_path / "look"
    git(repo, "worktree", "add", "--quiet", str(worktree), branch)
    assert host.publish_branch(str(repo), branch, str(tree)) == sha
    assert git(worktree, "status", "--porcelain") == ""
    # and a later hunt of the same test publishes its own branch beside it
    later = host.branch_for_run("orchestrator/flaky-x-0123abcd", LATER_RUN)
    other = view(tmp_path, repo, later, name="later", when="2026-02-02T00:00:00Z")
    later_sha = host.publish_branch(str(repo), later, str(other))
    assert git(repo, "rev-parse", later) == later_sha != sha
    assert git(repo, "rev-parse", branch) == sha  # the first hunt's branch is untouched


def test_the_target_branch_checked_out_in_the_main_worktree_is_fine(tmp_path: Path) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/esm-ui", RUN)
    git(repo, "checkout", "--quiet", "--orphan", branch)  # HEAD names it; it has no commit
    tree = view(tmp_path, repo, branch)
    sha = host.publish_branch(str(repo), branch, str(tree))
    assert git(repo, "rev-parse", branch) == sha


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "url"])
def test_someone_elses_branch_is_refused_and_left_untouched(tmp_path: Path, as_url: bool) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/flaky-x-0123abcd", RUN)
    git(repo, "branch", branch)  # a person's branch of that very name, at main
    theirs = git(repo, "rev-parse", branch)
    tree = view(tmp_path, repo, branch)
    before, objects = refs(repo), git(repo, "count-objects", "-v")
    dest = f"file://{repo}" if as_url else str(repo)
    with pytest.raises(BranchRefused) as refused:
        host.publish_branch(dest, branch, str(tree))
    message = str(refused.value)
    assert branch in message and theirs[:12] in message and "\n" not in message
    assert "left untouched" in message and "did not make" in message
    assert refs(repo) == before and git(repo, "rev-parse", branch) == theirs
    assert git(repo, "count-objects", "-v") == objects  # not even an object written


def test_a_fast_forward_of_someone_elses_branch_is_refused_too(tmp_path: Path) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/esm-core", RUN)
    tree = view(tmp_path, repo, branch)  # on top of main: a fast-forward of it
    git(repo, "branch", branch, "main")
    with pytest.raises(BranchRefused):
        host.publish_branch(str(repo), branch, str(tree))
    assert git(repo, "rev-parse", branch) == git(repo, "rev-parse", "main")


def test_a_retried_attempt_that_made_the_same_change_again_is_this_runs(tmp_path: Path) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/flaky-x-0123abcd", RUN)
    first = view(tmp_path, repo, branch, name="first", when="2026-03-01T10:00:00Z")
    sha = host.publish_branch(str(repo), branch, str(first))
    # the next attempt applies the same reviewed patch at another time: another commit id
    again = view(tmp_path, repo, branch, name="again", when="2026-03-01T10:05:00Z")
    assert git(again, "rev-parse", "HEAD") != sha
    assert host.publish_branch(str(repo), branch, str(again)) == sha
    assert git(repo, "rev-parse", branch) == sha
    # a different change on that name is not this run's
    (again / "fix.txt").write_text("something else\n")
    git(again, "commit", "--quiet", "-am", "the change")
    with pytest.raises(BranchRefused):
        host.publish_branch(str(repo), branch, str(again))


def test_publishing_to_a_url_creates_once_then_is_a_no_op(tmp_path: Path) -> None:
    repo = origin(tmp_path)
    branch = host.branch_for_run("orchestrator/flaky-x-0123abcd", RUN)
    tree = view(tmp_path, repo, branch)
    sha = git(tree, "rev-parse", "HEAD")
    assert host.publish_branch(f"file://{repo}", branch, str(tree)) == sha
    assert host.publish_branch(f"file://{repo}", branch, str(tree)) == sha
    assert git(repo, "rev-parse", branch) == sha


# ---- in real sandboxes, through the runtime -------------------------------------------------

PLAN = Path(__file__).parent / "plans" / "publishing.py"


def _lower_of(tmp_path: Path, repo: Path) -> Path:
    """The run's own clone, the lower its workspaces stack on (as intake makes it)."""
    lower = tmp_path / "work" / "lower"
    host.clone_checkout(str(repo), "main", str(lower), [])
    return lower


def _tree_of(root: Path) -> list[tuple[str, int, int, int]]:
    """Every entry below ``root`` with its owner, mode and size: what a write would change."""
    found = []
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            found.append((os.path.relpath(path, root), info.st_uid, info.st_mode, info.st_size))
    return sorted(found)


def _run_argv(home: Path, tmp_path: Path, attr: str, backend: str, **inputs: str) -> list[str]:
    argv = [*CLI, "--home", str(home), "run", "-q", f"{PLAN}:{attr}", "--sandbox", backend]
    argv += ["--workspace-root", str(tmp_path)]
    for key, value in inputs.items():
        argv += ["--input", f"{key}={value}"]
    return argv


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", backends("bwrap"))
def test_publishing_beside_a_live_workspace_on_the_same_lower(
    tmp_path: Path, home: Path, backend: str
) -> None:
    """A publish while another node's sandbox works on the same lower: that sandbox's
    git (an unprivileged uid) still writes objects and refs, and the lower is unchanged."""
    repo = origin(tmp_path)
    lower = _lower_of(tmp_path, repo)
    before = _tree_of(lower)
    mark = tmp_path / "published"
    argv = _run_argv(
        home,
        tmp_path,
        "side_by_side",
        backend,
        lower=str(lower),
        dest=str(repo),
        hold="",
        mark=str(mark),
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    with Runtime(home=home) as rt:
        state = rt.state(rt.runs()[-1].run_id)
    assert state.status == "succeeded"
    assert {n.id: n.attempt for n in state.nodes.values()} == {"publisher": 1, "neighbour": 1}
    published = state.nodes["publisher"].outputs or {}
    assert git(repo, "rev-parse", published["branch"]) == published["sha"]
    assert _tree_of(lower) == before  # nothing was written into the lower


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", backends("bwrap"))
def test_resume_after_a_kill_during_publish_is_idempotent(
    tmp_path: Path, home: Path, backend: str
) -> None:
    repo = origin(tmp_path)
    lower = _lower_of(tmp_path, repo)
    hold = tmp_path / "go-on"
    argv = _run_argv(
        home,
        tmp_path,
        "alone",
        backend,
        lower=str(lower),
        dest=str(repo),
        hold=str(hold),
        mark="",
    )
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "child.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 120
        while not git(repo, "for-each-ref", "refs/heads/orchestrator"):
            assert proc.poll() is None and time.monotonic() < deadline, "never published"
            time.sleep(0.05)
    finally:
        sigkill(proc)  # the branch exists; the publish is not yet on the record
    listed = git(
        repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/orchestrator"
    )
    ref, sha = listed.split()
    with Runtime(home=home) as rt:
        run_id = rt.runs()[-1].run_id
        assert rt.state(run_id).nodes["publisher"].status == "running"
    hold.write_text("go\n")
    resumed = cli(home, "resume", "-q", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with Runtime(home=home) as rt:
        state = rt.state(run_id)
    node_state = state.nodes["publisher"]
    assert (state.status, node_state.attempt) == ("succeeded", 1)  # resumed, not retried
    assert node_state.outputs == {"branch": ref.removeprefix("refs/heads/"), "sha": sha}
    assert git(repo, "rev-parse", ref) == sha
    assert len(git(repo, "reflog", "show", "--format=%H", ref).splitlines()) == 1  # never moved
