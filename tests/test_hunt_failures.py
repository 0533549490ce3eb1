"""The flaky hunt when something is wrong: inputs refused before any work, deterministic
errors not retried, each error printed once and whole, and a failed publish that keeps
what the hunt found and resumes to publish only (real git repositories, real sandboxes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.agents import diagnosis
from orchestrator.config import RunConfig
from orchestrator.ledger.events import NodeDispatched, RetryScheduled, decode
from orchestrator.runtime.context import output_tail
from tests.backends import needs
from tests.conftest import cli
from tests.flaky_repos import _commit, git, python_repo
from tests.test_flaky_hunt import SEED, UNITTEST, branches, hunt, load, replay_ok


def no_run_in(home: Path) -> bool:
    if not (home / "ledger.db").exists():
        return True
    with Runtime(home=home) as rt:
        return rt.runs() == []


def one_paragraph(stderr: str) -> str:
    """The error paragraph (rich wraps it at the terminal width): joined, no traceback."""
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("error: "), stderr
    assert "\n\n" not in stderr.strip(), stderr
    return " ".join(stderr.split())


# ---- checked before any work ---------------------------------------------------------------


def test_a_directory_that_is_not_a_git_repository_is_refused_before_any_run(
    tmp_path: Path, home: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "test_x.py").write_text("")
    done = hunt(home, plain, *UNITTEST)
    assert done.returncode == 1, done.stdout + done.stderr
    text = one_paragraph(done.stderr)
    assert f"--repo {plain} is not a git repository" in text
    assert no_run_in(home)


def test_a_url_that_does_not_clone_is_tried_once_and_refused(tmp_path: Path, home: Path) -> None:
    url = f"file://{tmp_path}/nothing-here.git"
    done = hunt(home, url, *UNITTEST)
    assert done.returncode == 1, done.stdout + done.stderr
    text = one_paragraph(done.stderr)
    assert f"--repo {url} could not be cloned" in text
    assert text.count("does not appear to be a git repository") == 1  # one clone, not three
    assert no_run_in(home)


def test_good_newer_than_bad_or_unknown_is_refused_before_intake(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, commits=6, culprit=4)
    first, last = fixture.commits[0], fixture.commits[-1]
    swapped = hunt(home, fixture.path, *UNITTEST, "--good", last, "--bad", first)
    assert swapped.returncode == 1, swapped.stdout + swapped.stderr
    text = one_paragraph(swapped.stderr)
    assert f"--good {last} ({last[:12]}) is newer than --bad {first}" in text
    same = hunt(home, fixture.path, *UNITTEST, "--good", last)
    assert "are the same commit" in one_paragraph(same.stderr)
    unknown = hunt(home, fixture.path, *UNITTEST, "--good", "no-such-tag")
    assert "--good no-such-tag is not a commit in" in one_paragraph(unknown.stderr)
    # a commit on another line of history is not an ancestor either
    git(fixture.path, "checkout", "--quiet", "--orphan", "other")
    (fixture.path / "other.txt").write_text("x")
    other = _commit(fixture.path, "unrelated", 99)
    git(fixture.path, "checkout", "--quiet", "main")
    apart = hunt(home, fixture.path, *UNITTEST, "--good", other)
    assert "is not an ancestor of --bad HEAD" in one_paragraph(apart.stderr)
    assert no_run_in(home)


@needs("bwrap")
def test_a_clone_that_cannot_succeed_is_not_retried(tmp_path: Path, home: Path) -> None:
    """Past the CLI's checks (the repository went away since): one attempt, not three."""
    from orchestrator.workloads import flaky_hunt

    values = {
        "repo": str(tmp_path / "gone"),
        "test": "python -m unittest",
        "workdir": str(home / "hunts" / "h"),
        "runs": 2,
        "batch": 2,
    }
    config = RunConfig(sandbox="bwrap", workspace_roots=[str(home / "hunts")])

    async def main() -> None:
        with Runtime(home=home) as rt:
            state = await rt.start(flaky_hunt.plan, values, config)
            assert state.status == "failed"
            fetch = state.nodes["repo-fetch"]
            assert (fetch.status, fetch.attempt, fetch.cause) == ("failed", 1, "error")
            assert "gone' does not exist" in str(fetch.error)
            evs = [decode(r.body) for r in rt.store.read(state.run_id)]
            assert not any(isinstance(e, RetryScheduled) for e in evs)

    asyncio.run(main())


# ---- errors: once, whole, with what to do --------------------------------------------------


