"""The flaky hunt's pull request is one a maintainer would merge: by the repository's own
git user (or ``--author``), dated when it was made (and that date on the record, so a
replay makes the same bytes), on the repository's default branch, naming the repository
without host paths, worded true to the repro and to the gate, and its description
written beside the patch."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Runtime
from orchestrator.agents import runners
from orchestrator.agents.intake import Intake
from orchestrator.agents.repo_facts import (
    RepoFacts,
    display_name,
    parse_signature,
    read_repo_facts,
)
from orchestrator.cli.hunt_results import finding
from orchestrator.clock import parse_iso
from orchestrator.ledger.state import RunState
from orchestrator.workloads.flaky_hunt import pull_request as pr
from orchestrator.workloads.flaky_hunt.nodes.publish import AuthorInputs, facts_of
from orchestrator.workloads.flaky_hunt.ports import Bisected, Fix, Report, Repro
from tests.backends import needs
from tests.conftest import cli
from tests.flaky_repos import FixtureRepo, git, python_repo

HUNT = ("--test", "python -m unittest", "--runs", "60", "--batch", "30", "--seed", "11")
HUNT += ("--sandbox", "bwrap")


# ---- the text ------------------------------------------------------------------------------


def facts(**changes: Any) -> pr.HuntFacts:
    base: dict[str, Any] = {
        "repo": "https://example.org/octo/widgets.git",
        "test": "tests.test_calc.TestRegistry.test_first_registered_name",
        "runner": "unittest",
        "runs": 300,
        "failures": 29,
        "rate": 29 / 300,
        "low": 0.068,
        "high": 0.135,
        "first_bad": "a" * 40,
        "parent": "b" * 40,
        "repro": "PYTHONHASHSEED=7 python -m unittest tests.test_calc",
        "trials_per_commit": 45,
        "miss_chance": 0.01,
    }
    return pr.HuntFacts.model_validate({**base, **changes})


def test_a_seeded_repro_failing_every_run_is_described_as_deterministic() -> None:
    f = facts(repro_seed=7, fails_every_run=True)
    text = pr.description(f)
    assert "pins the seed 7" in text and "deterministic" in text
    assert "usually passes" not in text
    script = pr.repro_script(f)
    assert "pins the seed 7" in script and "usually passes" not in script
    # without the seed (or when it did not fail every time) it is a flake of some rate
    for loose in (facts(), facts(repro_seed=7, fails_every_run=False)):
        assert "one run usually passes" in pr.description(loose)
        assert "deterministic" not in pr.description(loose)


def test_the_cli_and_the_notifier_word_the_rate_and_first_bad_lines_alike() -> None:
    f = facts(first_bad_subject="Register names in a set")
    rate = {"test": f.test, "failures": 29, "runs": 300, "rate": f.rate, "low": f.low}
    report = {"runs": 300, "target": f.test, "rates": [{**rate, "high": f.high}]}
    line = f"flaky test: {f.test} (29/300 runs failed, 9.7%, 95% CI 6.8% to 13.5%)"
    assert finding("flake-report", {"report": report}) == line
    assert pr.rate_line(f.test, f.failures, f.runs, f.rate, f.low, f.high) == line
    found = {"bisected": {"first_bad": f.first_bad, "subject": f.first_bad_subject}}
    line = f"first failing commit: {f.first_bad} Register names in a set"
    assert finding("bisector", found) == line
    assert pr.first_bad_line(f.first_bad, f.first_bad_subject) == line
    assert (
        finding("bisector", {"bisected": {"first_bad": None}}) == "first failing commit: not found "
    )


SINGLE = "GOFLAGS=-count=1 go test -run '^TestA$' . -shuffle=3"
WHOLE = "GOFLAGS=-count=1 go test . -shuffle=3"


def test_a_repro_that_did_not_fail_on_the_first_bad_commit_is_never_offered_as_one() -> None:
    outputs = {"repro": {"command": SINGLE, "fails_on_bad": False, "whole_command": WHOLE}}
    line = finding("repro-builder", outputs)
    assert line is not None and line.startswith("reproduce: no single-test repro confirmed")
    assert line.endswith(f"run the whole measured command instead: {WHOLE}")
    confirmed = {"repro": {**outputs["repro"], "fails_on_bad": True}}
    assert finding("repro-builder", confirmed) == f"reproduce: {SINGLE}"
    # the whole command itself unconfirmed: said so, not offered as the repro
    whole = {"repro": {"command": WHOLE, "fails_on_bad": False, "whole_command": WHOLE}}
    assert finding("repro-builder", whole) == (
        f"reproduce: not confirmed (not seen failing on the first failing commit): {WHOLE}"
    )

    # the pull request's facts (the notifier's summary and the script): the whole command
    repro = Repro(
        command=SINGLE, seed=3, fails_on_bad=False, passes_on_parent=True, whole_command=WHOLE
    )
    inputs = AuthorInputs(
        repo="r",
        workdir="w",
        base=None,
        author=None,
        intake=Intake(
            prepared="p",
            sha="c" * 40,
            runner=runners.detect({"go.mod": "module x\n"}),
            argv=["go", "test", "."],
        ),
        report=Report(
            runs=40, failures=0, rates=[], target="TestA", failing_seeds=[3], sample_output=""
        ),
        bisected=Bisected(
            first_bad="a" * 40,
            parent="b" * 40,
            good="b" * 40,
            subject="s",
            diffstat="",
            trials_per_commit=5,
            log=[],
            message="",
        ),
        repro=repro,
        fix=Fix(diff=None, verified=False, failures_after=None, runs_after=None, note=""),
        prepared_dir="p",
    )
    f = facts_of(inputs, name="r", review_gate=False)
    assert (f.repro, f.unconfirmed_repro) == (WHOLE, SINGLE)
    assert pr.repro_line(f.repro, f.unconfirmed_repro) == line
    text = pr.description(f)
    assert "No single-test command was confirmed" in text and WHOLE in text
    assert "run the test:" not in text
    assert WHOLE in pr.repro_script(f) and SINGLE not in pr.repro_script(f)
    confirmed_inputs = inputs.model_copy(
        update={"repro": repro.model_copy(update={"fails_on_bad": True})}
    )
    f = facts_of(confirmed_inputs, name="r", review_gate=False)
    assert (f.repro, f.unconfirmed_repro) == (SINGLE, None)
    assert "run the test:" in pr.description(f)


def test_a_frequent_failure_is_not_said_to_usually_pass() -> None:
    text = pr.description(facts(failures=200, rate=2 / 3, low=0.6, high=0.72))
    assert "usually passes" not in text and "a single run may pass" in text


def test_the_review_gate_is_named_only_when_one_is_configured() -> None:
    assert "review gate" not in pr.description(facts())
    assert "No fix proposed." in pr.description(facts())
    gated = pr.description(facts(review_gate=True))
    assert "No fix proposed: a person decides at the review gate." in gated


# ---- the repository's facts ---------------------------------------------------------------


def test_a_signature_is_name_and_email() -> None:
    ada = parse_signature("  Ada Lovelace <ada@example.org> ")
    assert (ada.name, ada.email, str(ada)) == (
        "Ada Lovelace",
        "ada@example.org",
        "Ada Lovelace <ada@example.org>",
    )
    for bad in ("ada@example.org", "<ada@example.org>", "Ada <a b>", "Ada <x> <y>", ""):
        with pytest.raises(ValueError, match="Name <email>"):
            parse_signature(bad)


def test_a_repository_is_named_by_its_remote_or_its_directory() -> None:
    assert display_name("/tmp/x/checkouts/widgets") == "widgets"
    assert display_name("/tmp/x/widgets/", "git@github.com:octo/widgets.git") == (
        "git@github.com:octo/widgets.git"
    )
    assert display_name("/tmp/w", "https://bob:s3cret@example.org:8443/octo/w.git") == (
        "https://example.org:8443/octo/w.git"
    )
    assert display_name("https://tok@example.org/octo/w") == "https://example.org/octo/w"


def local_repo(tmp_path: Path, branch: str = "master") -> FixtureRepo:
    fixture = python_repo(tmp_path, commits=8, culprit=5)
    git(fixture.path, "branch", "-m", "main", branch)
    git(fixture.path, "config", "user.name", "Repo Person")
    git(fixture.path, "config", "user.email", "person@example.org")
    return fixture


def test_the_facts_of_a_local_repository(tmp_path: Path) -> None:
    fixture = local_repo(tmp_path)
    head = fixture.commits[-1]
    known = RepoFacts.model_validate(read_repo_facts(str(fixture.path), head, "/nonexistent"))
    assert known.name == "py-hash"  # the directory, not its host path
    assert known.identity is not None and str(known.identity) == (
        "Repo Person <person@example.org>"
    )
    assert known.default_branch == "master"  # no remote: the branch holding the commit

    # a clone on a topic branch: its remote's default branch, its remote's URL
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(fixture.path), str(clone)], check=True)
    git(clone, "checkout", "--quiet", "-b", "topic")
    git(clone, "remote", "set-url", "origin", "https://bob:pw@example.org/octo/py-hash.git")
    known = RepoFacts.model_validate(read_repo_facts(str(clone), head, "/nonexistent"))
    assert known.default_branch == "master"
    assert known.name == "https://example.org/octo/py-hash.git"


def test_without_any_git_identity_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    fixture = python_repo(tmp_path, commits=2, culprit=2)
    known = RepoFacts.model_validate(
        read_repo_facts("https://example.org/w.git", fixture.commits[-1], str(fixture.path))
    )
    assert known.identity is None
    assert known.name == "https://example.org/w.git"


def test_a_malformed_author_is_refused_before_any_work(tmp_path: Path) -> None:
    done = cli(
        tmp_path / "home",
        "flaky-hunt",
        "--repo",
        str(tmp_path),
        "--test",
        "true",
        "--author",
        "nobody",
    )
    assert done.returncode == 2
    assert "Name <email>" in done.stdout + done.stderr
    assert not (tmp_path / "home" / "hunts").exists()


# ---- end to end -----------------------------------------------------------------------------


def run_hunt(home: Path, repo: Path, *args: str) -> tuple[str, RunState, str]:
    done = cli(home, "flaky-hunt", "--repo", str(repo), *HUNT, *args, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with Runtime(home=home) as rt:
        run_id = rt.runs()[-1].run_id
        return run_id, rt.state(run_id), done.stdout


def recorded_now(state: RunState) -> datetime:
    (now,) = [e for e in state.nodes["pr-author"].journal if e.effect == "now"]
    value = now.response["ok"] if isinstance(now.response, dict) else now.response
    return parse_iso(str(value))


def commit_field(repo: Path, branch: str, field: str) -> str:
    return git(repo, "log", "-1", f"--format={field}", branch)


def check_the_pull_request(
    repo: Path, home: Path, state: RunState, stdout: str, tmp_path: Path
) -> dict[str, Any]:
    authored: dict[str, Any] = state.nodes["pr-author"].outputs["authored"]  # type: ignore[index]
    opened = state.nodes["pr-open"].outputs["opened"]  # type: ignore[index]
    branch = authored["branch"]
    # real dates: the recorded time of authoring, for author and committer alike
    when = recorded_now(state).replace(microsecond=0)
    assert when.year == datetime.now(UTC).year and when != datetime(2026, 1, 1, tzinfo=UTC)
    for field in ("%at", "%ct"):
        assert int(commit_field(repo, branch, field)) == int(when.timestamp())
    # no host path anywhere in what the pull request says
    texts = [authored["description"], authored["title"], authored["diff"]]
    for text in texts:
        assert str(tmp_path) not in text and str(home) not in text
    # the description is written beside the patch, and its path is printed
    described = Path(opened["description_file"])
    assert described.parent == Path(opened["patch_file"]).parent
    assert described.read_text() == authored["description"]
    assert str(described) in stdout
    # the seeded repro fails every time, and says so; no gate was configured
    repro = state.nodes["repro-builder"].outputs["repro"]  # type: ignore[index]
    assert repro["seed"] is not None and repro["fails_every_run"] is True
    assert f"pins the seed {repro['seed']}" in authored["description"]
    assert "usually passes" not in authored["description"]
    assert "review gate" not in authored["description"]
    return authored


@pytest.mark.timeout(660)
@needs("bwrap")
def test_the_pull_request_is_by_the_repositorys_user_on_its_default_branch(
    tmp_path: Path,
) -> None:
    fixture = local_repo(tmp_path, branch="master")
    home = tmp_path / "home"
    run_id, state, stdout = run_hunt(home, fixture.path)
    authored = check_the_pull_request(fixture.path, home, state, stdout, tmp_path)
    branch = authored["branch"]
    for field in ("%an <%ae>", "%cn <%ce>"):
        assert commit_field(fixture.path, branch, field) == "Repo Person <person@example.org>"
    # on the repository's default branch, which the pull request targets
    assert authored["base"] == "master"
    assert git(fixture.path, "rev-parse", f"{branch}~1") == git(fixture.path, "rev-parse", "master")
    assert "`py-hash`" in authored["description"]
    assert cli(home, "replay", run_id, timeout=120).returncode == 0


@pytest.mark.timeout(660)
@needs("bwrap")
def test_the_author_option_and_the_remotes_default_branch(tmp_path: Path) -> None:
    fixture = local_repo(tmp_path, branch="master")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(fixture.path), str(clone)], check=True)
    git(clone, "checkout", "--quiet", "-b", "topic")  # HEAD is not the default branch
    git(clone, "config", "user.name", "Clone Person")
    git(clone, "config", "user.email", "clone@example.org")
    home = tmp_path / "home"
    run_id, state, stdout = run_hunt(home, clone, "--author", "Ada Lovelace <ada@example.org>")
    authored = check_the_pull_request(clone, home, state, stdout, tmp_path)
    branch = authored["branch"]
    assert commit_field(clone, branch, "%an <%ae>") == "Ada Lovelace <ada@example.org>"
    assert commit_field(clone, branch, "%cn <%ce>") == "Clone Person <clone@example.org>"
    assert authored["base"] == "master"  # origin's HEAD, not the checked-out topic
    assert "`clone`" in authored["description"]  # a remote on this host is no name to give
    assert cli(home, "replay", run_id, timeout=120).returncode == 0
