"""The hunt's fix-proposer: a model's diff is applied, checked by rerunning the repro and
fresh seeds, and lands on the pull request's branch only when it holds.

The model is the scripted provider (the hosted ones cannot run here); its answer is a
real diff made with git against the fixture, the way a model's would be.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from orchestrator import Runtime
from tests.backends import needs
from tests.conftest import cli
from tests.flaky_repos import FixtureRepo, git, python_repo

pytestmark = [pytest.mark.timeout(300), needs("bwrap")]

HUNT = ["--test", "python -m unittest", "--runs", "60", "--batch", "30", "--seed", "11"]


def model_diff(fixture: FixtureRepo, tmp: Path, old: str, new: str) -> str:
    work = tmp / "fixwork"
    subprocess.run(["git", "clone", "--quiet", str(fixture.path), str(work)], check=True)
    test_file = work / "tests" / "test_calc.py"
    test_file.write_text(test_file.read_text().replace(old, new))
    return git(work, "diff") + "\n"


def answers(tmp: Path, diff: str) -> Path:
    text = f"Set order depends on the hash seed; pick deterministically.\n\n```diff\n{diff}```\n"
    path = tmp / "answers.jsonl"
    path.write_text(json.dumps({"text": text, "input_tokens": 900, "output_tokens": 150}) + "\n")
    return path


def hunt(home: Path, fixture: FixtureRepo, script: Path) -> dict:
    done = cli(
        home,
        "flaky-hunt",
        "--repo",
        str(fixture.path),
        *HUNT,
        "--sandbox",
        "bwrap",
        "--llm",
        f"scripted:{script}",
        "--model",
        "claude-sonnet-4-5",
        "--json",
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_verified_fix_lands_on_the_branch_with_its_before_and_after(tmp_path: Path) -> None:
    fixture = python_repo(tmp_path)
    diff = model_diff(
        fixture, tmp_path, "first = sorted(names, key=hash)[0]", "first = sorted(names)[-1]"
    )
    data = hunt(tmp_path / "home", fixture, answers(tmp_path, diff))
    nodes = data["nodes"]
    assert nodes["bisector"]["outputs"]["bisected"]["first_bad"] == fixture.culprit
    fix = nodes["fix-proposer"]["outputs"]["fix"]
    assert fix["verified"] is True and fix["failures_after"] == 0 and fix["runs_after"] > 50
    assert "sorted(names)[-1]" in fix["diff"]
    authored = nodes["pr-author"]["outputs"]["authored"]
    branch = authored["branch"]
    fixed = git(fixture.path, "show", f"{branch}:tests/test_calc.py")
    assert "first = sorted(names)[-1]" in fixed
    assert git(fixture.path, "rev-parse", f"{branch}~1") == fixture.commits[-1]
    assert "verified" in nodes["notifier"]["outputs"]["summary"]
    assert f"0/{fix['runs_after']}" in authored["description"]
    with Runtime(home=tmp_path / "home") as rt:
        state = rt.state(data["run_id"])
    # the model call was journaled with its usage and charged under the scripted label
    assert state.book.tokens_by_model == {"scripted/claude-sonnet-4-5": 1050}
    assert cli(tmp_path / "home", "replay", data["run_id"]).returncode == 0


def test_a_diff_that_does_not_hold_never_reaches_the_branch(tmp_path: Path) -> None:
    fixture = python_repo(tmp_path)
    # a "fix" that keeps the flake: hash order still decides
    diff = model_diff(
        fixture, tmp_path, "first = sorted(names, key=hash)[0]", "first = min(names, key=hash)"
    )
    data = hunt(tmp_path / "home", fixture, answers(tmp_path, diff))
    fix = data["nodes"]["fix-proposer"]["outputs"]["fix"]
    assert fix["verified"] is False and fix["failures_after"] > 0
    branch = data["nodes"]["pr-author"]["outputs"]["authored"]["branch"]
    on_branch = git(fixture.path, "show", f"{branch}:tests/test_calc.py")
    assert "sorted(names, key=hash)[0]" in on_branch and "min(names" not in on_branch
    description = data["nodes"]["pr-author"]["outputs"]["authored"]["description"]
    assert "No fix proposed" in description
