"""The hunt's inputs checked before any run is created: ``--repo`` is a git repository
(a local one, or a URL that clones), ``--good`` and ``--bad`` are commits in it, and
``--good`` is an ancestor of ``--bad``. Each refusal is one paragraph naming the fix.

A URL is cloned here, into the checkout ``repo-fetch`` then reuses, so that its
revisions can be checked without cloning twice.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from orchestrator.errors import ConfigError

GIT_TIMEOUT_S = 900.0


def check_inputs(repo: str, good: str | None, bad: str, checkout: Path) -> str:
    """The repository as the hunt records it (a local path made absolute), once ``repo``,
    ``good`` and ``bad`` are known to be sound; ``checkout`` is where a URL is cloned."""
    local = Path(repo)
    if local.exists():
        where = local.resolve()
        # what `git clone` will read: the repository itself, not a directory inside one
        if not local.is_dir() or _git("ls-remote", str(where), "HEAD").returncode != 0:
            raise ConfigError(
                f"--repo {repo} is not a git repository: give the path of a clone (the "
                "directory holding .git) or a URL git can clone."
            )
        resolved = str(where)
    else:
        _clone(repo, checkout)
        where, resolved = checkout, repo
    bad_sha = _commit(where, bad, "--bad", repo)
    if good is not None:
        good_sha = _commit(where, good, "--good", repo)
        _check_order(where, good, good_sha, bad, bad_sha)
    return resolved


def _clone(url: str, checkout: Path) -> None:
    if (checkout / ".git").is_dir():
        return
    checkout.parent.mkdir(parents=True, exist_ok=True)
    done = _git("clone", "--quiet", "--no-hardlinks", url, str(checkout))
    if done.returncode != 0:
        raise ConfigError(
            f"--repo {url} could not be cloned: it is neither a local directory nor a "
            f"repository git can reach. git said: {_one_line(done.stderr)}"
        )


def _one_line(text: str, limit: int = 600) -> str:
    """git's message as part of a paragraph: its lines joined, its first ``limit`` chars."""
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 3].rsplit(" ", 1)[0] + "..."


def _commit(where: Path, rev: str, option: str, repo: str) -> str:
    done = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=where)
    if done.returncode != 0:
        raise ConfigError(
            f"{option} {rev} is not a commit in {repo}: give a commit id, tag or branch "
            "that `git rev-parse` resolves there."
        )
    return done.stdout.strip()


def _check_order(where: Path, good: str, good_sha: str, bad: str, bad_sha: str) -> None:
    if good_sha == bad_sha:
        raise ConfigError(
            f"--good {good} and --bad {bad} are the same commit ({good_sha[:12]}): --good "
            "must be an older commit on which the test passes."
        )
    if _git("merge-base", "--is-ancestor", good_sha, bad_sha, cwd=where).returncode == 0:
        return
    if _git("merge-base", "--is-ancestor", bad_sha, good_sha, cwd=where).returncode == 0:
        raise ConfigError(
            f"--good {good} ({good_sha[:12]}) is newer than --bad {bad} ({bad_sha[:12]}): "
            "--good must be an ancestor of --bad. Did you swap them?"
        )
    raise ConfigError(
        f"--good {good} ({good_sha[:12]}) is not an ancestor of --bad {bad} "
        f"({bad_sha[:12]}): they are on different lines of history, so there is nothing to "
        "bisect between them. Give a --good commit that --bad descends from."
    )


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"git {' '.join(args)} took over {GIT_TIMEOUT_S:g}s; is the repository reachable?"
        ) from exc
