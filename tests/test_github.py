"""Opening a pull request against a fake GitHub on loopback, and the pull request's content.

The client is driven against ``GitHubPeer`` (a real HTTP server, not a mock transport):
exact requests, idempotency across repeats, races and lost answers, retries on 5xx and
dropped connections, and clear errors that never carry the token. The content tests
check that the facts, the statistical claim and a runnable repro script come out of
``pr``, byte-identically every time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.agents.github import (
    GitHubRemote,
    PullRequest,
    idempotency_marker,
    open_pull_request,
    parse_remote,
)
from orchestrator.errors import GitHubError, OrchestratorError
from orchestrator.workloads.flaky_hunt import pull_request as pr
from tests.fresh import in_fresh_processes
from tests.github_peer import TOKEN, GitHubPeer, Reply

pytestmark = pytest.mark.timeout(30)

BRANCH = "orchestrator/flaky-test-x-0123abcd"


@pytest.fixture
def peer() -> Iterator[GitHubPeer]:
    with GitHubPeer() as server:
        yield server


class Sleeps:
    """An injected ``sleep`` that records what it was asked to wait, and waits not at all."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def remote_of(peer: GitHubPeer, repo: str = "octo/widgets") -> GitHubRemote:
    found = parse_remote(f"https://github.com/{repo}.git", api=peer.url)
    assert found is not None
    return found


