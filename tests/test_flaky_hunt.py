"""The flaky hunt end to end: real git fixture repositories, real reruns of their suites
in bwrap sandboxes, driven through the `orchestrator flaky-hunt` command line.

What the hunt claims (the rate, the culprit, the repro seed, the branch) is checked
against the fixtures' ground truth and, for the seeds, independently of the Orchestrator
with plain ``/usr/bin/python3`` runs in git worktrees on the host.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Runtime
from orchestrator.agents import github
from orchestrator.agents.intake import repo_intake
from orchestrator.ledger.events import (
    EffectRecorded,
    Event,
    NodeDispatched,
    NodeResumed,
    NodeSucceeded,
    decode,
)
from orchestrator.ledger.state import RunState
from orchestrator.workloads.flaky_hunt import rerun_driver, stats
from orchestrator.workloads.flaky_hunt.nodes.bisector import MISS
from orchestrator.workloads.flaky_hunt.nodes.reruns import flake_rerunner
from tests.backends import needs
from tests.conftest import cli
from tests.crashing import processes_with, wait_until
from tests.flaky_repos import TRUE_RATE, git, js_repo, python_repo
from tests.github_peer import TOKEN, GitHubPeer
from tests.http_peer import HttpPeer

pytestmark = needs("bwrap")

PYTHON = "/usr/bin/python3"  # what the sandboxes run (the venv is made from it)
SEED = 1  # --seed 1: 29 of 300 runs fail, 95% CI 6.8% to 13.5% (contains TRUE_RATE)
UNITTEST = ("--test", "python -m unittest", "--sandbox", "bwrap")
BRANCHES = "refs/heads/orchestrator/"


# ---- helpers ----------------------------------------------------------------------------


@dataclass
class Hunt:
    run_id: str
    state: RunState
    events: list[Event]

    def out(self, node: str) -> dict[str, Any]:
        outputs = self.state.nodes[node].outputs
        assert outputs is not None, f"{node} has no outputs ({self.state.nodes[node].status})"
        return outputs

    def rate(self) -> dict[str, Any]:
        report = self.out("flake-report")["report"]
        rate: dict[str, Any] = next(r for r in report["rates"] if r["test"] == report["target"])
        return rate


def load(home: Path, run_id: str | None = None) -> Hunt:
    with Runtime(home=home) as rt:
        rid = run_id or rt.runs()[-1].run_id
        return Hunt(rid, rt.state(rid), [decode(r.body) for r in rt.store.read(rid)])


def head_seq(home: Path, run_id: str) -> int:
    with Runtime(home=home) as rt:
        return rt.store.read(run_id)[-1].seq


def hunt(
    home: Path,
    repo: Path | str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 150,
) -> subprocess.CompletedProcess[str]:
    return cli(home, "flaky-hunt", "--repo", str(repo), *args, env=env, timeout=timeout)


def spawn_cli(home: Path, *args: str, log: str) -> subprocess.Popen[str]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / log, "a") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "--home", str(home), *args],
            stdout=sink,
            stderr=sink,
            text=True,
            cwd=home.parent,
        )


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def branches(repo: Path) -> list[str]:
    listed = git(repo, "for-each-ref", "--format=%(refname)", BRANCHES)
    return [line.removeprefix("refs/heads/") for line in listed.splitlines()]


def replay_ok(home: Path, run_id: str) -> None:
    done = cli(home, "replay", run_id, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replay OK" in done.stdout


def bisect_logs(effects: list[EffectRecorded]) -> list[EffectRecorded]:
    return [
        e
        for e in effects
        if e.effect == "log" and isinstance(e.request, dict) and e.request["message"] == "bisect"
    ]


def checkouts(effects: list[EffectRecorded]) -> list[str]:
    """The commits an effect list checked out (each bisect probe starts with one)."""
    return [
        e.request["argv"][-1]
        for e in effects
        if e.effect == "exec" and e.request["argv"][:2] == ["git", "checkout"]
    ]


def node_events(events: list[Event], kind: type[Any], node: str) -> list[Any]:
    return [e for e in events if isinstance(e, kind) and e.node == node]


def host_unittest(tree: Path, seed: int, *test: str) -> subprocess.CompletedProcess[str]:
    """The suite (or one test) on the host, outside any sandbox, with PYTHONHASHSEED=seed."""
    return subprocess.run(
        [PYTHON, "-m", "unittest", *test],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": str(seed), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def worktree(repo: Path, sha: str, dest: Path) -> Path:
    git(repo, "worktree", "add", "--quiet", "--detach", str(dest), sha)
    return dest


def check_branch(fixture_repo: Path, hunt_: Hunt, base: str) -> str:
    """The hunt's branch is in the repository: one commit on ``base`` adding only the
    executable repro script, the very patch that was authored (and written out)."""
    authored = hunt_.out("pr-author")["authored"]
    opened = hunt_.out("pr-open")["opened"]
    branch = authored["branch"]
    assert branches(fixture_repo) == [branch]
    # the test's name, then the hunt's own tag (the random part of its run id)
    named = re.fullmatch(r"orchestrator/(flaky-[a-z0-9-]+-[0-9a-f]{8})-([0-9a-f]{6})", branch)
    assert named and hunt_.run_id.endswith("-" + named[2])
    assert opened["branch"] == branch
    assert opened["published"] == git(fixture_repo, "rev-parse", branch)
    assert git(fixture_repo, "rev-parse", f"{branch}~1") == base
    changed = git(fixture_repo, "diff-tree", "--no-commit-id", "-r", "--name-only", branch)
    assert changed.splitlines() == [f"flaky-repro/{named[1]}.sh"]
    assert git(fixture_repo, "ls-tree", branch, changed).startswith("100755 blob ")
    assert Path(opened["patch_file"]).read_text() == authored["diff"]
    assert git(fixture_repo, "log", "-1", "--format=%s", branch) == authored["title"]
    return changed


# ---- 1. the hash-seed flake: rate, culprit, repro, checked on the host too ------------------


@pytest.mark.timeout(300)  # the first batch runs alone (the probe), then the rest
def test_hunt_names_the_culprit_and_a_seed_that_reproduces_outside_the_orchestrator(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path)
    done = hunt(home, fixture.path, *UNITTEST, "--runs", "300", "--seed", str(SEED), timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    h = load(home)
    assert h.state.status == "succeeded"

    report = h.out("flake-report")["report"]
    rate = h.rate()
    assert report["runs"] == 300
    assert report["target"] == fixture.test_id
    assert [r["test"] for r in report["rates"]] == [fixture.test_id]  # nothing else fails
    assert rate["runs"] == 300
    assert report["failures"] == rate["failures"] == len(report["failing_seeds"])
    assert rate["low"] <= TRUE_RATE <= rate["high"], rate
    # every rerun is on the record, each with its own seed and outcome, every batch once
    # (the first by the probe, the other 11 mapped after it)
    results = [h.out("rerun-probe")["first"]]
    results += [h.out(f"flake-rerunner[{i}]")["result"] for i in range(11)]
    runs = [run for result in results for run in result["runs"]]
    assert len({run["seed"] for run in runs}) == 300
    assert sorted(result["index"] for result in results) == list(range(12))
    assert {run["outcome"] for run in runs} == {"passed", "test-failed"}
    assert all((run["outcome"] == "test-failed") == bool(run["failed"]) for run in runs)
    failing = [run["seed"] for run in runs if run["failed"]]
    assert set(failing) == set(report["failing_seeds"])
    assert all(run["failed"] in ([], [fixture.test_id]) for run in runs)

    found = h.out("bisector")["bisected"]
    assert (found["first_bad"], found["parent"]) == (fixture.culprit, fixture.parent)
    assert found["subject"] == "step 17 (the culprit)"
    assert found["trials_per_commit"] == stats.trials_to_detect(rate["low"], MISS)
    probed = [line.split(":")[0] for line in found["log"]]
    assert len(probed) == len(set(probed))  # no commit probed twice
    assert len(probed) <= 12  # about log2(30) after stepping back, not a linear walk

    repro = h.out("repro-builder")["repro"]
    assert repro["fails_on_bad"] and repro["passes_on_parent"]
    seed = repro["seed"]
    assert seed == report["failing_seeds"][0]
    assert f"PYTHONHASHSEED={seed}" in repro["command"]
    assert repro["command"].endswith(f"python -m unittest {fixture.test_id}")

    # Independently of the Orchestrator: plain python3 on the host, in worktrees.
    bad = worktree(fixture.path, fixture.culprit, tmp_path / "wt-bad")
    good = worktree(fixture.path, fixture.parent, tmp_path / "wt-good")
    for s in report["failing_seeds"]:
        on_bad = host_unittest(bad, s, fixture.test_id)
        assert on_bad.returncode == 1, (s, on_bad.stderr)
        assert "registry picked alpha first" in on_bad.stderr
        on_parent = host_unittest(good, s)
        assert on_parent.returncode == 0, (s, on_parent.stderr)
        assert re.search(r"^Ran \d+ tests in .*\n\nOK$", on_parent.stderr.strip(), re.M | re.S)
    # and the seeds the reruns saw pass do pass: the seed, not luck, decides
    for s in [run["seed"] for run in runs if not run["failed"]][:10]:
        assert host_unittest(bad, s, fixture.test_id).returncode == 0, s

    script = check_branch(fixture.path, h, base=fixture.commits[-1])
    text = git(fixture.path, "show", f"{h.out('pr-author')['authored']['branch']}:{script}")
    assert f"PYTHONHASHSEED={seed}" in text and fixture.test_id in text
    summary = h.out("notifier")["summary"]
    assert fixture.culprit in summary and f"{rate['failures']}/300" in summary
    assert fixture.culprit in done.stdout.replace("\n", "")
    replay_ok(home, h.run_id)


# ---- 2. a test broken for good: rate 1, few trials per commit, with --regression -----------


@pytest.mark.timeout(120)
def test_a_test_broken_for_good_is_bisected_with_few_trials_as_a_regression(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, kind="always")
    # given as a URL: cloned by git, and the branch pushed back rather than fetched
    url = f"file://{fixture.path}"
    done = hunt(
        home, url, *UNITTEST, "--runs", "40", "--batch", "20", "--seed", "7", "--regression"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    h = load(home)
    report = h.out("flake-report")["report"]
    rate = h.rate()
    assert (report["runs"], report["failures"], report["target"]) == (40, 40, fixture.test_id)
    assert rate["rate"] == 1.0 and rate["high"] == 1.0
    found = h.out("bisector")["bisected"]
    assert (found["first_bad"], found["parent"]) == (fixture.culprit, fixture.parent)
    # 40/40 failures put the 95% lower bound at 0.912; a 1% miss then needs 2 trials
    # (1 trial would need the bound at 0.99, i.e. about 380 all-failing runs)
    assert rate["low"] == pytest.approx(40 / (40 + 1.959964**2), abs=1e-3)
    assert found["trials_per_commit"] == stats.trials_to_detect(rate["low"], MISS) == 2
    used = [int(m.group(1)) for line in found["log"] if (m := re.search(r"after (\d+)", line))]
    assert used and len(used) == len(found["log"]) and max(used) <= 2
    repro = h.out("repro-builder")["repro"]
    assert repro["fails_on_bad"] and repro["passes_on_parent"]
    check_branch(fixture.path, h, base=fixture.commits[-1])


@pytest.mark.timeout(270)
def test_a_commit_that_does_not_build_is_skipped_like_git_bisect_skip(
    tmp_path: Path, home: Path, http_peer: HttpPeer
) -> None:
    # Commit 18 (between the culprit and HEAD, inside the range bisection searches) has a
    # syntax error: probing it must give "skip", and the culprit is still named exactly.
    fixture = python_repo(tmp_path, culprit=17, broken=18)
    hook = f"webhook={http_peer.url}/hooks/flaky"
    args = ("--runs", "200", "--seed", "1", "--notify", hook)
    done = hunt(home, fixture.path, *UNITTEST, *args, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    # the notifier sent the summary to the run's sink (as the run sent its success)
    (sent,) = [r.json for r in http_peer.requests if r.json["kind"] == "summary"]
    assert [r.json["kind"] for r in http_peer.requests].count("outcome") == 1
    assert sent["kind"] == "summary" and fixture.culprit in sent["text"]
    assert "is skip" in done.stderr  # the live progress shows the skipped step
    h = load(home)
    found = h.out("bisector")["bisected"]
    assert (found["first_bad"], found["parent"]) == (fixture.culprit, fixture.parent)
    skipped = [line for line in found["log"] if ": skip after" in line]
    assert [line.split(":")[0] for line in skipped] == [fixture.commits[17][:12]]
    assert "left between" in done.stderr and "commit(s) between good" in done.stderr


# ---- 3. SIGKILL during the reruns and during the bisection; resume twice ------------------


def rerunners_succeeded(state: RunState) -> int:
    return sum(
        1 for ns in state.nodes.values() if ns.base == "flake-rerunner" and ns.status == "succeeded"
    )


def no_leftovers(home: Path) -> None:
    """The killed process's sandboxes die with it (bwrap --die-with-parent)."""
    deadline = time.monotonic() + 10
    while (left := processes_with(str(home))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], left


