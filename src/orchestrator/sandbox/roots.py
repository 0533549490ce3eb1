"""Which host directories a node may work on: the run's allowed workspace roots.

A node's workspace comes from data (``repo=...``, or an upstream node's output), so it is
checked at dispatch: after resolving symlinks it must lie inside one of the run's
allowed roots (by default the directory the run was started in, plus every
``--workspace-root``), and never be ``/``, a system directory, the orchestrator's home or
the key directory. A root itself is refused when it is one of those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from orchestrator.errors import ConfigError, WorkspaceRefused

__all__ = [
    "HOME_WORK_AREAS",
    "WorkspacePolicy",
    "WorkspaceRefused",
    "check_roots",
    "default_roots",
]

# Trees no workspace may lie in, whatever the roots say.
SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/var",
    )
)
# Directories that may hold workspaces below them but are never one themselves.
SYSTEM_DIRS = tuple(Path(p) for p in ("/", "/home", "/root", "/tmp", "/opt", "/mnt", "/media"))
# Directories of the home that commands' own scratch repositories live in (the demo's
# generated monorepo, the flaky hunt's checkouts): a run may be given them as roots.
HOME_WORK_AREAS = ("demo", "hunts")


def _system(path: Path) -> str | None:
    if path in SYSTEM_DIRS:
        return "a system directory"
    for tree in SYSTEM_TREES:
        if path == tree or tree in path.parents:
            return f"inside the system directory {tree}"
    return None


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


class WorkspacePolicy:
    """The allowed roots of one run and the trees that stay out of every workspace."""

    def __init__(self, roots: Iterable[str | Path] | None, home: Path, keys: Path) -> None:
        # None: a run recorded before roots were (any directory but the protected ones).
        self.roots = None if roots is None else tuple(Path(r).resolve() for r in roots)
        self.home = home.resolve()
        self.keys = keys.resolve()

    @property
    def hidden(self) -> tuple[Path, Path]:
        """What an overlay hides when it lies inside a workspace."""
        return self.home, self.keys

    def _protected(self, path: Path) -> str | None:
        if _within(path, self.keys):
            return f"inside the key directory {self.keys}"
        if _within(path, self.home) and not any(
            _within(path, self.home / area) for area in HOME_WORK_AREAS
        ):
            return f"inside the orchestrator's home {self.home}"
        return _system(path)

    def check(self, node: str, port: str, value: object) -> Path:
        """The resolved workspace directory, or :class:`WorkspaceRefused` saying why."""
        given = str(value)
        path = Path(given).resolve()
        shown = repr(given) if str(path) == given else f"{given!r} (resolved: {path})"
        why = self._protected(path)
        roots = self.roots
        if why is None and roots is not None and not any(_within(path, r) for r in roots):
            listed = ", ".join(str(r) for r in roots) or "none"
            why = f"outside the run's allowed workspace roots ({listed})"
        if why is None:
            return path
        raise WorkspaceRefused(
            f"node {node} was not started: its workspace input {port!r} is {shown}, which is "
            f"{why}. A node may only work on directories inside the run's allowed roots "
            "(the directory the run was started in, and each --workspace-root), never on "
            "/, a system directory, the orchestrator's home or the key directory; pass "
            "another directory, or start the run with --workspace-root DIR"
        )


def default_roots(home: Path, keys: Path) -> list[str]:
    """The directory the run is started in, unless no workspace may lie there."""
    cwd = Path.cwd().resolve()
    return [] if WorkspacePolicy((), home, keys)._protected(cwd) else [str(cwd)]


def check_roots(roots: Sequence[str | Path], home: Path, keys: Path) -> list[str]:
    """The roots resolved, or :class:`ConfigError` for one no workspace may lie in."""
    policy = WorkspacePolicy((), home, keys)
    resolved = []
    for root in roots:
        path = Path(root).resolve()
        why = policy._protected(path)
        if why is not None:
            raise ConfigError(
                f"workspace root {str(root)!r} is refused: it is {why}; a root must be a "
                "project directory (the run's own directory by default)"
            )
        resolved.append(str(path))
    return resolved
