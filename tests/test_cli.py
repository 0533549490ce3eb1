"""The command line, run for real in child processes."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from orchestrator import Runtime
from tests.backends import backends
from tests.conftest import cli
from tests.crashing import PLANS, spawn_run, wait_until
from tests.s3server import Moto

BASIC = PLANS / "basic.py"


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_plan_check_reports_every_problem_and_exits_2(home: Path) -> None:
    result = cli(home, "plan", "check", f"{BASIC}:broken")
    assert result.returncode == 2
    for kind in ("unknown_input", "unknown_port", "bad_map"):
        assert kind in result.stderr
    assert "split.text" in result.stderr and "join.texts" in result.stderr
    as_json = cli(home, "plan", "check", "--json", f"{BASIC}:broken")
    assert as_json.returncode == 2
    assert len(json.loads(as_json.stdout)) == 4
    ok = cli(home, "plan", "check", f"{BASIC}:plan")
    assert ok.returncode == 0 and "OK" in ok.stdout
    refused = cli(home, "plan", "check", f"{BASIC}:plan", "--allow", "net")
    assert refused.returncode == 2
    # the default is permissive, and says why
    run_help = " ".join(cli(home, "run", "--help").stdout.split())
    assert "[default: all: fs, net, host-net, llm]" in run_help
    assert "each node still gets only the effects it declares" in run_help
    assert "[effect_not_allowed] join" in refused.stderr and "allowed: net" in refused.stderr
    no_traceback(result)


def test_running_an_invalid_plan_writes_nothing(home: Path) -> None:
    result = cli(home, "run", f"{BASIC}:broken", "--input", "text=x")
    assert result.returncode == 2
    assert "problem" in result.stderr
    with Runtime(home=home) as rt:
        assert rt.store.runs() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py:plan"], "there is no file"),
        (["run", f"{BASIC}:nothing_here"], "has no attribute 'nothing_here'"),
        (["run", f"{BASIC}:not_a_plan"], "is a int, not a Plan"),
        (["run", "no-colon"], "expected FILE.py:ATTR"),
        (["run", f"{BASIC}:plan", "--input", "wrong=1"], "bad inputs for plan 'words'"),
        (["run", f"{BASIC}:plan", "--input", "oops"], "expected KEY=VALUE"),
        (["run", f"{BASIC}:plan", "--budget", "cows=3"], "unknown dimension"),
        (["status", "nope"], "there is no run 'nope'"),
        (["ledger", "verify", "nope"], "there is no run 'nope'"),
        (["resume", "nope"], "there is no run 'nope'"),
        (["replay", "nope"], "there is no run 'nope'"),
        (["pause", "nope"], "there is no run 'nope'"),
    ],
)
def test_bad_input_gets_one_paragraph_and_a_nonzero_exit(
    home: Path, args: list[str], message: str
) -> None:
    result = cli(home, *args)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())
    no_traceback(result)


def test_ledger_verify_without_a_run_is_a_usage_error_naming_the_missing_run_id(
    home: Path,
) -> None:
    ran = cli(home, "run", f"{BASIC}:plan", "--input", "text=to be", "--json")
    run_id = json.loads(ran.stdout)["run_id"]
    missing = cli(home, "ledger", "verify")
    assert missing.returncode == 2
    text = " ".join(missing.stderr.split())
    assert "`orchestrator ledger verify` needs the id of the run to verify" in text
    assert "orchestrator ledger verify RUN" in text and "'verify'" not in text
    assert "\n\n" not in missing.stderr.strip() and missing.stdout == ""
    no_traceback(missing)
    assert cli(home, "ledger", "a", "b", "c").returncode == 2
    listed = cli(home, "ledger", run_id)
    assert listed.returncode == 0 and "RunStarted" in listed.stdout
    verified = cli(home, "ledger", "verify", run_id)
    assert verified.returncode == 0 and "ledger OK" in verified.stdout


def test_run_ls_status_and_json(home: Path) -> None:
    ran = cli(home, "run", f"{BASIC}:plan", "--input", "text=to be or not", "--json")
    assert ran.returncode == 0, ran.stderr
    data = json.loads(ran.stdout)
    assert data["status"] == "succeeded"
    assert data["nodes"]["join"]["outputs"] == {"count": 4}
    run_id = data["run_id"]
    listed = json.loads(cli(home, "ls", "--json").stdout)
    assert [(r["run_id"], r["status"], r["plan"]) for r in listed] == [
        (run_id, "succeeded", "words")
    ]
    status = cli(home, "status", run_id, "--once")
    assert status.returncode == 0
    assert "shout[3]" in status.stdout and "succeeded" in status.stdout
    as_json = json.loads(cli(home, "status", run_id, "--json").stdout)
    assert as_json["counts"]["succeeded"] == 6
    narrow = {"COLUMNS": "80"}
    assert run_id in cli(home, "ls", env=narrow).stdout  # whole, not cut to "…"
    lines = cli(home, "status", run_id, "--once", env=narrow).stdout.splitlines()
    assert lines[0].startswith(run_id)
    assert set(lines[1].strip()) == {"━"}  # the progress bar, on a line of its own
    assert lines[2].startswith("node ")


def test_progress_lines_when_not_a_terminal(home: Path) -> None:
    ran = cli(home, "run", f"{BASIC}:plan", "--input", "text=a b")
    assert ran.returncode == 0
    assert "started   shout[1]" in ran.stdout
    assert "succeeded join" in ran.stdout
    assert "run succeeded" in ran.stdout


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it now


@pytest.mark.parametrize("store", ["s3 at a closed port", "unwritable directory"])
def test_an_unusable_object_store_stops_run_before_anything_is_recorded(
    home: Path, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    run = ["run", f"{BASIC}:plan", "--input", "text=a b"]
    if store == "s3 at a closed port":
        moto: Moto = request.getfixturevalue("moto")
        endpoint = moto.endpoint.rsplit(":", 1)[0] + f":{closed_port()}"
        url = moto.url("never").replace(moto.endpoint, endpoint)
        ran = cli(home, "--objects", url + "&connect_timeout=1&max_attempts=1", *run)
        says = "cannot reach"
    else:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        argv = [*_cli_argv(home), "--objects", str(readonly), *run]
        if os.geteuid() == 0:  # root writes through modes: a read-only mount, in a namespace
            mount = f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(readonly))}"
            script = f"mount --make-rprivate / && {mount} && exec {shlex.join(argv)}"
            argv = ["unshare", "--mount", "sh", "-c", script]
        else:
            readonly.chmod(0o555)
        env = {**os.environ, "COLUMNS": "200"}
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        says = "is not writable"
    assert ran.returncode == 1, ran.stdout + ran.stderr
    message = " ".join(ran.stderr.split())
    assert message.startswith("error: cannot start the run: the checkpoint object store")
    assert says in message and "Nothing was recorded" in message
    assert ran.stderr.strip().count("\n\n") == 0 and "Traceback" not in ran.stderr
    listed = cli(home, "ls", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_run_jsonl_streams_each_event_as_it_is_recorded_then_the_result(
    home: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [*_cli_argv(home), "run", "--jsonl", f"{BASIC}:waiting", "--input", f"path={gate}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # while the node waits for the file: the run is not over
        seen.append(json.loads(line))
        if seen[-1]["kind"] == "NodeDispatched" and seen[-1]["node"] == "wait-for-file":
            break
    assert proc.poll() is None
    gate.write_text("done")
    rest, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs
    seen += [json.loads(line) for line in rest.splitlines()]
    *events, result = seen
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "RunStarted" and "RunCompleted" in kinds
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert {"kind": "NodeSucceeded", "node": "after"}.items() <= next(
        e for e in events if e["kind"] == "NodeSucceeded" and e["node"] == "after"
    ).items()
    assert result["kind"] == "result" and result["status"] == "succeeded"
    with Runtime(home=home) as rt:
        assert len(rt.rows(result["run_id"])) == len(events)
    assert "--jsonl" in cli(home, "run", "--help").stdout


def test_pause_and_resume_across_processes(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = spawn_run(home, f"{BASIC}:waiting", f"path={gate}")
    state = wait_until(home, lambda s: s.nodes["wait-for-file"].status == "running")
    pauser = subprocess.Popen(
        [*_cli_argv(home), "pause", state.run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(home, lambda s: s.status == "pausing")
    gate.write_text("done")  # the in-flight node may now finish; nothing new starts
    out, errs = pauser.communicate(timeout=30)
    assert pauser.returncode == 0, errs
    assert f"run {state.run_id} is parked" in out
    assert proc.wait(timeout=30) == 3  # exit code for a parked run
    with Runtime(home=home) as rt:
        parked = rt.state(state.run_id)
        assert parked.status == "parked"
        assert parked.nodes["after"].status == "pending"
        assert rt.runs()[-1].status == "parked"
    again = cli(home, "pause", state.run_id)
    assert again.returncode == 1 and "not running in any process" in again.stderr
    resumed = cli(home, "resume", state.run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert "run succeeded" in resumed.stdout
    done = cli(home, "resume", state.run_id)
    assert done.returncode == 1 and "already ended (succeeded)" in done.stderr


def _cli_argv(home: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "orchestrator.cli", "--home", str(home)]


def test_demo_does_real_work_and_replays(home: Path) -> None:
    result = cli(home, "demo", "--packages", "4", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "succeeded"
    assert data["replay"]["ok"] is True
    migrated = [data["nodes"][f"codemod-runner[{i}]"]["outputs"] for i in range(4)]
    assert [m["package"] for m in migrated] == ["api", "billing", "core", "search"]
    (repo,) = (home / "demo").glob("monorepo-*")
    branches = subprocess.run(
        ["git", "branch", "--list", "orchestrator/*"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    tag = data["run_id"].rsplit("-", 1)[-1]  # the run's own branches
    assert sorted(branches) == [
        f"orchestrator/esm-{p}-{tag}" for p in ("api", "billing", "core", "search")
    ]
    assert [m["branch"] for m in migrated] == sorted(branches)
    # the migrations stacked on the run's own clone, which nothing wrote into
    lower = Path(data["nodes"]["workspace-detect"]["outputs"]["checkout"])
    assert lower != repo and lower.is_dir()
    in_lower = subprocess.run(
        ["git", "for-each-ref", "refs/heads/orchestrator"],
        cwd=lower,
        capture_output=True,
        text=True,
        check=True,
    )
    assert in_lower.stdout == ""
    changed = subprocess.run(
        ["git", "show", f"orchestrator/esm-core-{tag}:packages/core/src/index.js"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "import format from './format.js';" in changed and "require(" not in changed
    summary = data["nodes"]["diff-summarizer"]["outputs"]
    assert summary["total_lines_changed"] == sum(m["lines_changed"] for m in migrated) > 0
    verify = cli(home, "ledger", "verify", data["run_id"])
    assert verify.returncode == 0 and "ledger OK" in verify.stdout


def test_the_readme_example_runs(home: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "a.py").write_text("x = 1\n")
    (repo / "pkg" / "b.py").write_text("y = 2\nz = 3\nw = 4\n")
    (repo / "notes.txt").write_text("not python\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    example = Path(__file__).parents[1] / "examples" / "count_lines.py"
    checked = cli(home, "plan", "check", f"{example}:plan")
    assert checked.returncode == 0, checked.stderr
    ran = cli(home, "run", f"{example}:plan", "--input", f"repo={repo}", "--json")
    assert ran.returncode == 0, ran.stderr
    data = json.loads(ran.stdout)
    assert data["nodes"]["report"]["outputs"] == {"total": 4, "largest": "pkg/b.py"}
    assert {data["nodes"][f"count-lines[{i}]"]["outputs"]["path"] for i in range(2)} == {
        "a.py",
        "pkg/b.py",
    }


@pytest.mark.parametrize("backend", backends("bwrap", "gvisor"))
def test_ctrl_c_pauses_without_killing_the_sandboxes_that_drain(
    home: Path, tmp_path: Path, backend: str
) -> None:
    import os
    import signal
    import sys

    gate = tmp_path / "gate"
    home.mkdir(parents=True)
    argv = [sys.executable, "-m", "orchestrator.cli", "--home", str(home), "run", "-q"]
    argv += [f"{BASIC}:sandboxed", "--input", f"path={gate}", "--sandbox", backend]
    proc = subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(home, lambda s: len(s.nodes["sandboxed-wait"].journal) >= 1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        wait_until(home, lambda s: s.status == "pausing")
        gate.write_text("open")
        assert proc.wait(timeout=60) == 3  # parked
    finally:
        if proc.poll() is None:
            proc.kill()
    with Runtime(home=home) as rt:
        state = rt.state(rt.runs()[-1].run_id)
        assert state.status == "parked"
        assert state.nodes["sandboxed-wait"].outputs == {"text": "before|open|before"}
        assert state.nodes["after"].status == "pending"


def test_demo_waits_at_its_gate_for_a_person_then_finishes_on_approval(
    home: Path, key_dir: Path
) -> None:
    parked = cli(home, "demo", "--packages", "2", "--wait-at-gate", timeout=300)
    assert parked.returncode == 3, parked.stderr
    with Runtime(home=home) as rt:
        (summary,) = rt.runs()
        state = rt.state(summary.run_id)
    run_id = state.run_id
    assert state.status == "parked"
    assert [ns.id for ns in state.awaiting()] == ["diff-summarizer"]
    assert f" approve {run_id} merge" in parked.stdout and "orchestrator --home " in parked.stdout
    notice = json.loads((home / "notices" / "demo.jsonl").read_text().splitlines()[-1])
    assert notice["kind"] == "gate" and notice["run_id"] == run_id
    assert '"type": "module"' in notice["review"]  # the diff a person reviews
    key = str(key_dir / "demo-approver.key")
    assert not (home / "keys").exists()  # keys live outside any tree a run works on
    approved = cli(home, "approve", run_id, "merge", "--key", key)
    assert approved.returncode == 0, approved.stderr
    receipts = cli(home, "receipts", run_id, "--verify", "--json")
    assert receipts.returncode == 0, receipts.stderr
    listed = json.loads(receipts.stdout)
    assert len(listed) >= 2 and all(r["problem"] is None for r in listed)
    assert listed[-1]["body"]["totals"]["compute_h"] > 0
    assert cli(home, "replay", run_id).returncode == 0


def test_pause_now_snapshots_stops_and_parks_then_resume_continues_from_the_snapshot(
    home: Path,
) -> None:
    proc = spawn_run(home, f"{PLANS / 'ckpt.py'}:plan", env={"APPENDER_SLEEP": "0.6"})
    state = wait_until(home, lambda s: len(s.nodes["appender"].journal) >= 3, timeout=60)
    paused = cli(home, "pause", state.run_id, "--now", "--timeout", "60")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert f"run {state.run_id} is parked" in paused.stdout
    assert proc.wait(timeout=30) == 3
    with Runtime(home=home) as rt:
        parked = rt.state(state.run_id)
        assert parked.status == "parked"
        [why] = [r.body for r in rt.rows(state.run_id) if r.kind == "RunParked"]
        assert b"paused now by" in why
        assert parked.nodes["appender"].status == "running"  # stopped in flight, on the record
        done_before = len(parked.nodes["appender"].journal)
        assert 3 <= done_before < 17  # it did not drain to the end
        labels = [m.label for m in (r.manifest for r in rt.checkpoints(state.run_id)) if m]
        assert "pause-now" in labels
    resumed = cli(home, "resume", state.run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with Runtime(home=home) as rt:
        final = rt.state(state.run_id)
        # every step's line once: the steps before the snapshot were not performed again
        assert final.nodes["appender"].outputs == {"lines": 16, "last": "step 15"}
        [back] = [json.loads(r.body) for r in rt.rows(state.run_id) if r.kind == "NodeResumed"]
        assert back["snapshot"] is not None and back["from_index"] >= 3  # from the snapshot
    replayed = cli(home, "replay", state.run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