def bisect_checkpoints(state: RunState) -> int:
    ns = state.nodes.get("bisector")
    return 0 if ns is None else sum(1 for e in ns.journal if e.effect == "checkpoint")


@pytest.mark.timeout(240)
def test_a_killed_hunt_resumes_without_redoing_reruns_or_bisect_steps(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path)
    # 4 nodes at a time: the 12 batches run in waves, so some are done and some not yet
    args = ["flaky-hunt", "--repo", str(fixture.path), *UNITTEST, "--runs", "300"]
    proc = spawn_cli(home, *args, "--seed", str(SEED), "--concurrency", "4", "-q", log="a.log")
    try:
        wait_until(home, lambda s: rerunners_succeeded(s) >= 3, timeout=150)
    finally:
        kill(proc)
    no_leftovers(home)
    run_id = load(home).run_id
    first_kill = head_seq(home, run_id)
    at_kill = load(home, run_id).state
    done_before = {
        ns.id
        for ns in at_kill.nodes.values()
        if ns.base == "flake-rerunner" and ns.status == "succeeded"
    }
    assert 3 <= len(done_before) < 11, done_before
    assert "bisector" not in at_kill.nodes or at_kill.nodes["bisector"].status == "pending"

    # resume, and kill again once the bisector has finished (and checkpointed) two steps
    proc = spawn_cli(home, "resume", run_id, "-q", log="b.log")
    try:
        state = wait_until(home, lambda s: bisect_checkpoints(s) >= 2, timeout=90)
    finally:
        kill(proc)
    assert state.nodes["bisector"].status == "running"
    no_leftovers(home)
    second_kill = head_seq(home, run_id)
    before = load(home, run_id)
    assert before.state.nodes["bisector"].status == "running", "the bisector finished first"
    journal = before.state.nodes["bisector"].journal
    steps_before = [e.request["fields"]["commit"] for e in bisect_logs(journal)]
    assert len(steps_before) >= 2

    done = cli(home, "resume", run_id, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    h = load(home, run_id)
    assert h.state.status == "succeeded"
    found = h.out("bisector")["bisected"]
    assert (found["first_bad"], found["parent"]) == (fixture.culprit, fixture.parent)
    assert h.out("flake-report")["report"]["runs"] == 300

    # reruns that had succeeded before the first kill were never dispatched again; the
    # rest were, and every batch succeeded exactly once
    for i in range(11):
        node = f"flake-rerunner[{i}]"
        dispatched = node_events(h.events, NodeDispatched, node)
        assert len(node_events(h.events, NodeSucceeded, node)) == 1, node
        if node in done_before:
            assert len(dispatched) == 1, node
            assert dispatched[0].seq <= first_kill
            assert node_events(h.events, NodeResumed, node) == []
    resumed_after_first = {
        e.node for e in h.events if isinstance(e, NodeResumed) and first_kill < e.seq
    }
    assert not resumed_after_first & done_before
    in_flight = {
        ns.id
        for ns in at_kill.nodes.values()
        if ns.base == "flake-rerunner" and ns.status == "running"
    }
    assert in_flight <= resumed_after_first  # taken up again

    # the bisector went on from its last checkpoint: nothing before it was done again
    resumed = [e for e in node_events(h.events, NodeResumed, "bisector") if e.seq > second_kill]
    assert len(resumed) == 1
    start = resumed[0].from_index
    assert start > 0 and resumed[0].snapshot is not None
    last_checkpoint = max(e.index for e in journal if e.effect == "checkpoint")
    assert start >= last_checkpoint
    after = [e for e in node_events(h.events, EffectRecorded, "bisector") if e.seq > resumed[0].seq]
    assert after and min(e.index for e in after) >= start
    kept = [e for e in journal if e.index < start]
    kept_steps = [e.request["fields"]["commit"] for e in bisect_logs(kept)]
    assert len(kept_steps) >= 2
    assert not set(kept_steps) & set(checkouts(after)), "a bisect step was performed again"
    final_steps = [
        e.request["fields"]["commit"] for e in bisect_logs(h.state.nodes["bisector"].journal)
    ]
    assert final_steps[: len(kept_steps)] == kept_steps
    assert len(final_steps) == len(set(final_steps)) == len(found["log"])
    replay_ok(home, run_id)


# ---- 4. GitHub: parked at review, one pull request after approval, no token on record -----


@pytest.mark.timeout(150)
def test_the_pull_request_waits_for_review_and_opens_once_on_approval(
    tmp_path: Path, home: Path, github_peer: GitHubPeer
) -> None:
    fixture = python_repo(tmp_path, kind="always")
    key = tmp_path / "keys" / "reviewer.key"
    made = cli(home, "keys", "init", "--key", str(key))
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    env = {"GITHUB_TOKEN": TOKEN}
    outputs: list[str] = []

    parked = hunt(
        home,
        fixture.path,
        *UNITTEST,
        "--runs",
        "40",
        "--batch",
        "20",
        "--approver",
        f"review={public}",
        "--github",
        "octo/widgets",
        "--github-api",
        github_peer.url,
        "--regression",
        env=env,
    )
    outputs += [parked.stdout, parked.stderr]
    assert parked.returncode == 3, parked.stdout + parked.stderr
    h = load(home)
    assert h.state.plan_ref == "orchestrator.workloads.flaky_hunt:reviewed"
    author = h.state.nodes["pr-author"]
    assert author.held is not None and author.held.gate == "review"
    held = author.held.outputs
    authored = held["authored"]
    assert held["diff"] == authored["diff"]
    assert held["diff"].startswith("From ") and "Subject: [PATCH] " in held["diff"]
    assert "flaky-repro/" in held["diff"] and fixture.test_id in authored["description"]
    assert authored["facts"]["first_bad"] == fixture.culprit
    assert h.state.nodes["pr-open"].status == "pending"
    assert github_peer.requests == []  # nothing sent to GitHub yet
    assert branches(fixture.path) == []  # nor published

    approved = cli(home, "approve", h.run_id, "review", "--key", str(key), env=env, timeout=120)
    outputs += [approved.stdout, approved.stderr]
    assert approved.returncode == 0, approved.stdout + approved.stderr
    h = load(home, h.run_id)
    assert h.state.status == "succeeded"
    pulls = github_peer.pulls("octo/widgets")
    assert len(pulls) == 1
    assert len(github_peer.calls("POST")) == 1
    pull = pulls[0]
    assert pull["title"] == authored["title"]
    # the body is the reviewed description plus the marker of the call that opened it
    (call,) = [
        e
        for e in h.state.nodes["pr-open"].journal
        if e.effect == "tool" and e.request["name"] == "open-pull-request"
    ]
    marker = github.idempotency_marker(call.key)
    assert pull["body"] == f"{authored['description'].rstrip()}\n\n{marker}\n"
    assert (pull["head"]["ref"], pull["base"]["ref"]) == (authored["branch"], "main")
    opened = h.out("pr-open")["opened"]
    assert opened["pull_request"] in (pull["html_url"], pull["url"])
    assert h.out("pr-author")["authored"] == authored  # what was reviewed is what was opened
    check_branch(fixture.path, h, base=fixture.commits[-1])
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in github_peer.requests)

    # the token is in no file of the home (ledger DB, WAL, checkpoints) nor any output
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.db" for p in files)
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert not any(TOKEN in text for text in outputs)
    replay_ok(home, h.run_id)


