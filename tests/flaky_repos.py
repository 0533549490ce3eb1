"""Fixture repositories for the flaky hunt, built with real git by the tests.

``python_repo`` makes a small Python project of ``commits`` commits whose unittest suite
passes until commit ``culprit``: there, either a test that depends on hash ordering
appears (it fails when "alpha" hashes lowest of ten names: one seed in ten, by symmetry
of the string hash over PYTHONHASHSEED), or a change breaks a test for good.
``js_repo`` makes an npm project whose Vitest suite has a test failing one run in ten.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

NAMES = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
)
TRUE_RATE = 1 / len(NAMES)
ENV = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
}

FLAKY_TEST = f"""

class TestRegistry(unittest.TestCase):
    def test_first_registered_name(self):
        # Bug: "first" is whatever hashes lowest, which changes with PYTHONHASHSEED.
        names = {{{", ".join(repr(n) for n in NAMES)}}}
        first = sorted(names, key=hash)[0]
        self.assertNotEqual(first, "alpha", "registry picked alpha first")
"""


@dataclass(frozen=True)
class FixtureRepo:
    path: Path
    commits: list[str]  # oldest first
    culprit: str
    parent: str
    test_id: str


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _commit(repo: Path, message: str, n: int) -> str:
    git(repo, "add", "--all")
    stamp = f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z"
    subprocess.run(
        ["git", "commit", "--quiet", "-m", message],
        cwd=repo,
        env={**ENV, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp},
        check=True,
    )
    return git(repo, "rev-parse", "HEAD")


def python_repo(
    parent: Path,
    commits: int = 30,
    culprit: int = 17,
    kind: str = "hash",
    broken: int | None = None,
    slow: float = 0.0,
) -> FixtureRepo:
    """A unittest project; commit number ``culprit`` (1-based) introduces the failure, and
    commit ``broken`` (if any) does not even import (the next commit repairs it). With
    ``slow`` each run of the suite takes that many seconds more (for benchmarks)."""
    repo = parent / f"py-{kind}"
    (repo / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    shas: list[str] = []
    test_id = ""
    for n in range(1, commits + 1):
        functions = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(n))
        add = "a + b + 1" if kind == "always" and n >= culprit else "a + b"
        source = f"def add(a, b):\n    return {add}\n\n{functions}"
        if n == broken:
            source += "\ndef half_written(:\n"  # a syntax error: nothing imports
        (repo / "calc" / "__init__.py").write_text(source)
        body = (
            "import time\nimport unittest\n\nimport calc\n\n"
            if slow
            else "import unittest\n\nimport calc\n\n"
        )
        body += f"time.sleep({slow})\n\n" if slow else ""
        body += "\nclass TestCalc(unittest.TestCase):\n"
        body += "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n"
        body += "\n".join(
            f"    def test_f{i}(self):\n        self.assertEqual(calc.f{i}(1), {i + 1})\n"
            for i in range(0, n, 5)
        )
        if kind == "hash" and n >= culprit:
            body += FLAKY_TEST
        (repo / "tests" / "__init__.py").write_text("")
        (repo / "tests" / "test_calc.py").write_text(body)
        if n == 1:
            (repo / "setup.cfg").write_text("[metadata]\nname = calc\n")
        shas.append(_commit(repo, f"step {n}" + (" (the culprit)" if n == culprit else ""), n))
    test_id = (
        "tests.test_calc.TestRegistry.test_first_registered_name"
        if kind == "hash"
        else "tests.test_calc.TestCalc.test_add"
    )
    return FixtureRepo(repo, shas, shas[culprit - 1], shas[culprit - 2], test_id)


def js_repo(parent: Path) -> Path:
    """An npm project whose Vitest suite has a test that fails about one run in ten."""
    repo = parent / "js-flaky"
    (repo / "test").mkdir(parents=True)
    git(repo, "init", "--quiet", "--initial-branch=main")
    manifest = {
        "name": "js-flaky",
        "version": "1.0.0",
        "private": True,
        "type": "module",
        "scripts": {"test": "vitest run"},
        "devDependencies": {"vitest": "^2.1.9"},
    }
    (repo / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (repo / "test" / "stable.test.js").write_text(
        "import { expect, test } from 'vitest';\ntest('adds', () => { expect(1 + 2).toBe(3); });\n"
    )
    _commit(repo, "stable suite", 1)
    (repo / "test" / "flaky.test.js").write_text(
        "import { expect, test } from 'vitest';\n"
        "test('picks a winner', () => {\n"
        "  // Bug: a one-in-ten chance of an unlucky draw.\n"
        "  expect(Math.floor(Math.random() * 10)).not.toBe(0);\n"
        "});\n"
    )
    _commit(repo, "add the winner test", 2)
    return repo
