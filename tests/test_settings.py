"""Settings files: profiles, precedence (flag > environment > file > default), and the
global options accepted after a command's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.errors import ConfigError
from orchestrator.settings import load
from tests.crashing import PLANS

BASIC = PLANS / "basic.py"


WHERE = {f"ORCHESTRATOR_{n}" for n in ("HOME", "LEDGER", "OBJECTS", "CONFIG", "PROFILE")}
"""Where the command line looks for runs: left to the test (keys and trust are kept)."""


def orchestrator(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line, in ``cwd``, without the test suite's own ORCHESTRATOR_*."""
    clean = {k: v for k, v in os.environ.items() if k not in WHERE}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_profile_overrides_the_top_level_and_paths_are_relative_to_the_file(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "orchestrator.toml",
        'home = "state"\nsandbox = "bwrap"\nnotify = "webhook=env:HOOK"\n'
        '[profiles.ci]\nsandbox = "gvisor"\nobjects = "s3://bucket/runs"\nprices = "p.json"\n',
    )
    deeper = tmp_path / "a" / "b"
    deeper.mkdir(parents=True)
    top = load(None, None, start=deeper)
    assert top is not None and top.path == tmp_path / "orchestrator.toml"
    assert top.values == {
        "home": str(tmp_path / "state"),
        "sandbox": "bwrap",
        "notify": ["webhook=env:HOOK"],
    }
    ci = load(None, "ci", start=deeper)
    assert ci is not None
    assert ci.values["sandbox"] == "gvisor" and ci.values["home"] == str(tmp_path / "state")
    assert ci.values["objects"] == "s3://bucket/runs"  # a URL stays as written
    assert ci.values["prices"] == str(tmp_path / "p.json")
    assert ci.source_of("sandbox").endswith("[profile ci]")
    assert ci.source_of("home") == str(tmp_path / "orchestrator.toml")


def test_pyproject_tool_orchestrator_is_read_when_there_is_no_orchestrator_toml(
    tmp_path: Path,
) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert load(None, None, start=tmp_path) is None  # a pyproject without the table
    write(
        tmp_path / "pyproject.toml",
        "[tool.orchestrator]\nconcurrency = 8\n"
        "[tool.orchestrator.profiles.big]\nconcurrency = 64\n",
    )
    found = load(None, "big", start=tmp_path)
    assert found is not None and found.values == {"concurrency": 64}


@pytest.mark.parametrize(
    ("text", "profile", "message"),
    [
        ('sandbx = "bwrap"\n', None, "unknown setting `sandbx`"),
        ("[profiles.ci]\ncolor = 1\n", "ci", "unknown setting `profiles.ci.color`"),
        ("sandbox = true\n", None, "`sandbox` must be a string or a number"),
        ("approvers = [1, 2]\n", None, "`approvers` must be a string or a list of strings"),
        ("[profiles.ci]\n", "prod", "has no such profile (it has: ci)"),
        ("sandbox = \n", None, "is not valid TOML"),
    ],
)
def test_a_bad_settings_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, profile: str | None, message: str
) -> None:
    path = write(tmp_path / "orchestrator.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(None, profile, start=tmp_path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_profile_asked_for_without_a_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--profile ci: no orchestrator\.toml"):
        load(None, "ci", start=tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml", None)


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    write(tmp_path / "orchestrator.toml", 'home = "from-file"\n')

    def home_of(*args: str, env: dict[str, str] | None = None) -> str:
        result = orchestrator(tmp_path, *args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().removeprefix("no runs yet in sqlite:///")

    assert home_of("ls") == str(tmp_path / "from-file" / "ledger.db")
    env = {"ORCHESTRATOR_HOME": str(tmp_path / "from-env")}
    assert home_of("ls", env=env) == str(tmp_path / "from-env" / "ledger.db")
    flag = str(tmp_path / "from-flag")
    assert home_of("--home", flag, "ls", env=env) == f"{flag}/ledger.db"
    assert home_of("ls", "--home", flag, env=env) == f"{flag}/ledger.db"  # after the name too
    assert not (tmp_path / "from-file").exists()  # `ls` reads, it never creates a home


def test_config_show_says_where_each_setting_comes_from(tmp_path: Path) -> None:
    write(
        tmp_path / "orchestrator.toml",
        'ledger = "sqlite:///x.db"\n[profiles.ci]\nsandbox = "bwrap"\n',
    )
    shown = orchestrator(
        tmp_path,
        "--profile",
        "ci",
        "config",
        "show",
        "--objects",
        "/tmp/o",
        env={"ORCHESTRATOR_HOME": "/tmp/h"},
    )
    assert shown.returncode == 0, shown.stderr
    rows = {line.split("│")[0].strip(): line for line in shown.stdout.splitlines() if "│" in line}
    assert "/tmp/o" in rows["objects"] and "flag --objects" in rows["objects"]
    assert "/tmp/h" in rows["home"] and "environment ORCHESTRATOR_HOME" in rows["home"]
    assert "sqlite:///x.db" in rows["ledger"] and "orchestrator.toml" in rows["ledger"]
    assert "bwrap" in rows["sandbox"] and "[profile ci]" in rows["sandbox"]
    assert rows["budget"].split("│")[2].strip() == "default"


def test_a_run_takes_its_options_from_the_file_unless_a_flag_says_otherwise(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "orchestrator.toml",
        'home = "state"\nsandbox = "local"\nconcurrency = 3\nreceipt-every = 120\n',
    )
    inputs = ("--input", "text=to be or not", "--json")
    first = orchestrator(tmp_path, "run", f"{BASIC}:plan", *inputs)
    assert first.returncode == 0, first.stderr
    second = orchestrator(tmp_path, "run", f"{BASIC}:plan", *inputs, "--concurrency", "5")
    assert second.returncode == 0, second.stderr
    with Runtime(home=tmp_path / "state") as rt:
        configs = [rt.state(json.loads(r.stdout)["run_id"]).config for r in (first, second)]
    assert [c["concurrency"] for c in configs] == [3, 5]
    assert {c["sandbox"] for c in configs} == {"local"}
    assert {c["receipt_interval"] for c in configs} == {120}


def test_resume_does_not_take_a_budget_from_the_file(tmp_path: Path) -> None:
    write(tmp_path / "orchestrator.toml", 'budget = "tokens=1,compute_h=1,spend=1"\n')
    shown = orchestrator(tmp_path, "resume", "--help")
    assert shown.returncode == 0
    run_help = orchestrator(tmp_path, "run", "--help")
    assert "tokens=1,compute_h=1,spend=1" in run_help.stdout  # the file's value is the default
    assert "tokens=1,compute_h=1,spend=1" not in shown.stdout