# ---- 5. JavaScript: npm + Vitest, install in the sandbox, Math.random flake ---------------


def npm_registry_unreachable(cwd: Path) -> str | None:
    """Why ``npm install`` cannot fetch from here, or None: npm's own ``ping`` of the
    registry it is configured with (through its configured proxy), given 3 s."""
    if shutil.which("npm") is None:
        return "npm is not installed"
    argv = ["npm", "ping", "--fetch-timeout=3000", "--fetch-retries=0"]
    try:
        pinged = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`npm ping` did not finish within 15 s"
    if pinged.returncode == 0:
        return None
    said = re.findall(r"^npm error (?!code |syscall |errno |\s)(.+)$", pinged.stderr, re.M)
    return f"npm's registry is unreachable from this host: {(said or ['no answer'])[0]}"


@pytest.mark.slow
@pytest.mark.timeout(660)  # ~6 s per Vitest run here: reruns, bisection and repro take minutes
def test_a_vitest_flake_is_found_with_npm_installed_in_the_sandbox(
    tmp_path: Path, home: Path
) -> None:
    repo = js_repo(tmp_path)
    if why := npm_registry_unreachable(repo):
        pytest.skip(why)
    bad, good = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    # 60 runs: P(no failure at all at 10%) = 0.9**60 = 0.2%
    done = hunt(
        home,
        repo,
        *("--test", "npm test", "--sandbox", "bwrap"),
        *("--runs", "60", "--batch", "30", "--good", "HEAD~1"),
        timeout=600,
    )
    h = load(home)
    intake_ns = h.state.nodes["repo-intake"]
    if intake_ns.status != "succeeded":  # say why, e.g. no DNS or registry in the sandbox
        pytest.fail(f"npm install in the sandbox failed: {intake_ns.error}\n{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr

    runner = h.out("repo-intake")["intake"]["runner"]
    assert (runner["name"], runner["framework"]) == ("npm", "vitest")
    assert runner["install"] == [["npm", "install", "--no-audit", "--no-fund"]]
    installs = [e for e in intake_ns.journal if e.effect == "exec"]
    assert [e.request["argv"][:2] for e in installs] == [["npm", "install"]]
    assert installs[0].response["ok"]["code"] == 0
    assert re.search(r"added \d+ packages", installs[0].response["ok"]["stdout"])
    # installed in the sandbox's view and published from there, not on the host repo
    prepared = Path(h.out("repo-intake")["prepared"])
    assert (prepared / "node_modules" / "vitest" / "package.json").is_file()
    assert not (repo / "node_modules").exists()
    assert "net" in repo_intake.effects and "net" not in flake_rerunner.effects

    report = h.out("flake-report")["report"]
    rate = h.rate()
    assert report["runs"] == 60
    assert report["target"] == "test/flaky.test.js > picks a winner"
    assert report["failures"] > 0 and rate["rate"] < 0.5
    found = h.out("bisector")["bisected"]
    assert (found["first_bad"], found["parent"], found["good"]) == (bad, good, good)
    assert found["subject"] == "add the winner test"
    assert (
        "npm test -- test/flaky.test.js -t 'picks a winner'"
        in (h.out("repro-builder")["repro"]["command"])
    )
    # the branch holds the repro script only, not npm's package-lock.json
    check_branch(repo, h, base=bad)


# ---- 6. honest verdicts: runs that never reach the test; a test failing on every run -------


def runs_on_record(h: Hunt) -> int:
    """How many runs of the test command the ledger records, from the driver's own output."""
    return sum(
        len(rerun_driver.parse_driver_output(e.response["ok"]["stdout"]))
        for e in h.events
        if isinstance(e, EffectRecorded)
        and e.effect == "exec"
        and e.request["argv"][:2] == ["python3", "-c"]
        and "ok" in (e.response or {})
    )


def dispatched(h: Hunt) -> set[str]:
    return {e.node for e in h.events if isinstance(e, NodeDispatched)}


def stopped_without_a_branch(
    fixture_repo: Path, h: Hunt, done: subprocess.CompletedProcess[str]
) -> str:
    """The hunt failed, exited non-zero, bisected nothing and wrote no branch; its output
    (whitespace folded) is returned."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert h.state.status == "failed"
    assert not {"bisector", "repro-builder", "pr-author", "pr-open"} & dispatched(h)
    assert branches(fixture_repo) == []
    assert git(fixture_repo, "branch", "--list").split() == ["*", "main"]
    return " ".join((done.stdout + done.stderr).split())


@pytest.mark.timeout(150)
def test_a_mistyped_command_stops_after_the_first_batch_naming_the_cause(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, commits=3, culprit=2)
    args = ("--test", "pyhton -m unittest", "--sandbox", "bwrap", "--runs", "200", "--batch", "20")
    done = hunt(home, fixture.path, *args)
    h = load(home)
    text = stopped_without_a_branch(fixture.path, h, done)
    assert "the test command could not run: `pyhton`: command not found" in text
    assert "cannot run 'pyhton'" in text  # the excerpt of the output
    assert "flaky test" not in text and "reproduced" not in text
    # only the first batch ran: 20 runs on the record, no other batch dispatched
    assert runs_on_record(h) == 20
    assert not any(node.startswith("flake-rerunner") for node in dispatched(h))
    assert h.state.nodes["rerun-probe"].status == "failed"


@pytest.mark.timeout(150)
def test_tests_that_cannot_be_collected_stop_after_the_first_batch(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, commits=3, culprit=2)
    test = "python -m unittest tests.test_nowhere"
    done = hunt(home, fixture.path, "--test", test, "--sandbox", "bwrap", "--runs", "100")
    h = load(home)
    text = stopped_without_a_branch(fixture.path, h, done)
    assert "the tests could not be collected" in text
    assert "No module named 'tests.test_nowhere'" in text
    assert runs_on_record(h) == 25
    assert not any(node.startswith("flake-rerunner") for node in dispatched(h))


@pytest.mark.timeout(150)
def test_a_test_failing_on_every_run_is_consistently_failing_not_flaky(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, kind="always", commits=5, culprit=3)
    done = hunt(home, fixture.path, *UNITTEST, "--runs", "40", "--batch", "20")
    h = load(home)
    text = stopped_without_a_branch(fixture.path, h, done)
    assert f"consistently failing, not flaky: {fixture.test_id} failed in all 40 runs" in text
    assert "--regression" in text
    assert runs_on_record(h) == 40
    assert h.state.nodes["flake-report"].status == "failed"


@pytest.mark.timeout(420)  # pip installs pytest from its index
def test_a_pytest_command_on_a_project_that_does_not_declare_pytest_installs_it(
    tmp_path: Path, home: Path
) -> None:
    fixture = python_repo(tmp_path, kind="always", commits=5, culprit=3)
    test = "python -m pytest -q tests/test_calc.py"
    done = hunt(
        home, fixture.path, "--test", test, "--sandbox", "bwrap", "--runs", "20", timeout=400
    )
    h = load(home)
    intake_ns = h.state.nodes["repo-intake"]
    if intake_ns.status != "succeeded":  # pip could not reach its index from the sandbox
        assert "pip" in str(intake_ns.error) and done.returncode != 0
        pytest.skip(f"pytest could not be installed in the sandbox: {intake_ns.error}")
    runner = h.out("repo-intake")["intake"]["runner"]
    assert runner["framework"] == "pytest" and runner["install"][1][-1] == "pytest"
    # the runs reached the test: it failed, on every run (never "No module named pytest")
    runs = h.out("rerun-probe")["first"]["runs"]
    assert {run["outcome"] for run in runs} == {"test-failed"}
    assert {tuple(run["failed"]) for run in runs} == {("tests/test_calc.py::TestCalc::test_add",)}
    text = stopped_without_a_branch(fixture.path, h, done)
    assert "consistently failing, not flaky: tests/test_calc.py::TestCalc::test_add" in text
