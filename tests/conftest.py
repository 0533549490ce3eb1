"""Shared fixtures: a Runtime over a temporary home, and a CLI runner in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.sandbox.disk import unmount_under

PLANS = Path(__file__).parent / "plans"


@pytest.fixture(autouse=True)
def trust_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test pins run keys in its own trust directory, never the user's."""
    path = tmp_path / "trust"
    monkeypatch.setenv("ORCHESTRATOR_TRUST", str(path))
    return path


@pytest.fixture(autouse=True)
def key_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's keys in a directory of their own, outside its tmp_path (where runs work)."""
    keys = tmp_path_factory.mktemp("keys") / "keys"
    monkeypatch.setenv("ORCHESTRATOR_KEYS", str(keys))
    return keys


@pytest.fixture(autouse=True)
def _started_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs start in the test's tmp_path, so it is their default workspace root; plans
    named as ``tests.plans.…`` still import in the processes tests start."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def rt(home: Path) -> Iterator[Runtime]:
    runtime = Runtime(home=home)
    yield runtime
    runtime.close()


@pytest.fixture(autouse=True)
def _no_mounts_left(tmp_path: Path) -> Iterator[None]:
    """Unmount what a test's killed orchestrators left mounted under its tmp_path (attempt
    disks, overlays): pytest's later clean-up would otherwise delete inside them."""
    yield
    if os.geteuid() == 0:
        unmount_under(tmp_path)


def cli(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `orchestrator` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=home.parent,
    )


from tests.github_peer import github_peer  # noqa: E402,F401 - loopback GitHub REST API
from tests.http_peer import http_peer  # noqa: E402,F401 - loopback HTTP sink
from tests.llm_peers import anthropic_peer_fixture, openai_peer_fixture  # noqa: E402,F401
from tests.s3server import aws_env, moto  # noqa: E402,F401 - shared session fixtures