async def open_pr(peer: GitHubPeer, **kwargs: object) -> PullRequest:
    args: dict[str, object] = {
        "head": BRANCH,
        "base": "main",
        "title": "Fix flaky test",
        "body": "It was flaky.",
        "sleep": Sleeps(),
    }
    args.update(kwargs)
    remote = args.pop("remote", None) or remote_of(peer)
    token = args.pop("token", TOKEN)
    assert isinstance(remote, GitHubRemote) and isinstance(token, str)
    return await open_pull_request(remote, token, **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parse_remote


@pytest.mark.parametrize(
    "url",
    [
        "git@github.com:octo/widgets.git",
        "git@github.com:octo/widgets",
        "github.com:octo/widgets.git",
        "https://github.com/octo/widgets",
        "https://github.com/octo/widgets.git",
        "https://github.com/octo/widgets/",
        "https://x-access-token:s3cret@github.com/octo/widgets.git",
        "ssh://git@github.com/octo/widgets",
        "ssh://git@github.com/octo/widgets.git",
        "ssh://git@ssh.github.com:443/octo/widgets.git",
        "  https://GitHub.com/octo/widgets.git\n",
    ],
)
def test_parse_remote_understands_github_urls(url: str) -> None:
    assert parse_remote(url) == GitHubRemote(owner="octo", repo="widgets")
    assert parse_remote(url) == GitHubRemote(
        owner="octo", repo="widgets", api="https://api.github.com"
    )


@pytest.mark.parametrize(
    "url",
    [
        "",
        "widgets",
        "/home/me/widgets",
        "../widgets",
        "C:\\repos\\widgets",
        "file:///srv/git/widgets.git",
        "https://gitlab.com/octo/widgets.git",
        "git@gitlab.com:octo/widgets.git",
        "https://github.com/octo",
        "https://github.com/octo/widgets/tree/main",
        "https://github.com/octo/widgets?tab=readme",
        "ftp://github.com/octo/widgets",
        "https://github.com/octo/../widgets",
        "https://github.com/oc to/widgets",
        "https://[::1/octo/widgets",
    ],
)
def test_parse_remote_is_none_for_anything_else(url: str) -> None:
    assert parse_remote(url) is None


def test_parse_remote_with_an_api_root_takes_any_host() -> None:
    found = parse_remote(
        "git@ghe.corp.example:team/app.git", api="https://ghe.corp.example/api/v3/"
    )
    assert found == GitHubRemote(owner="team", repo="app", api="https://ghe.corp.example/api/v3")
    assert found.pulls_url == "https://ghe.corp.example/api/v3/repos/team/app/pulls"
    assert parse_remote("/local/path", api="https://ghe.corp.example/api/v3") is None


def test_a_remote_refuses_names_that_would_change_the_path() -> None:
    with pytest.raises(ValueError, match="not a GitHub owner"):
        GitHubRemote(owner="octo/../x", repo="widgets")
    with pytest.raises(ValueError, match="http"):
        GitHubRemote(owner="octo", repo="widgets", api="file:///etc")


# --------------------------------------------------------------------------- opening


async def test_opens_a_pull_request_with_the_exact_request(peer: GitHubPeer) -> None:
    pull = await open_pr(peer, draft=True)

    assert pull == PullRequest(
        number=1, url="https://github.example/octo/widgets/pull/1", head=BRANCH, base="main"
    )
    lookup, create = peer.requests
    assert (lookup.method, lookup.path) == ("GET", "/repos/octo/widgets/pulls")
    assert lookup.query == {"head": f"octo:{BRANCH}", "base": "main", "state": "open"}
    assert (create.method, create.path) == ("POST", "/repos/octo/widgets/pulls")
    assert create.json == {
        "title": "Fix flaky test",
        "head": BRANCH,
        "base": "main",
        "body": "It was flaky.",
        "draft": True,
    }
    for request in (lookup, create):
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["accept"] == "application/vnd.github+json"
        assert request.headers["x-github-api-version"] == "2022-11-28"
        assert request.headers["user-agent"] == "orchestrator"


async def test_opening_twice_returns_the_same_pull_request(peer: GitHubPeer) -> None:
    first = await open_pr(peer)
    again = await open_pr(peer, title="another title")
    assert again == first
    assert len(peer.calls("POST")) == 1
    assert len(peer.pulls("octo/widgets")) == 1
    # another base is another pull request
    other = await open_pr(peer, base="develop")
    assert other.number == 2 and other.base == "develop"


async def test_the_idempotency_key_is_a_hidden_marker(peer: GitHubPeer) -> None:
    key = "run-1/pr-open/1/3"
    first = await open_pr(peer, idempotency_key=key)
    (created,) = peer.calls("POST")
    marker = idempotency_marker(key)
    assert created.json["body"] == f"It was flaky.\n\n{marker}\n"
    assert key not in created.json["body"] and re.fullmatch(
        r"<!-- orchestrator-idempotency-key: [0-9a-f]{32} -->", marker
    )
    # a later attempt (a new key) after a crash finds the pull request the first opened
    assert await open_pr(peer, idempotency_key="run-1/pr-open/2/3") == first
    assert len(peer.calls("POST")) == 1


async def test_a_race_lost_to_another_writer_returns_its_pull_request(
    peer: GitHubPeer,
) -> None:
    theirs = peer.add_pull("octo/widgets", head=BRANCH, base="main", title="theirs")
    peer.script(Reply(200, []))  # our lookup ran just before theirs was created

    pull = await open_pr(peer)

    assert pull.number == theirs["number"] == 1
    assert [r.method for r in peer.requests] == ["GET", "POST", "GET"]
    assert len(peer.pulls("octo/widgets")) == 1


async def test_a_lost_answer_to_a_create_that_worked_opens_no_second(
    peer: GitHubPeer,
) -> None:
    peer.add_pull("octo/widgets", head=BRANCH, base="main")  # what the POST did
    peer.script(Reply(200, []), Reply(502, {"message": "Bad Gateway"}))
    sleeps = Sleeps()

    pull = await open_pr(peer, sleep=sleeps)

    assert pull.number == 1
    assert [r.method for r in peer.requests] == ["GET", "POST", "GET"]
    assert sleeps.delays == [0.5]


async def test_server_errors_and_dropped_connections_are_retried(
    peer: GitHubPeer,
) -> None:
    peer.fail_next(1, 503, "Service Unavailable")
    peer.drop_next(1)
    sleeps = Sleeps()

    pull = await open_pr(peer, sleep=sleeps)

    assert pull.number == 1
    assert sleeps.delays == [0.5, 1.0]
    assert len(peer.calls("POST")) == 1


async def test_retries_give_up_after_three_attempts(peer: GitHubPeer) -> None:
    peer.fail_next(5, 500, "Internal Server Error")
    sleeps = Sleeps()
    with pytest.raises(GitHubError) as caught:
        await open_pr(peer, sleep=sleeps)
    assert caught.value.status == 500
    assert "gave up after 3 attempts" in str(caught.value)
    assert "Internal Server Error" in str(caught.value)
    assert len(peer.requests) == 3 and sleeps.delays == [0.5, 1.0]


async def test_a_wrong_token_is_a_clear_error_without_the_token(
    peer: GitHubPeer,
) -> None:
    wrong = "ghp_wrongWRONGwrong0000000000"
    sleeps = Sleeps()
    with pytest.raises(GitHubError) as caught:
        await open_pr(peer, token=wrong, sleep=sleeps)
    error = caught.value
    assert isinstance(error, OrchestratorError)
    assert error.status == 401 and error.message == "Bad credentials"
    assert "rejected the token" in str(error)
    assert wrong not in str(error) and wrong not in repr(error.args)
    assert sleeps.delays == [] and len(peer.requests) == 1


async def test_an_unknown_repository_is_a_clear_error(peer: GitHubPeer) -> None:
    with pytest.raises(GitHubError) as caught:
        await open_pr(peer, remote=remote_of(peer, "octo/missing"))
    assert caught.value.status == 404
    assert "repository not found: octo/missing" in str(caught.value)
    assert TOKEN not in str(caught.value)


async def test_a_token_without_permission_and_an_echoed_token(peer: GitHubPeer) -> None:
    peer.script(Reply(403, {"message": f"Resource not accessible by integration ({TOKEN})"}))
    with pytest.raises(GitHubError) as caught:
        await open_pr(peer)
    error = caught.value
    assert error.status == 403 and "token lacks permission" in str(error)
    assert TOKEN not in str(error) and TOKEN not in error.message
    assert "Resource not accessible by integration (***)" in error.message


async def test_other_validation_failures_are_not_retried(peer: GitHubPeer) -> None:
    sleeps = Sleeps()
    with pytest.raises(GitHubError) as caught:
        await open_pr(peer, title="", sleep=sleeps)
    assert caught.value.status == 422
    assert "Validation Failed" in str(caught.value) and "missing_field" in str(caught.value)
    assert sleeps.delays == []


async def test_no_token_is_refused_before_asking() -> None:
    remote = GitHubRemote(owner="octo", repo="widgets", api="http://127.0.0.1:9")
    with pytest.raises(GitHubError, match="no usable GitHub token"):
        await open_pull_request(remote, "  ", head="b", base="main", title="t", body="")


# --------------------------------------------------------------------------- content

SHA = "3f1c2d4e5a6b7c8d9e0f11223344556677889900"
PARENT = "aa11bb22cc33dd44ee55ff6677889900aabbccdd"


def facts(**changes: object) -> pr.HuntFacts:
    base: dict[str, object] = {
        "repo": "octo/widgets",
        "test": "tests/test_cache.py::test_expiry[slow]",
        "runner": "pytest",
        "runs": 200,
        "failures": 7,
        "rate": 0.035,
        "low": 0.0171,
        "high": 0.0705,
        "first_bad": SHA,
        "first_bad_subject": "Cache: expire entries @alice asked for (#42)",
        "first_bad_diffstat": " src/cache.py | 12 +++++++-----\n 1 file changed",
        "parent": PARENT,
        "repro": "python -m pytest -q 'tests/test_cache.py::test_expiry[slow]'",
        "trials_per_commit": 130,
        "miss_chance": 0.01,
        "fix_diff": None,
        "fix_verified": False,
        "rate_after": None,
        "bisect_log": [f"{PARENT} good (130/130 passed)", f"{SHA} bad (1 failure in 41)"],
    }
    base.update(changes)
    return pr.HuntFacts.model_validate(base)


def test_the_description_states_the_facts() -> None:
    f = facts()
    text = pr.description(f)

    assert "`tests/test_cache.py::test_expiry[slow]`" in text and "`octo/widgets`" in text
    assert "`pytest`" in text
    assert f"- Commit: `{SHA}`" in text and f"`{PARENT}`" in text
    assert "`Cache: expire entries @alice asked for (#42)`" in text  # pings nobody
    assert "src/cache.py | 12 +++++++-----" in text
    assert "7/200 = 3.5% (95% CI 1.71% to 7.05%)" in text
    assert f"```sh\n{f.repro}\n```" in text
    assert f"`{pr.repro_path(f.test)}`" in text and "up to 130 times" in text
    assert "Each commit was run 130 times" in text
    assert "chance of calling a bad commit good at ≤1%" in text
    for line in f.bisect_log:
        assert line in text
    assert "No fix proposed." in text and "review gate" not in text  # no gate configured
    assert "```diff" not in text


def test_the_description_with_a_verified_fix() -> None:
    diff = "--- a/src/cache.py\n+++ b/src/cache.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    f = facts(fix_diff=diff, fix_verified=True, rate_after=(0, 200))
    text = pr.description(f)
    assert f"```diff\n{diff}```" in text
    assert "- After the fix: 0/200 = 0% (95% CI 0% to 1.88%)" in text
    assert "Verified: with this change the test failed 0/200 runs." in text
    assert "No fix proposed" not in text
    assert pr.title(f).startswith("Fix flaky test tests/test_cache.py::test_expiry[slow] (")


def test_the_description_without_a_first_bad_commit_and_with_backticks() -> None:
    f = facts(first_bad=None, parent=None, repro="echo ```; false", test="t`x`")
    text = pr.description(f)
    assert "Bisection did not isolate a first failing commit." in text
    assert "````sh\necho ```; false\n````" in text
    assert "``t`x` ``" not in text and "`` t`x` ``" in text


def test_the_title_and_branch_name() -> None:
    f = facts()
    assert pr.title(f) == (
        "Flaky test tests/test_cache.py::test_expiry[slow] (fails 7/200, since 3f1c2d4e5a6b)"
    )
    assert len(pr.title(facts(test="x" * 500))) <= pr.TITLE_LIMIT + 2

    branch = pr.branch_name(f.test)
    assert re.fullmatch(r"orchestrator/flaky-[a-z0-9-]+-[0-9a-f]{8}", branch)
    slug = branch.removeprefix("orchestrator/flaky-").rsplit("-", 1)[0]
    assert slug == "tests-test-cache-py-test-expiry-slow"
    # the same readable slug, different tests, different branches
    assert pr.branch_name("a.b") != pr.branch_name("a_b")
    long = pr.branch_name("tests/" + "very_long_name_" * 10)
    assert len(long.removeprefix("orchestrator/flaky-")) <= 40 + 9
    assert re.fullmatch(r"orchestrator/flaky-[0-9a-f]{8}", pr.branch_name("测试"))
    assert pr.branch_name("tést").startswith("orchestrator/flaky-test-")
    if shutil.which("git"):
        for name in (branch, long, pr.branch_name("..//@{x}.lock")):
            subprocess.run(
                ["git", "check-ref-format", "--branch", name], check=True, capture_output=True
            )


def pr_texts(facts_json: list[dict[str, object]], tests: list[str]) -> list[object]:
    """Everything ``pr`` writes for each of these facts, and the branch names of ``tests``."""
    written: list[object] = [pr.branch_name(test) for test in tests]
    for f in map(pr.HuntFacts.model_validate, facts_json):
        written += [pr.title(f), pr.description(f), pr.repro_script(f), pr.repro_path(f.test)]
    return written


def test_the_content_is_the_same_after_a_restart() -> None:
    """A resumed hunt must write the same title, description, script and branch name."""
    diff = "--- a/src/cache.py\n+++ b/src/cache.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    verified = facts(fix_diff=diff, fix_verified=True, rate_after=(0, 200))
    cases = [f.model_dump(mode="json") for f in (facts(), verified, facts(first_bad=None))]
    tests = ["tests/test_cache.py::test_expiry[slow]", "a.b", "a_b", "测试", "tést", "x" * 200]
    here = pr_texts(cases, tests)
    assert in_fresh_processes("tests.test_github:pr_texts", cases, tests) == [here, here]


def run_script(tmp_path: Path, f: pr.HuntFacts, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "repro.sh"
    script.write_text(pr.repro_script(f))
    subprocess.run(["sh", "-n", str(script)], check=True)
    return subprocess.run(
        ["sh", str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=10
    )


def test_the_repro_script_is_posix_sh_and_explains_itself(tmp_path: Path) -> None:
    f = facts()
    script = pr.repro_script(f)
    assert script.startswith("#!/bin/sh\n") and "\nset -eu\n" in script
    assert "REPRO_COMMAND='python -m pytest -q '\\''tests/test_cache.py" in script
    comments = "\n".join(line for line in script.splitlines() if line.startswith("#"))
    for fact in (f.test, f.repo, "7/200 = 3.5%", SHA, PARENT, f.first_bad_subject, "130"):
        assert fact in comments


def test_the_repro_script_exits_non_zero_when_the_failure_reproduces(tmp_path: Path) -> None:
    failed = run_script(tmp_path, facts(repro="false"))
    assert failed.returncode == 1
    assert "reproduced: run 1 of 130 failed" in failed.stderr

    passed = run_script(tmp_path, facts(repro="true"), "3")
    assert passed.returncode == 0
    assert "all 3 runs passed" in passed.stderr

    # flaky: passes once, then fails with its own status
    flaky = "n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; [ $n -lt 1 ] || exit 3"
    result = run_script(tmp_path, facts(repro=flaky))
    assert result.returncode == 3
    assert (tmp_path / "count").read_text().strip() == "2"

    assert run_script(tmp_path, facts(repro="true"), "lots").returncode == 2


def test_the_repro_script_keeps_untrusted_text_out_of_its_code(tmp_path: Path) -> None:
    evil = "t\ntouch pwned-by-test-id\n"
    f = facts(
        test=evil,
        first_bad_subject="x\rtouch pwned-by-subject",
        repro="echo 'it' \"quotes\" $HOME `true`; exit 0",
    )
    result = run_script(tmp_path, f, "1")
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("pwned-*"))
    code = [line for line in pr.repro_script(f).splitlines() if not line.startswith("#")]
    assert not any("pwned" in line for line in code)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_repro_script_runs_from_its_repository_root(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    (tmp_path / "at-root").write_text("")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    f = facts(repro="test -f at-root")
    script = tmp_path / pr.repro_path(f.test)
    script.parent.mkdir()
    script.write_text(pr.repro_script(f))
    result = subprocess.run(
        ["sh", str(script), "1"], cwd=tmp_path / "deep" / "er", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
