"""Host-side steps workloads record as ``ctx.tool`` effects: cloning the repository,
reading its marker files, publishing a prepared tree and a branch. Each is idempotent,
so one performed again after a crash (same idempotency key) does no harm."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from orchestrator.agents.diagnosis import is_transient
from orchestrator.errors import ConfigError, TransientError
from orchestrator.runtime.context import output_tail


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


def publish_branch(repo: str, branch: str, workspace: str) -> str:
    """Fetch ``branch`` from the sandbox's view into the local repository ``repo``."""
    git("-C", repo, "fetch", "--quiet", *fetch_from(workspace), workspace, f"+{branch}:{branch}")
    return git("-C", repo, "rev-parse", branch)


def push_branch(remote: str, branch: str, workspace: str) -> str:
    """Push ``branch`` from the sandbox's view to a remote URL (credentials from git's own
    configuration, never from the ledger)."""
    trust = sandbox_owned(workspace)
    git(*trust, "-C", workspace, "push", "--quiet", "--force", remote, f"{branch}:{branch}")
    return git(*trust, "-C", workspace, "rev-parse", branch)


def write_text(path: str, text: str) -> str:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return str(target)
