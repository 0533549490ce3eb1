"""What a pull request needs to know about the person's repository, read on the host:
who commits (``user.name``/``user.email`` of the repository, else the global ones), what
the repository is called in public (its remote URL or directory name, never a host path)
and which branch a pull request targets (the remote's default, else a branch holding the
hunted commit). Read once as a recorded ``ctx.tool`` step, so a replay reuses the answer.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

__all__ = ["RepoFacts", "Signature", "display_name", "parse_signature", "read_repo_facts"]

_SIGNATURE = re.compile(r"\s*([^<>]*[^<>\s])\s*<([^<>\s]+)>\s*")
_PREFERRED = ("main", "master", "trunk", "develop")


class Signature(BaseModel):
    """A git identity: ``Name <email>``."""

    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class RepoFacts(BaseModel):
    name: str
    identity: Signature | None
    default_branch: str | None


def parse_signature(text: str) -> Signature:
    """``"Ada Lovelace <ada@example.org>"`` as a :class:`Signature`; ``ValueError`` else."""
    match = _SIGNATURE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected 'Name <email>', got {text!r}")
    return Signature(name=match[1], email=match[2])


def display_name(repo: str, remote: str | None = None) -> str:
    """How the pull request names ``repo``: ``remote`` (or ``repo`` itself, when it is a
    URL) without credentials, else the directory's name."""
    for url in (remote, repo):
        if url and _is_url(url):
            return _without_credentials(url)
    return Path(repo.rstrip("/")).name or repo


def read_repo_facts(repo: str, sha: str, clone: str) -> dict[str, object]:
    """The facts of ``repo`` (a local path or a URL; ``clone`` is the hunt's clone of it,
    asked for a URL's default branch) as JSON. ``sha`` is the hunted (bad) commit."""
    local = Path(repo).is_dir()
    where = repo if local else None
    remote = _git(where, "remote", "get-url", "origin") if local else None
    name = _config(where, "user.name")
    email = _config(where, "user.email")
    identity = Signature(name=name, email=email) if name and email else None
    branch = _remote_head(repo if local else clone)
    if branch is None and local:
        branch = _branch_holding(repo, sha)
    facts = RepoFacts(name=display_name(repo, remote), identity=identity, default_branch=branch)
    return facts.model_dump(mode="json")


def _is_url(text: str) -> bool:
    return "://" in text or re.fullmatch(r"[\w.-]+@[\w.-]+:.*", text) is not None


def _without_credentials(url: str) -> str:
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


def _git(repo: str | None, *args: str) -> str | None:
    """``git -C repo args`` (no repository when ``repo`` is None): its output, None on failure."""
    where = ["-C", repo] if repo is not None else []
    done = subprocess.run(
        ["git", *where, *args], capture_output=True, text=True, cwd="/", check=False
    )
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def _config(repo: str | None, key: str) -> str | None:
    if repo is not None:
        return _git(repo, "config", "--get", key)
    return _git(None, "config", "--global", "--get", key) or _git(
        None, "config", "--system", "--get", key
    )


def _remote_head(repo: str) -> str | None:
    head = _git(repo, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
    return head.removeprefix("origin/") if head else None


def _branch_holding(repo: str, sha: str) -> str | None:
    listed = _git(
        repo, "for-each-ref", "--contains", sha, "--format=%(refname:short)", "refs/heads/"
    )
    # not a branch an earlier hunt published
    holding = sorted(b for b in (listed or "").splitlines() if not b.startswith("orchestrator/"))
    if not holding:
        return None
    current = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD")
    for choice in (current, *_PREFERRED):
        if choice in holding:
            return choice
    return holding[0]