def test_a_build_error_names_the_system_package_to_install() -> None:
    output = (
        "building 'yaml._yaml' extension\n"
        "ext/_yaml.c:4:10: fatal error: Python.h: No such file or directory\n"
        "compilation terminated.\n"
        "error: command '/usr/bin/x86_64-linux-gnu-gcc' failed with exit code 1\n"
    )
    assert diagnosis.missing_system_package(output) == "python3-dev"
    hint = diagnosis.build_hint(output)
    assert hint is not None and "apt-get install python3-dev" in hint
    assert diagnosis.missing_system_package("error: command 'gcc' failed: No such file") == (
        "build-essential"
    )
    assert not diagnosis.is_transient(output)
    assert diagnosis.is_transient("fatal: unable to access: Could not resolve host: github.com")
    assert not diagnosis.is_transient("fatal: repository 'x' does not exist")


def test_command_output_is_kept_in_whole_lines() -> None:
    lines = [f"line {i}: " + "word " * 30 for i in range(200)]
    tail = output_tail("\n".join(lines), limit=1000)
    kept = tail.splitlines()
    assert kept[0] == "[... earlier output cut ...]"
    assert kept[-1] == lines[-1].rstrip()
    assert all(line.rstrip() in {x.rstrip() for x in lines} for line in kept[1:])
    assert output_tail("short\n") == "short"
    one = output_tail("x" * 50 + " " + "tailword " * 400, limit=100)
    assert one.splitlines()[1].startswith("tailword")


@needs("bwrap")
@pytest.mark.timeout(120)
def test_a_failing_run_prints_its_error_once_and_its_dependents_in_one_line(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, commits=3, culprit=2)
    (fixture.path / "requirements.txt").write_text("--no-index\nno-such-package-i12==1.0\n")
    _commit(fixture.path, "a requirement that cannot be installed", 50)
    done = hunt(home, fixture.path, *UNITTEST, "--runs", "4", "--batch", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    both = done.stdout + done.stderr
    assert "Traceback" not in both
    said = "No matching distribution found for no-such-package-i12==1.0"
    assert both.count(said) == 1, both  # not once in the progress and again in the summary
    assert both.count("upstream") + both.count("UpstreamFailed") == 0, both
    assert "not run, as what they need failed" in done.stdout
    assert done.stdout.count("not run, as what they need failed") == 1
    h = load(home)
    intake = h.state.nodes["repo-intake"]
    assert (intake.status, intake.attempt) == ("failed", 1)  # deterministic: not retried


# ---- a failed publish keeps the results and resumes to publish only ------------------------

RUNS = 100


@needs("bwrap")
@pytest.mark.timeout(600)
def test_a_failed_publish_keeps_the_results_and_resumes_to_publish_only(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, commits=8, culprit=5)
    # a branch named like the hunt's branch directory: no ref can be made under it
    git(fixture.path, "branch", "orchestrator", fixture.commits[0])
    args = ("--runs", str(RUNS), "--batch", "50", "--seed", str(SEED))
    done = hunt(home, fixture.path, *UNITTEST, *args, timeout=480)
    assert done.returncode == 3, done.stdout + done.stderr  # parked, not failed
    h = load(home)
    assert h.state.status == "parked"
    assert h.state.nodes["pr-open"].status == "retrying"
    assert h.state.nodes["notifier"].status == "pending"
    rate = h.rate()
    # what the hunt found is printed as it is found, and again in the summary
    assert f"flaky test: {fixture.test_id} ({rate['failures']}/{RUNS} runs failed" in done.stdout
    assert f"first failing commit: {fixture.culprit}" in done.stdout
    repro = h.out("repro-builder")["repro"]["command"]
    assert f"reproduce: {repro}" in done.stdout
    assert f"found: first failing commit: {fixture.culprit}" in done.stderr
    assert f"resume {h.run_id}`" in done.stdout and "orchestrator --home " in done.stdout
    error = str(h.state.nodes["pr-open"].error)
    assert "refs/heads/orchestrator" in error
    assert (done.stdout + done.stderr).count("refs/heads/orchestrator' exists") == 1
    assert branches(fixture.path) == []
    pr_open_attempts = h.state.nodes["pr-open"].attempt
    assert pr_open_attempts == 1  # a refused ref is not a network error: not retried

    git(fixture.path, "branch", "-D", "orchestrator")
    resumed = cli(home, "resume", h.run_id, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    h = load(home, h.run_id)
    assert h.state.status == "succeeded"
    start = max(i for i, e in enumerate(h.events) if e.kind == "RunResumed")
    rerun = [e.node for e in h.events[start:] if isinstance(e, NodeDispatched)]
    assert rerun == ["pr-open", "notifier"]
    assert h.state.nodes["pr-open"].attempt == 2
    assert branches(fixture.path) == [h.out("pr-author")["authored"]["branch"]]
    assert fixture.culprit in h.out("notifier")["summary"]
    replay_ok(home, h.run_id)
