"""Host-side steps workloads record as ``ctx.tool`` effects: cloning the repository,
reading its marker files, publishing a prepared tree and a branch. Each is idempotent,
so one performed again after a crash (same idempotency key) does no harm.

Publishing a branch never writes into a directory a sandbox's workspace is stacked on
(an overlay's lower layer must not change under it: new root-owned entries there are
refused to the sandbox's unprivileged git), only into the destination repository; it
sets the destination's ref directly (``update-ref``, or a push to the ref), so a branch
checked out in some worktree is no obstacle; and it creates branches, never moves one
this run did not make (:func:`publish_branch`).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from orchestrator.agents.diagnosis import is_transient
from orchestrator.errors import BranchRefused, ConfigError, EffectFailed, TransientError
from orchestrator.runtime.context import NodeContext, output_tail


def git(*args: str, cwd: str | Path | None = None) -> str:
    """Run git; a failure raises TransientError when retrying may help, else ConfigError."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        failed = TransientError if is_transient(done.stderr) else ConfigError
        raise failed(f"git {' '.join(args)} failed: {output_tail(done.stderr, 2000)}")
    return done.stdout.strip()


def clone_checkout(repo: str, rev: str, dest: str, markers: list[str]) -> dict[str, object]:
    """Clone ``repo`` (a path or URL) into ``dest`` (reused if already there) and check out
    ``rev`` detached; returns the resolved commit, the remote and the marker files' text."""
    target = Path(dest)
    if not (target / ".git").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = str(Path(repo).resolve()) if Path(repo).exists() else repo
        git("clone", "--quiet", "--no-hardlinks", source, str(target))
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=target)
    git("checkout", "--quiet", "--force", "--detach", sha, cwd=target)
    git("clean", "--quiet", "-fdx", cwd=target)
    files = {}
    for name in markers:
        path = target / name
        if path.is_file() and not path.is_symlink():
            files[name] = path.read_text(errors="replace")[:200_000]
    return {"checkout": str(target), "sha": sha, "files": files}


def publish_tree(dest: str, workspace: str) -> str:
    """Copy what a node's sandbox sees (its copy-on-write view) to ``dest``, whole."""
    target = Path(dest)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(workspace, staging, symlinks=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return str(target)


def sandbox_owned(workspace: str) -> list[str]:
    """git options to work in a workspace the sandbox's unprivileged identity owns (git
    refuses repositories of another owner), running none of its hooks."""
    return ["-c", f"safe.directory={workspace}", "-c", "core.hooksPath=/dev/null"]


def fetch_from(workspace: str) -> list[str]:
    """``git fetch`` options to fetch from such a workspace (a local fetch runs
    upload-pack there without the caller's ``-c`` options)."""
    trusted = " ".join(
        f"-c safe.directory={shlex.quote(p)}" for p in (workspace, workspace + "/.git")
    )
    return ["--upload-pack", f"git {trusted} upload-pack"]


def branch_for_run(name: str, run_id: str) -> str:
    """``name`` made this run's own, ``NAME-TAG``: TAG is the random part of the run id
    (6 hex digits), so a later run (another hunt of the same test) never names, and so
    never touches, an earlier run's branch."""
    tail = run_id.rsplit("-", 1)[-1]
    if not re.fullmatch(r"[0-9a-f]{6,12}", tail):
        tail = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{name}-{tail}"


async def publish(ctx: NodeContext, dest: str, branch: str) -> str:
    """Publish ``branch`` of the node's workspace to ``dest`` (a local repository or a
    remote URL) as a recorded step; returns the commit the branch points at there.
    Raises :class:`BranchRefused` (give the node ``Retry(never=BranchRefused)``) when a
    branch of that name exists and this run did not make it."""
    try:
        return str(await ctx.tool("publish-branch", publish_branch, dest, branch))
    except EffectFailed as exc:
        if BranchRefused.__name__ in exc.classes:
            raise BranchRefused(str(exc).partition(f"{exc.type_name}: ")[2]) from None
        raise


def publish_branch(dest: str, branch: str, workspace: str, idempotency_key: str = "") -> str:
    """Create ``refs/heads/BRANCH`` in ``dest`` at the commit the sandbox's view has there.

    Idempotent: a branch already at that commit (a publish performed again after a crash)
    or at the same change made again (same tree, parents, author and message: a retried
    attempt of this run, whose commit differs only in its dates) is left as it is and its
    commit returned. Any other existing branch is refused (:class:`BranchRefused`) and
    left untouched. A local ``dest`` gets the objects by a fetch that writes no ref, then
    the branch by an ``update-ref`` that only creates (checked-out branches are fine); a
    remote one by a push that only creates (``--force-with-lease=REF:``).
    """
    ref = f"refs/heads/{branch}"
    trust = sandbox_owned(workspace)
    sha = git(*trust, "-C", workspace, "rev-parse", "--verify", f"{ref}^{{commit}}")
    local = Path(dest).is_dir()
    tip = _local_tip(dest, ref) if local else _remote_tip(dest, ref)
    if tip is not None:
        return _ours_or_refuse(dest, branch, workspace, tip, sha, local)
    if local:
        fetch = ["-C", dest, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
        git(*fetch, *fetch_from(workspace), workspace, ref)  # objects only: no ref written
        note = f"orchestrator {idempotency_key}".strip()
        made = _attempt("-C", dest, "update-ref", "-m", note, ref, sha, "")
    else:
        lease = f"--force-with-lease={ref}:"  # the ref must not exist yet
        made = _attempt(*trust, "-C", workspace, "push", "--quiet", lease, dest, f"{sha}:{ref}")
    if made.returncode == 0:
        return sha
    tip = _local_tip(dest, ref) if local else _remote_tip(dest, ref)
    if tip is None:
        raise ConfigError(f"publishing {branch} to {dest} failed: {made.stderr.strip()[-500:]}")
    return _ours_or_refuse(dest, branch, workspace, tip, sha, local)  # created meanwhile


def _attempt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def _local_tip(repo: str, ref: str) -> str | None:
    done = _attempt("-C", repo, "rev-parse", "--verify", "--quiet", ref)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _remote_tip(url: str, ref: str) -> str | None:
    listed = git("ls-remote", "--", url, ref)
    rows = (line.split("\t", 1) for line in listed.splitlines())
    return next((row[0] for row in rows if row[-1] == ref), None)


def _ours_or_refuse(dest: str, branch: str, workspace: str, tip: str, sha: str, local: bool) -> str:
    if tip == sha or (local and _change(dest, tip) == _change(workspace, sha)):
        return tip
    raise BranchRefused(
        f"branch {branch} already exists in {dest} at commit {tip[:12]}, which this run "
        f"did not make, so it was left untouched: the Orchestrator creates branches and "
        f"never moves one it did not create (it may be someone's work). This run's "
        f"commit {sha[:12]} was not published. Delete or rename that branch if nobody "
        "needs it, then publish again."
    )


def _change(repo: str, sha: str) -> tuple[str, ...]:
    """What a commit changes and who wrote it: tree, parents, author, message (no dates,
    no committer), so a commit made again from the same recorded inputs compares equal."""
    raw = git(*sandbox_owned(repo), "-C", repo, "cat-file", "commit", sha)
    headers, _, message = raw.partition("\n\n")
    kept = []
    for line in headers.splitlines():
        key, _, value = line.partition(" ")
        if key in ("tree", "parent"):
            kept.append(line)
        elif key == "author":
            kept.append(value.rsplit(" ", 2)[0])  # without the timestamp and zone
    return (*kept, message)


def write_text(path: str, text: str) -> str:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return str(target)
