"""The flaky-hunt building blocks: runner detection and output parsing (against real pytest,
unittest and node runs where this machine has them), the rerun driver run for real in
subprocesses, the statistics, and bisection checked exhaustively with synthetic probes."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.agents import runners
from orchestrator.errors import ConfigError
from orchestrator.workloads.flaky_hunt import rerun_driver as rerun
from orchestrator.workloads.flaky_hunt import stats
from orchestrator.workloads.flaky_hunt.bisection import Verdict, bisect, find_good
from tests.fresh import in_fresh_processes

pytestmark = pytest.mark.timeout(60)

# ---- runners: detection -----------------------------------------------------------------


def test_marker_files_cover_every_detected_file() -> None:
    assert set(runners.MARKER_FILES) >= {
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "pytest.ini",
        "tox.ini",
        "requirements.txt",
        "requirements-dev.txt",
        "package.json",
        "package-lock.json",
        "go.mod",
    }


@pytest.mark.parametrize(
    "files",
    [
        {"pytest.ini": "[pytest]\n"},
        {"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"},
        {"setup.cfg": "[tool:pytest]\ntestpaths = tests\n"},
        {"tox.ini": "[testenv]\ncommands = pytest\n"},
        {
            "setup.py": "from setuptools import setup\nsetup()\n",
            "requirements-dev.txt": "pytest>=7\n",
        },
    ],
)
def test_python_with_pytest_mentioned_is_pytest(files: dict[str, str]) -> None:
    runner = runners.detect(files)
    assert (runner.name, runner.language, runner.framework) == ("pytest", "python", "pytest")
    assert runner.install[0] == ["python3", "-m", "venv", "--copies", ".orchestrator-venv"]
    assert "pytest" in runner.install[1]
    assert runner.seed_env == ["PYTHONHASHSEED"]
    assert runner.env["PATH"] == "/workspace/.orchestrator-venv/bin:/usr/bin:/bin"
    assert runner.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert runner.command[:3] == ["python", "-m", "pytest"]


def test_python_install_takes_requirements_files_and_the_project_when_it_has_deps() -> None:
    files = {
        "pyproject.toml": "[project]\nname = 'x'\ndependencies = ['attrs']\n[tool.pytest]\n",
        "requirements.txt": "requests\n",
        "requirements-dev.txt": "hypothesis\n",
    }
    runner = runners.detect(files)
    assert runner.install == [
        ["python3", "-m", "venv", "--copies", ".orchestrator-venv"],
        [
            ".orchestrator-venv/bin/pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "pytest",
            "-r",
            "requirements.txt",
            "-r",
            "requirements-dev.txt",
            "-e",
            ".",
        ],
    ]
    no_deps = runners.detect({"pyproject.toml": "[project]\nname = 'x'\n[tool.pytest]\n"})
    assert "-e" not in no_deps.install[1]
    legacy = runners.detect(
        {"setup.py": "setup(install_requires=['six'], tests_require=['pytest'])"}
    )
    assert legacy.install[1][-2:] == ["-e", "."]


def test_python_without_pytest_is_unittest_and_installs_nothing_but_the_venv() -> None:
    runner = runners.detect({"setup.py": "from setuptools import setup\nsetup(name='x')\n"})
    assert (runner.name, runner.framework) == ("unittest", "unittest")
    assert runner.install == [["python3", "-m", "venv", "--copies", ".orchestrator-venv"]]
    assert runner.command == ["python", "-m", "unittest"]
    with_reqs = runners.detect({"requirements.txt": "requests\n"})
    assert with_reqs.name == "unittest"
    assert with_reqs.install[1][-2:] == ["-r", "requirements.txt"]


@pytest.mark.parametrize(
    ("deps", "script", "framework"),
    [
        ({"devDependencies": {"vitest": "1", "jest": "29", "mocha": "10"}}, "x", "vitest"),
        ({"devDependencies": {"jest": "29", "mocha": "10"}}, "x", "jest"),
        ({"dependencies": {"mocha": "10"}}, "x", "mocha"),
        ({}, "node --test", "node"),
        ({}, "jest --ci", "jest"),
        # jest under another name: the failures read as jest's, not as node --test's
        ({"devDependencies": {"@umijs/test": "3"}}, "umi-test", "jest"),
        ({"dependencies": {"react-scripts": "5"}}, "react-scripts test", "jest"),
        ({"devDependencies": {"kcd-scripts": "0.41"}}, "kcd-scripts test", "jest"),
        ({}, "tsdx test", "jest"),
    ],
)
def test_npm_framework_from_dependencies(
    deps: dict[str, dict[str, str]], script: str, framework: str
) -> None:
    package = json.dumps({"scripts": {"test": script}, **deps})
    runner = runners.detect({"package.json": package, "pyproject.toml": "[tool.pytest]"})
    assert (runner.name, runner.language, runner.framework) == ("npm", "javascript", framework)
    assert runner.install == [["npm", "install", "--no-audit", "--no-fund"]]
    assert runner.env["CI"] == "1"
    assert runner.seed_env == []
    assert runner.seed_args(7) == []
    assert runner.command == ["npm", "test"]


def test_npm_uses_ci_with_a_lockfile() -> None:
    files = {"package.json": '{"scripts": {"test": "jest"}}', "package-lock.json": "{}"}
    assert runners.detect(files).install == [["npm", "ci", "--no-audit", "--no-fund"]]


def test_package_json_without_a_real_test_script_defers_or_explains() -> None:
    placeholder = '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'
    assert runners.detect({"package.json": placeholder, "go.mod": "module x\n"}).name == "go"
    with pytest.raises(ConfigError, match=r"scripts\.test"):
        runners.detect({"package.json": placeholder})
    with pytest.raises(ConfigError, match="not valid JSON"):
        runners.detect({"package.json": "{"})


def test_go() -> None:
    runner = runners.detect({"go.mod": "module example.com/x\n\ngo 1.22\n"})
    assert (runner.name, runner.language, runner.framework) == ("go", "go", "go")
    assert len(runner.install) == 1  # the build cache warm-up
    assert runner.command == ["go", "test", "./..."]
    assert runner.env["GOFLAGS"] == "-count=1"
    assert runner.seed_env == []
    assert runner.seed_args(42) == ["-shuffle=42"]
    with_deps = runners.detect({"go.mod": "module x\nrequire (\n\tgithub.com/a/b v1.0.0\n)\n"})
    assert "go mod download" in with_deps.install[0][-1]


def test_go_build_cache_is_in_the_checkout_and_warmed_at_install() -> None:
    runner = runners.detect({"go.mod": "module example.com/x\n\ngo 1.22\n"})
    assert runner.env["GOCACHE"] == f"/workspace/{runners.GO_CACHE}"
    assert runner.env["GOMODCACHE"] == f"/workspace/{runners.GO_MODCACHE}"
    warm = runner.install[-1][-1]
    assert f'GOCACHE="$PWD/{runners.GO_CACHE}"' in warm
    assert "go test -exec=true ./..." in warm
    # a cache it cannot write (the local backend has no /workspace) never reaches a test
    unwritable = "failed to initialize build cache at /workspace/x: mkdir /workspace: denied\n"
    assert runners.classify(runner, 1, unwritable) == "could-not-collect"
    assert runners.cause(unwritable) == unwritable.strip()
    with_deps = runners.detect({"go.mod": "module x\nrequire (\n\tgithub.com/a/b v1.0.0\n)\n"})
    assert [step[-1].count("go mod download") for step in with_deps.install] == [1, 0]
    assert with_deps.install[-1] == runner.install[-1]


GO = shutil.which("go", path="/usr/local/go/bin:" + os.environ.get("PATH", ""))


@pytest.mark.skipif(GO is None, reason="no go toolchain")
def test_go_runs_after_install_reuse_the_warmed_build_cache(tmp_path: Path) -> None:
    """Install as intake does, then a fresh `go test` with the run's environment (the
    checkout standing in for /workspace) compiles nothing: every action is a cache hit."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "go.mod").write_text("module example.com/x\n\ngo 1.19\n")
    (checkout / "x.go").write_text(
        'package x\n\nimport "fmt"\n\nfunc S() string { return fmt.Sprint(1) }\n'
    )
    (checkout / "x_test.go").write_text(
        'package x\n\nimport "testing"\n\n'
        'func TestS(t *testing.T) {\n\tif S() != "1" {\n\t\tt.Fatal(S())\n\t}\n}\n'
    )
    runner = runners.detect({"go.mod": (checkout / "go.mod").read_text()})
    base = {"HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"]}
    for argv in runner.install:
        subprocess.run(argv, cwd=checkout, env=base, check=True, timeout=1200)
    cache = checkout / runners.GO_CACHE
    assert any(cache.iterdir())
    env = {
        **base,
        **{k: v.replace("/workspace", str(checkout)) for k, v in runner.env.items()},
    }
    where = subprocess.run(
        ["go", "env", "GOCACHE"], cwd=checkout, env=env, capture_output=True, text=True
    )
    assert where.stdout.strip() == str(cache)
    done = subprocess.run(
        ["go", "test", "-x", "./..."], cwd=checkout, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "/compile " not in done.stderr  # -x prints every compiler run; none happen


def test_the_runner_the_command_names_is_used_and_installed_even_if_undeclared() -> None:
    files = {"setup.cfg": "[metadata]\nname = calc\n"}
    assert runners.detect(files).install == [["python3", "-m", "venv", "--copies", runners.VENV]]
    for command in (
        ["python", "-m", "pytest", "-q", "t.py"],
        ["pytest"],
        ["python3", "-m", "pytest"],
    ):
        runner = runners.detect(files, command)
        assert (runner.name, runner.framework) == ("pytest", "pytest"), command
        assert runner.install[1][-1:] == ["pytest"], command
    # a unittest command on a project that mentions pytest: unittest's output is parsed
    # (pytest stays installed: the project's tests may import it)
    runner = runners.detect({"pytest.ini": ""}, ["python", "-m", "unittest", "a.B.test_c"])
    assert runner.framework == "unittest" and runner.install[1][-1:] == ["pytest"]
    assert runners.detect(files, ["make", "test"]).framework == "unittest"


def test_no_marker_is_a_config_error_naming_what_was_looked_for() -> None:
    with pytest.raises(ConfigError) as info:
        runners.detect({"README.md": "hi"})
    for name in ("pyproject.toml", "package.json", "go.mod", "requirements.txt"):
        assert name in str(info.value)


def test_runner_is_frozen() -> None:
    runner = runners.detect({"go.mod": "module x\n"})
    with pytest.raises(ValueError, match="frozen"):
        runner.name = "npm"  # type: ignore[misc]


def test_python_seed_args_are_empty() -> None:
    assert runners.detect({"pytest.ini": ""}).seed_args(3) == []


STAMINA_LIKE = """
[project]
name = "stamina"
dependencies = ["tenacity"]

[dependency-groups]
Tests = ["pytest", "anyio", "dirty-equals"]
typing = ["mypy"]
dev = [{include-group = "tests"}, {include-group = "typing"}, "nox >= 2024.3.2", "anyio"]
"""


def test_python_installs_the_test_dependency_groups_resolving_includes() -> None:
    runner = runners.detect({"pyproject.toml": STAMINA_LIKE})
    pip = runner.install[1]
    assert pip[4:] == ["pytest", "anyio", "dirty-equals", "-e", "."]
    # only `dev`: it is installed, its includes resolved and each requirement kept once
    dev_only = STAMINA_LIKE.replace("Tests =", "base =").replace('"tests"', '"BASE"')
    pip = runners.detect({"pyproject.toml": dev_only}).install[1]
    assert pip[4:-2] == ["pytest", "anyio", "dirty-equals", "mypy", "nox >= 2024.3.2"]
    # groups for something else only: none of them
    docs = '[dependency-groups]\ndocs = ["sphinx"]\n'
    assert runners.detect({"pyproject.toml": docs}).install == runner.install[:1]


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        ('test = [{include-group = "test"}]', "in a circle: test -> test"),
        ('test = [{include-group = "a"}]\na = [{include-group = "test"}]', "test -> a -> test"),
        ('test = [{include-group = "nope"}]', "includes 'nope', which is not defined"),
        ('test = ["--index-url=https://example.invalid"]', "not a requirement"),
        ('test = [{other = "x"}]', "not a requirement"),
        ('test = "pytest"', "is not a list"),
    ],
)
def test_a_malformed_dependency_group_is_a_config_error(groups: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        runners.detect({"pyproject.toml": f"[dependency-groups]\n{groups}\n"})


def _wheel(where: Path, name: str, source: str) -> Path:
    """A pure-Python wheel of the module ``name`` (version 1.0), made without a backend."""
    import zipfile

    wheel = where / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            z.writestr(path, text)
    return wheel


def test_a_test_needing_a_module_from_a_dependency_group_runs_after_install(
    tmp_path: Path,
) -> None:
    """Install as intake does (the sandbox's python3; pip reads a local wheelhouse, not the
    network), then the suite imports what only the `tests` group brings."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "group_only_i12", "VALUE = 42\n")
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text(
        '[project]\nname = "widget"\nversion = "0"\n\n[dependency-groups]\n'
        'shared = ["group-only-i12 == 1.0"]\ntests = [{include-group = "shared"}]\n'
        'docs = ["no-such-package-i12"]\n'
    )
    (checkout / "tests" / "__init__.py").write_text("")
    (checkout / "tests" / "test_widget.py").write_text(
        "import unittest\n\nimport group_only_i12\n\n\n"
        "class TestWidget(unittest.TestCase):\n"
        "    def test_value(self):\n        self.assertEqual(group_only_i12.VALUE, 42)\n"
    )
    runner = runners.detect({"pyproject.toml": (checkout / "pyproject.toml").read_text()})
    assert runner.framework == "unittest"
    base = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    offline = {**base, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    for argv in runner.install:
        subprocess.run(argv, cwd=checkout, env=offline, check=True, timeout=600)
    env = {**base, **{k: v.replace("/workspace", str(checkout)) for k, v in runner.env.items()}}
    done = subprocess.run(
        runner.command, cwd=checkout, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "Ran 1 test" in done.stderr, done.stderr


def test_the_probe_and_the_rerunners_are_declared_alike() -> None:
    """Both run one batch of reruns: same workspace, effects, timeout, budget and retry.
    (Written out on each: the decorator's text is part of the node's code digest.)"""
    from orchestrator.workloads.flaky_hunt.nodes.reruns import flake_rerunner, rerun_probe

    def declared(description: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v for k, v in description.items() if k not in ("spec", "code", "inputs", "outputs")
        }

    assert declared(rerun_probe.description) == declared(flake_rerunner.description)


# ---- runners: real pytest / unittest / node runs ----------------------------------------

PY_TESTS = """
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n == 1

@pytest.fixture
def broken():
    raise RuntimeError("fixture")

def test_fixture_error(broken):
    pass

class TestGroup:
    def test_method(self):
        raise ValueError("x")
"""

UNIT_TESTS = """
import unittest

class TestThing(unittest.TestCase):
    def test_ok(self):
        pass

    def test_fails(self):
        self.assertEqual(1, 2)

    def test_errors(self):
        raise KeyError("k")
"""


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env},
    )


def _python(argv: list[str]) -> list[str]:
    """A runner command with its ``python`` pointed at this interpreter."""
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


@pytest.fixture
def pyproject(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_mod.py").write_text(PY_TESTS)
    (tmp_path / "tests" / "test_unit.py").write_text(UNIT_TESTS)
    return tmp_path


PYTEST = runners.detect({"pytest.ini": ""})
UNITTEST = runners.detect({"setup.py": ""})

PYTEST_FAILED = [
    "tests/test_mod.py::TestGroup::test_method",
    "tests/test_mod.py::test_fails",
    "tests/test_mod.py::test_fixture_error",
    "tests/test_mod.py::test_param[2]",
    "tests/test_unit.py::TestThing::test_errors",
    "tests/test_unit.py::TestThing::test_fails",
]


def test_pytest_failures_from_a_real_run(pyproject: Path) -> None:
    done = _run(_python(PYTEST.command), pyproject)
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert runners.failing_tests(PYTEST, output) == PYTEST_FAILED
    assert not runners.broke(PYTEST, done.returncode, output)


def test_pytest_verbose_lines_parse_too(pyproject: Path) -> None:
    done = _run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"], pyproject)
    assert runners.failing_tests(PYTEST, done.stdout) == PYTEST_FAILED


def test_pytest_command_for_one_test_runs_just_it(pyproject: Path) -> None:
    argv = runners.test_command(PYTEST, ["pytest"], "tests/test_mod.py::test_param[2]")
    assert argv == [
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rfE",
        "tests/test_mod.py::test_param[2]",
    ]
    done = _run(_python(argv), pyproject)
    assert runners.failing_tests(PYTEST, done.stdout) == ["tests/test_mod.py::test_param[2]"]
    assert "1 failed" in done.stdout
    assert runners.test_command(PYTEST, ["make", "test"], None) == ["make", "test"]


def test_pytest_command_for_one_test_keeps_the_users_options(tmp_path: Path) -> None:
    """A suite that imports a helper by bare name from its test folder collects only with
    the user's ``-o pythonpath=tests``; narrowing to one test keeps that option (and drops
    the user's paths), as seen on CycloneDX/cyclonedx-python-lib."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "helper.py").write_text("VALUE = 1\n")
    (tmp_path / "tests" / "test_mod.py").write_text(
        "from helper import VALUE\n\ndef test_one():\n    assert VALUE == 2\n\n"
        "def test_two():\n    assert VALUE == 1\n"
    )
    user = ["python", "-m", "pytest", "-o", "pythonpath=tests", "-q", "tests/test_mod.py"]
    whole = _run(_python(user), tmp_path)
    assert runners.failing_tests(PYTEST, whole.stdout) == ["tests/test_mod.py::test_one"]
    argv = runners.test_command(PYTEST, user, "tests/test_mod.py::test_one")
    assert argv == [
        *["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"],
        *["-o", "pythonpath=tests", "tests/test_mod.py::test_one"],
    ]
    one = _run(_python(argv), tmp_path)
    assert "1 failed" in one.stdout
    assert runners.failing_tests(PYTEST, one.stdout) == ["tests/test_mod.py::test_one"]
    assert runners.test_command(PYTEST, ["pytest", "tests", "-k", "one or two", "-x"], "t::a") == [
        *["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"],
        *["-k", "one or two", "-x", "t::a"],
    ]
    junit = ["pytest", "--junitxml", "out.xml", "tests", "--tb=short"]
    assert runners.test_command(PYTEST, junit, "t::a")[-4:] == [
        *["--junitxml", "out.xml", "--tb=short", "t::a"],
    ]


def test_pytest_broken_runs(pyproject: Path) -> None:
    missing = _run(_python(runners.test_command(PYTEST, [], "tests/test_mod.py::nope")), pyproject)
    assert missing.returncode == 4
    assert runners.broke(PYTEST, missing.returncode, missing.stdout + missing.stderr)
    (pyproject / "tests" / "test_bad.py").write_text("import no_such_module_here\n")
    collect = _run(_python(PYTEST.command), pyproject)
    assert collect.returncode == 2
    assert runners.broke(PYTEST, collect.returncode, collect.stdout)
    assert runners.broke(PYTEST, 1, "___ ERROR collecting tests/x.py ___")
    assert not runners.broke(PYTEST, -9, "")
    assert runners.broke(PYTEST, 127, "sh: python: not found")


def test_pytest_with_no_tests_is_broken(tmp_path: Path) -> None:
    done = _run(_python(PYTEST.command), tmp_path)
    assert done.returncode == 5
    assert runners.broke(PYTEST, done.returncode, done.stdout)


def test_unittest_failures_from_a_real_run(pyproject: Path) -> None:
    done = _run(_python(UNITTEST.command), pyproject)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert runners.failing_tests(UNITTEST, output) == [
        "tests.test_unit.TestThing.test_errors",
        "tests.test_unit.TestThing.test_fails",
    ]
    assert not runners.broke(UNITTEST, done.returncode, output)
    argv = runners.test_command(UNITTEST, [], "tests.test_unit.TestThing.test_fails")
    assert argv == ["python", "-m", "unittest", "tests.test_unit.TestThing.test_fails"]
    one = _run(_python(argv), pyproject)
    assert runners.failing_tests(UNITTEST, one.stderr) == ["tests.test_unit.TestThing.test_fails"]
    assert "Ran 1 test" in one.stderr


def test_unittest_pre_311_format() -> None:
    output = "FAIL: test_y (tests.test_x.TestX)\nERROR: test_z (pkg.mod.Case)\n"
    assert runners.failing_tests(UNITTEST, output) == [
        "pkg.mod.Case.test_z",
        "tests.test_x.TestX.test_y",
    ]


def test_unittest_broken_runs(pyproject: Path) -> None:
    (pyproject / "tests" / "test_bad.py").write_text("import no_such_module_here\n")
    done = _run(_python(UNITTEST.command), pyproject)
    assert runners.broke(UNITTEST, done.returncode, done.stderr)
    crash = "Traceback (most recent call last):\n  ...\nSyntaxError: invalid syntax\n"
    assert runners.broke(UNITTEST, 1, crash)
    assert not runners.broke(UNITTEST, 1, "ImportError: x\n\nRan 3 tests in 0.1s\n\nFAILED")
    (pyproject / "empty").mkdir()
    empty = _run(_python(UNITTEST.command), pyproject / "empty")
    assert "Ran 0 tests" in empty.stderr
    assert runners.broke(UNITTEST, empty.returncode, empty.stderr)


NODE_TESTS = """
const test = require('node:test');
const assert = require('node:assert');
test.describe('suite one', () => {
  test.it('adds up', () => assert.equal(1 + 1, 3));
  test.it('passes', () => {});
});
test('top level fails', () => { throw new Error('boom'); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("reporter", ["tap", "spec"])
def test_node_failures_from_a_real_run(tmp_path: Path, reporter: str) -> None:
    (tmp_path / "a.test.js").write_text(NODE_TESTS)
    done = _run(["node", "--test", f"--test-reporter={reporter}"], tmp_path)
    assert done.returncode == 1
    node = runners.detect({"package.json": '{"scripts": {"test": "node --test"}}'})
    assert runners.failing_tests(node, done.stdout + done.stderr) == [
        "adds up",
        "top level fails",
    ]
    argv = runners.test_command(node, ["npm", "test"], "adds up")
    assert argv == ["npm", "test", "--", "--test-name-pattern", "adds up"]


# ---- runners: recorded outputs of the runners this machine lacks --------------------------

JEST_OUTPUT = """\
FAIL src/math.test.js
  math
    \u2713 adds (2 ms)
    \u2715 subtracts (3 ms)
    nested
      \u2715 divides (1 ms)
  \u2715 top (1 ms)

  \u25cf math \u203a subtracts

    expect(received).toBe(expected) // Object.is equality

  \u25cf math \u203a nested \u203a divides

    boom

  \u25cf Test suite failed to run

Tests:       3 failed, 1 passed, 4 total
"""

VITEST_OUTPUT = """\
 \u276f src/math.test.ts (3 tests | 2 failed) 5ms
   \u00d7 math > subtracts 3ms
     \u2192 expected 1 to be 2
   \u00d7 math > nested > divides
   \u2713 math > adds

\u23af\u23af\u23af\u23af Failed Tests 2 \u23af\u23af\u23af\u23af

 FAIL  src/math.test.ts > math > subtracts
AssertionError: expected 1 to be 2
 FAIL  src/math.test.ts > math > nested > divides
Error: boom

 Test Files  1 failed (1)
"""

MOCHA_OUTPUT = """\
  Array
    #indexOf()
      \u2714 finds things
      1) should return -1 when absent
    2) has length

  1 passing (5ms)
  2 failing

  1) Array
       #indexOf()
         should return -1 when absent:
     AssertionError [ERR_ASSERTION]: 0 == -1

  2) Array
       has length:
     Error: nope
"""

GO_OUTPUT = """\
=== RUN   TestAdd
--- FAIL: TestAdd (0.00s)
    add_test.go:9: 1 + 1 = 3
=== RUN   TestTable
=== RUN   TestTable/with_space
--- FAIL: TestTable (0.00s)
    --- FAIL: TestTable/with_space (0.00s)
FAIL
FAIL\texample.com/x\t0.012s
ok  \texample.com/x/y\t0.003s
"""


def _npm(framework: str) -> runners.Runner:
    return runners.detect(
        {"package.json": json.dumps({"scripts": {"test": framework}, "devDependencies": {}})}
    )


def test_jest_wrapper_script_reads_jest_failures() -> None:
    """MrXujiang/xijs runs jest as ``umi-test``: its failures were read as node --test's
    (none found) and narrowed with ``--test-name-pattern``."""
    package = {"scripts": {"test": "umi-test"}, "devDependencies": {"@umijs/test": "^3.0.5"}}
    runner = runners.detect({"package.json": json.dumps(package)})
    assert runners.failing_tests(runner, JEST_OUTPUT) == [
        "math \u203a nested \u203a divides",
        "math \u203a subtracts",
        "top",
    ]
    assert runners.test_command(runner, ["npm", "test"], "math \u203a subtracts")[-2:] == [
        "-t",
        "math subtracts",
    ]


def test_jest_failures_prefer_full_names_and_skip_non_tests() -> None:
    jest = _npm("jest")
    colored = "\x1b[31m" + JEST_OUTPUT.replace("\n", "\x1b[39m\n")
    expected = ["math \u203a nested \u203a divides", "math \u203a subtracts", "top"]
    assert runners.failing_tests(jest, JEST_OUTPUT) == expected
    assert runners.failing_tests(jest, colored) == expected
    assert runners.test_command(jest, ["npm", "test"], "math \u203a nested \u203a divides") == [
        "npm",
        "test",
        "--",
        "-t",
        "math nested divides",
    ]
    assert runners.test_command(jest, ["yarn", "test"], "a (b) [c].d") == [
        "npm",
        "test",
        "--",
        "-t",
        r"a \(b\) \[c\]\.d",
    ]
    assert runners.test_command(jest, ["npm", "run", "t", "--", "--ci"], "x")[-4:] == [
        "--",
        "--ci",
        "-t",
        "x",
    ]


def test_vitest_workspace_project_is_not_part_of_the_id() -> None:
    """greenbone/gsa (a vitest workspace) prints the project before the file; with it in
    the id the narrowed command's file filter matched no file."""
    output = """\
 \u276f |web| src/x/__tests__/u.test.js (5 tests | 1 failed) 9ms
   \u00d7 display utils > randomColor > returns a hex color 6ms
     \u2192 expected '#ec8ce' to match /^#[0-9a-fA-F]{6}$/
 FAIL  |web| src/x/__tests__/u.test.js > display utils > randomColor > returns a hex color
"""
    vitest = _npm("vitest")
    test_id = "src/x/__tests__/u.test.js > display utils > randomColor > returns a hex color"
    assert runners.failing_tests(vitest, output) == [test_id]
    assert runners.test_command(vitest, ["npm", "test", "--", "src/x/"], test_id)[-4:] == [
        "src/x/",
        "src/x/__tests__/u.test.js",
        "-t",
        "display utils randomColor returns a hex color",
    ]


def test_vitest_failures() -> None:
    vitest = _npm("vitest run")
    expected = ["src/math.test.ts > math > nested > divides", "src/math.test.ts > math > subtracts"]
    assert runners.failing_tests(vitest, VITEST_OUTPUT) == expected
    crosses_only = "\n".join(line for line in VITEST_OUTPUT.splitlines() if "FAIL " not in line)
    assert runners.failing_tests(vitest, crosses_only) == [
        "math > nested > divides",
        "math > subtracts",
    ]
    assert runners.test_command(vitest, ["npm", "test"], expected[0]) == [
        "npm",
        "test",
        "--",
        "src/math.test.ts",
        "-t",
        "math nested divides",
    ]


def test_mocha_failures_take_each_numbered_title_once() -> None:
    mocha = _npm("mocha")
    assert runners.failing_tests(mocha, MOCHA_OUTPUT) == [
        "has length",
        "should return -1 when absent",
    ]
    assert runners.test_command(mocha, [], "has length") == [
        "npm",
        "test",
        "--",
        "--grep",
        "has length",
    ]


def test_go_failures_and_commands() -> None:
    go = runners.detect({"go.mod": "module x\n"})
    assert runners.failing_tests(go, GO_OUTPUT) == [
        "TestAdd",
        "TestTable",
        "TestTable/with_space",
    ]
    assert runners.test_command(go, ["go", "test", "./..."], "TestTable/with_space") == [
        "go",
        "test",
        "-run",
        "^TestTable$/^with_space$",
        "./...",
    ]
    assert runners.test_command(go, ["make"], "TestAdd") == [
        "go",
        "test",
        "-run",
        "^TestAdd$",
        "./...",
    ]
    assert runners.test_command(go, ["go", "test", "-race", "./pkg/..."], "TestAdd") == [
        "go",
        "test",
        "-run",
        "^TestAdd$",
        "-race",
        "./pkg/...",
    ]


def test_unparseable_output_yields_nothing() -> None:
    for runner in (PYTEST, UNITTEST, _npm("jest"), _npm("vitest"), _npm("mocha"), _npm("node")):
        assert runners.failing_tests(runner, "Segmentation fault (core dumped)\n") == []


@pytest.mark.parametrize(
    ("framework", "output", "expected"),
    [
        ("jest", 'npm ERR! Missing script: "test"', True),
        ("jest", 'npm error Missing script: "test"', True),
        ("jest", "  \u25cf Test suite failed to run\n\n    Cannot find module", True),
        ("jest", "No tests found, exiting with code 1", True),
        ("vitest", "No test files found, exiting with code 1", True),
        ("vitest", " FAIL  src/a.test.ts [ src/a.test.ts ]\nError: Failed to load", True),
        ("jest", JEST_OUTPUT.replace("  \u25cf Test suite failed to run\n", ""), False),
        ("vitest", VITEST_OUTPUT, False),
        ("mocha", MOCHA_OUTPUT, False),
    ],
)
def test_npm_broke(framework: str, output: str, expected: bool) -> None:
    assert runners.broke(_npm(framework), 1, output) is expected


def test_go_broke() -> None:
    go = runners.detect({"go.mod": "module x\n"})
    build = "# example.com/x\n./a.go:3:1: syntax error\nFAIL\texample.com/x [build failed]\n"
    assert runners.broke(go, 1, build)
    assert runners.broke(
        go, 1, "go: go.mod requires go >= 1.23 (running go 1.21; GOTOOLCHAIN=local)"
    )
    assert not runners.broke(go, 1, GO_OUTPUT)
    assert not runners.broke(go, 0, "ok  \tx\t0.1s")


# ---- run outcomes: every class, from real runs where they are cheap -------------------------


def _outcome(runner: runners.Runner, done: subprocess.CompletedProcess[str]) -> str:
    return runners.classify(runner, done.returncode, done.stdout + done.stderr)


def test_pytest_outcomes(pyproject: Path) -> None:
    one = runners.test_command(PYTEST, [], "tests/test_mod.py::test_passes")
    assert _outcome(PYTEST, _run(_python(one), pyproject)) == "passed"
    assert _outcome(PYTEST, _run(_python(PYTEST.command), pyproject)) == "test-failed"
    # the runner is not installed: the interpreter has no such module
    missing = _run([sys.executable, "-m", "no_such_runner_here", "-q"], pyproject)
    assert missing.returncode == 1 and "No module named no_such_runner_here" in missing.stderr
    assert _outcome(PYTEST, missing) == "could-not-collect"
    assert runners.broke(PYTEST, missing.returncode, missing.stderr)
    typo = _run(["sh", "-c", "pyhton -m pytest"], pyproject)
    assert _outcome(PYTEST, typo) == "command-not-found"
    crash = _run(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], pyproject
    )
    assert _outcome(PYTEST, crash) == "crash"
    assert runners.classify(PYTEST, -9, "", timed_out=True) == "timeout"
    (pyproject / "tests" / "test_bad.py").write_text("import no_such_module_here\n")
    assert _outcome(PYTEST, _run(_python(PYTEST.command), pyproject)) == "could-not-collect"
    (pyproject / "tests" / "test_bad.py").write_text("def half_written(:\n")
    assert _outcome(PYTEST, _run(_python(PYTEST.command), pyproject)) == "could-not-collect"


def test_unittest_outcomes(pyproject: Path) -> None:
    one = ["python", "-m", "unittest", "tests.test_unit.TestThing.test_ok"]
    assert _outcome(UNITTEST, _run(_python(one), pyproject)) == "passed"
    assert _outcome(UNITTEST, _run(_python(UNITTEST.command), pyproject)) == "test-failed"
    nowhere = _run(_python(["python", "-m", "unittest", "tests.test_nowhere"]), pyproject)
    assert _outcome(UNITTEST, nowhere) == "could-not-collect"
    assert "No module named 'tests.test_nowhere'" in runners.cause(nowhere.stderr)
    (pyproject / "empty").mkdir()
    empty = _run(_python(UNITTEST.command), pyproject / "empty")
    assert _outcome(UNITTEST, empty) == "could-not-collect"  # "Ran 0 tests" / "NO TESTS RAN"
    typo = _run(["sh", "-c", "pyhton -m unittest"], pyproject)
    assert _outcome(UNITTEST, typo) == "command-not-found"
    assert runners.cause(typo.stderr).endswith("pyhton: not found")
    assert runners.classify(UNITTEST, -11, "Fatal Python error: Segmentation fault") == "crash"
    assert runners.classify(UNITTEST, -9, "", timed_out=True) == "timeout"
    (pyproject / "tests" / "test_bad.py").write_text("import no_such_module_here\n")
    assert _outcome(UNITTEST, _run(_python(UNITTEST.command), pyproject)) == "could-not-collect"


@pytest.mark.parametrize(
    ("framework", "code", "output", "expected"),
    [
        ("jest", 0, "Tests:       3 passed, 3 total", "passed"),
        ("jest", 1, "JEST_OUTPUT", "test-failed"),
        ("jest", 1, "No tests found, exiting with code 1", "could-not-collect"),
        (
            "jest",
            1,
            "  \u25cf Test suite failed to run\n\n    Cannot find module 'x'",
            "could-not-collect",
        ),
        ("jest", 1, "Error: Cannot find module 'jest'", "could-not-collect"),
        ("jest", 1, 'npm error Missing script: "test"', "could-not-collect"),
        ("jest", 127, "sh: 1: jest: not found", "command-not-found"),
        ("vitest", 1, "VITEST_OUTPUT", "test-failed"),
        ("vitest", 1, "No test files found, exiting with code 1", "could-not-collect"),
        ("vitest", 137, "Killed", "crash"),
        ("go", 1, "GO_OUTPUT", "test-failed"),
        ("go", 0, "ok  \tx\t0.1s", "passed"),
        ("go", 1, "FAIL\texample.com/x [build failed]", "could-not-collect"),
        ("go", 2, "go: cannot find main module, but found .git/config", "could-not-collect"),
        ("go", 127, "sh: 1: go: not found", "command-not-found"),
        ("go", -6, "panic: test timed out after 10m0s", "crash"),
    ],
)
def test_npm_and_go_outcomes(framework: str, code: int, output: str, expected: str) -> None:
    runner = runners.detect({"go.mod": "module x\n"}) if framework == "go" else _npm(framework)
    text = {
        # a run whose other suite failed to load still failed tests of its own
        "JEST_OUTPUT": JEST_OUTPUT.replace("  \u25cf Test suite failed to run\n", ""),
        "VITEST_OUTPUT": VITEST_OUTPUT,
        "GO_OUTPUT": GO_OUTPUT,
    }
    assert runners.classify(runner, code, text.get(output, output)) == expected
    assert runners.classify(runner, code, output, timed_out=True) == "timeout"


def test_repro_script_tells_reproduced_from_could_not_run(pyproject: Path) -> None:
    """On a commit whose test fails it reproduces; on one where a dependency is missing, or
    the runner or the interpreter is, it could not run (exit 2), never "reproduced"."""
    from orchestrator.workloads.flaky_hunt import pull_request as pr

    def run(repro: str, framework: str) -> subprocess.CompletedProcess[str]:
        facts = pr.HuntFacts(
            repo="r",
            test="t",
            runner=framework,
            runs=10,
            failures=1,
            rate=0.1,
            low=0.01,
            high=0.4,
            repro=repro,
            trials_per_commit=1,
            miss_chance=0.01,
        )
        script = pyproject / "repro.sh"
        script.write_text(pr.repro_script(facts))
        return subprocess.run(
            ["sh", str(script)], cwd=pyproject, capture_output=True, text=True, timeout=60
        )

    py = shlex.quote(sys.executable)
    fails = run(f"{py} -m unittest tests.test_unit.TestThing.test_fails", "unittest")
    assert fails.returncode == 1 and "reproduced: run 1 of 1 failed" in fails.stderr
    fails = run(f"{py} -m pytest -q -p no:cacheprovider tests/test_mod.py::test_fails", "pytest")
    assert fails.returncode == 1 and "reproduced: run 1 of 1 failed" in fails.stderr
    (pyproject / "tests" / "test_dep.py").write_text("import no_such_dependency\n")
    cases = [
        (f"{py} -m unittest tests.test_dep", "unittest", "No module named 'no_such_dependency'"),
        (f"{py} -m pytest -q -p no:cacheprovider tests/test_dep.py", "pytest", "ERROR collecting"),
        (f"{py} -m no_such_runner_here tests/test_mod.py", "pytest", "No module named"),
        ("pyhton -m unittest tests.test_unit", "unittest", "command not found"),
    ]
    for repro, framework, why in cases:
        done = run(repro, framework)
        assert done.returncode == 2, (repro, done.stderr)
        assert "reproduced:" not in done.stderr, repro
        assert "could not run" in done.stderr and why in done.stderr, (repro, done.stderr)


# ---- rerun driver, for real --------------------------------------------------------------

FLAKY_SCRIPT = """
import json, os, sys
seed = int(os.environ["PYTHONHASHSEED"])
print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "extra": os.environ.get("EXTRA")}))
print("to stderr", file=sys.stderr)
sys.exit(1 if seed % 3 == 0 else 0)
"""

# The driver runs under the sandbox's system python3, not the project's interpreter.
INTERPRETERS = sorted({sys.executable, *(p for p in ["/usr/bin/python3"] if Path(p).exists())})


def _drive(spec_json: str, python: str = sys.executable, timeout: float = 60) -> str:
    done = subprocess.run(
        rerun.command(spec_json, python), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("python", INTERPRETERS)
def test_driver_runs_each_seed_in_a_fresh_process(tmp_path: Path, python: str) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY_SCRIPT)
    seeds = list(range(10))
    spec_json = rerun.spec(
        [sys.executable, str(script)],
        {"EXTRA": "yes"},
        ["PYTHONHASHSEED"],
        seeds,
        30,
        lambda s: ["--seed", str(s)] if s % 2 else [],
    )
    records = rerun.parse_driver_output(_drive(spec_json, python))
    assert [r.seed for r in records] == seeds
    assert [r.code for r in records] == [1 if s % 3 == 0 else 0 for s in seeds]
    assert not any(r.timed_out for r in records)
    reports = [json.loads(r.output_tail.splitlines()[0]) for r in records]
    assert len({report["pid"] for report in reports}) == len(seeds)
    assert [report["argv"] for report in reports] == [
        ["--seed", str(s)] if s % 2 else [] for s in seeds
    ]
    assert {report["extra"] for report in reports} == {"yes"}
    assert all("to stderr" in r.output_tail for r in records)
    assert all(0 < r.duration < 30 for r in records)


def test_driver_times_out_a_run_and_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(
        "import os, sys, time\n"
        "print('started', flush=True)\n"
        "if os.environ['S'] == '1': time.sleep(60)\n"
    )
    spec_json = rerun.spec([sys.executable, str(script)], {}, ["S"], [0, 1, 2], 1.0)
    start = time.monotonic()
    records = rerun.parse_driver_output(_drive(spec_json))
    assert time.monotonic() - start < 20
    assert [(r.code, r.timed_out) for r in records] == [(0, False), (-9, True), (0, False)]
    assert records[1].output_tail.strip() == "started"
    assert 1.0 <= records[1].duration < 10


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_driver_kills_a_runs_leftover_processes(tmp_path: Path) -> None:
    script = tmp_path / "spawn.py"
    script.write_text(
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL)\n"
        "print(p.pid)\n"
    )
    spec_json = rerun.spec([sys.executable, str(script)], {}, [], [0, 1], 30)
    start = time.monotonic()
    records = rerun.parse_driver_output(_drive(spec_json))
    assert time.monotonic() - start < 20
    for record in records:
        pid = int(record.output_tail.strip())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)


def test_driver_is_not_held_by_an_escaped_process_on_its_pipe(tmp_path: Path) -> None:
    script = tmp_path / "escape.py"
    script.write_text(
        "import subprocess, sys\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
    )
    spec_json = rerun.spec([sys.executable, str(script)], {}, [], [0], 30)
    start = time.monotonic()
    done = subprocess.Popen(
        rerun.command(spec_json, sys.executable), stdout=subprocess.PIPE, text=True
    )
    line = done.stdout.readline() if done.stdout else ""
    elapsed = time.monotonic() - start
    record = rerun.parse_driver_output(line)[0]
    escaped = int(record.output_tail.strip())
    try:
        assert record.code == 0
        assert elapsed < 15
    finally:
        os.kill(escaped, signal.SIGKILL)
        done.wait(10)
        if done.stdout:
            done.stdout.close()


def test_driver_keeps_the_tail_of_large_output(tmp_path: Path) -> None:
    script = tmp_path / "loud.py"
    script.write_text(
        "import sys\n"
        "for i in range(20000): print(f'line {i}')\n"
        "sys.stdout.flush()\n"
        "print('\u00e9' * 10, 'END', file=sys.stderr)\n"
    )
    spec_json = rerun.spec(
        [sys.executable, str(script)], {"PYTHONIOENCODING": "utf-8"}, [], [5], 30
    )
    (record,) = rerun.parse_driver_output(_drive(spec_json))
    assert len(record.output_tail) == rerun.TAIL_CHARS
    assert record.output_tail.endswith("\u00e9" * 10 + " END\n")
    assert "line 19999" in record.output_tail


def test_driver_reports_a_missing_command() -> None:
    spec_json = rerun.spec(["/no/such/binary"], {}, [], [1, 2], 5)
    records = rerun.parse_driver_output(_drive(spec_json))
    assert [r.code for r in records] == [127, 127]
    assert "cannot run" in records[0].output_tail


def test_driver_runs_python_as_python3_where_there_is_no_python(tmp_path: Path) -> None:
    """A base system with only python3 and no venv: ``python`` still resolves."""
    bare = tmp_path / "bin"
    bare.mkdir()
    spec_json = rerun.spec(
        ["python", "-c", "import sys; print(sys.version_info[0])"], {"PATH": str(bare)}, [], [1], 30
    )
    (record,) = rerun.parse_driver_output(_drive(spec_json))
    assert (record.code, record.output_tail.strip()) == (0, "3")


def test_driver_kills_the_current_run_when_terminated(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = tmp_path / "slow.py"
    script.write_text(
        f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    spec_json = rerun.spec([sys.executable, str(script)], {}, [], [0], 60)
    driver = subprocess.Popen(rerun.command(spec_json, sys.executable), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(pidfile.read_text())
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(10) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_spec_shape_and_validation() -> None:
    body = json.loads(rerun.spec(["pytest"], {"A": "1"}, ["PYTHONHASHSEED"], [3, 4], 9, None))
    assert body == {
        "argv": ["pytest"],
        "env": {"A": "1"},
        "seed_env": ["PYTHONHASHSEED"],
        "seed_args": {},
        "seeds": [3, 4],
        "timeout": 9.0,
    }
    go = runners.detect({"go.mod": "module x\n"})
    body = json.loads(rerun.spec(go.command, go.env, go.seed_env, [3], 9, go.seed_args))
    assert body["seed_args"] == {"3": ["-shuffle=3"]}
    with pytest.raises(ConfigError):
        rerun.spec([], {}, [], [1], 9)
    with pytest.raises(ConfigError):
        rerun.spec(["x"], {}, [], [1], 0)


def test_parse_driver_output_ignores_other_lines() -> None:
    good = {"seed": 1, "code": 0, "duration": 0.5, "output_tail": "ok"}
    stdout = "\n".join(
        [
            "warning: something",
            json.dumps(good),
            '{"seed": 2, "code": 1',
            json.dumps({"unrelated": True}),
            "[1, 2]",
            json.dumps({**good, "seed": 3, "timed_out": True, "code": -9}),
        ]
    )
    records = rerun.parse_driver_output(stdout)
    assert [(r.seed, r.code, r.timed_out) for r in records] == [(1, 0, False), (3, -9, True)]


def test_driver_is_plain_python3() -> None:
    compile(rerun.DRIVER, "<driver>", "exec")
    imported = {
        name.strip()
        for line in rerun.DRIVER.splitlines()
        if line.startswith("import ")
        for name in line[len("import ") :].split(",")
    }
    assert imported <= set(sys.stdlib_module_names)


# ---- stats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "runs", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 1000, 0.000177, 0.005639),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_known_values(failures: int, runs: int, low: float, high: float) -> None:
    got = stats.wilson(failures, runs)
    assert got == pytest.approx((low, high), abs=5e-5)


@given(st.integers(0, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_brackets_the_rate(case: tuple[int, int]) -> None:
    failures, runs = case
    low, high = stats.wilson(failures, runs)
    assert 0.0 <= low <= high <= 1.0
    if runs:
        assert low <= failures / runs <= high
        assert (low == 0.0) == (failures == 0)
        assert (high == 1.0) == (failures == runs)


def test_wilson_rejects_impossible_counts() -> None:
    for failures, runs in ((3, 2), (-1, 5), (0, -1)):
        with pytest.raises(ValueError, match="failures"):
            stats.wilson(failures, runs)


def test_rates_count_each_test_once_per_run_and_sort() -> None:
    per_run = [["b", "a", "a"], ["b"], [], ["c", "b"], ["a"]]
    result = stats.rates(per_run, 10)
    assert [(r.test, r.failures, r.runs) for r in result] == [
        ("b", 3, 10),
        ("a", 2, 10),
        ("c", 1, 10),
    ]
    assert result[0].rate == 0.3
    assert (result[0].low, result[0].high) == stats.wilson(3, 10)
    assert [r.test for r in stats.rates([["z"], ["y"]], 2)] == ["y", "z"]
    assert stats.rates([], 0) == []
    with pytest.raises(ValueError, match="runs"):
        stats.rates([["a"], ["a"]], 1)


@pytest.mark.parametrize(
    ("rate", "miss", "expected"),
    [(0.5, 0.01, 7), (0.1, 0.01, 44), (0.95, 0.01, 2), (0.999, 0.01, 1), (0.5, 0.25, 2)],
)
def test_trials_to_detect_known_values(rate: float, miss: float, expected: int) -> None:
    assert stats.trials_to_detect(rate, miss) == expected


def test_trials_to_detect_edges() -> None:
    assert stats.trials_to_detect(1.0) == 1
    assert stats.trials_to_detect(1.5) == 1
    assert stats.trials_to_detect(0.0) == 500
    assert stats.trials_to_detect(-0.1, cap=20) == 20
    assert stats.trials_to_detect(1e-300) == 500
    assert stats.trials_to_detect(0.001) == 500
    assert stats.trials_to_detect(0.001, cap=10_000) == 4603
    for miss in (0.0, 1.0):
        with pytest.raises(ValueError, match="miss"):
            stats.trials_to_detect(0.5, miss)
    with pytest.raises(ValueError, match="cap"):
        stats.trials_to_detect(0.5, cap=0)


@given(st.floats(0.0005, 0.9999), st.floats(0.0001, 0.5))
def test_trials_to_detect_is_the_smallest_sufficient_k(rate: float, miss: float) -> None:
    k = stats.trials_to_detect(rate, miss, cap=100_000)
    tolerance = 1e-9 * miss
    assert (1 - rate) ** k <= miss + tolerance
    if k > 1:
        assert (1 - rate) ** (k - 1) > miss - tolerance


# ---- bisection --------------------------------------------------------------------------


class Oracle:
    """A synthetic history: commits from index ``first_bad`` on fail; some do not build."""

    def __init__(self, first_bad: int | None, skip: frozenset[int] = frozenset()) -> None:
        self.first_bad = first_bad
        self.skip = skip
        self.asked: list[int] = []

    async def __call__(self, commit: str) -> tuple[Verdict, int]:
        index = int(commit[1:])
        self.asked.append(index)
        if index in self.skip:
            return "skip", 1
        if self.first_bad is not None and index >= self.first_bad:
            return "bad", 1
        return "good", 3


def _commits(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


def _run_all(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        for coroutine in coroutines:
            await coroutine

    asyncio.run(main())


def bisected(cases: list[tuple[int, int, list[int]]]) -> list[dict[str, Any]]:
    """Bisect each synthetic history (commits, first bad, unbuildable): results as JSON."""

    async def main() -> list[dict[str, Any]]:
        return [
            (await bisect(_commits(n), Oracle(first_bad, frozenset(skip)))).model_dump(mode="json")
            for n, first_bad, skip in cases
        ]

    return asyncio.run(main())


def test_bisect_finds_every_first_bad_position_in_about_log2_probes() -> None:
    checked = 0
    results: list[dict[str, Any]] = []

    async def check(n: int, first_bad: int) -> None:
        nonlocal checked
        commits = _commits(n)
        oracle = Oracle(first_bad)
        result = await bisect(commits, oracle)
        assert result.first_bad == commits[first_bad]
        assert result.last_good == commits[first_bad - 1]
        assert result.skipped == []
        assert "first bad commit" in result.message
        assert 0 not in oracle.asked and n - 1 not in oracle.asked
        assert len(set(oracle.asked)) == len(oracle.asked)
        assert len(oracle.asked) <= math.ceil(math.log2(n - 1))
        assert [s.commit for s in result.steps] == [commits[i] for i in oracle.asked]
        for step in result.steps:
            assert step.lo < int(step.commit[1:]) < step.hi
            assert step.trials == (1 if step.verdict == "bad" else 3)
        results.append(result.model_dump(mode="json"))
        checked += 1

    cases = [(n, b, []) for n in range(2, 42) for b in range(1, n)]
    _run_all(check(n, b) for n, b, _ in cases)
    assert checked == len(cases) == sum(n - 1 for n in range(2, 42))
    # the same steps and verdicts after a restart (a resumed hunt must not diverge)
    assert in_fresh_processes("tests.test_flaky_parts:bisected", cases) == [results, results]


def test_bisect_with_every_skip_set() -> None:
    exact = vague = 0
    results: list[dict[str, Any]] = []

    async def check(n: int, first_bad: int, skip: frozenset[int]) -> None:
        nonlocal exact, vague
        commits = _commits(n)
        oracle = Oracle(first_bad, skip)
        result = await bisect(commits, oracle)
        assert len(set(oracle.asked)) == len(oracle.asked)
        assert 0 not in oracle.asked and n - 1 not in oracle.asked
        assert result.skipped == [commits[i] for i in sorted(skip & set(oracle.asked))]
        findable = first_bad not in skip and first_bad - 1 not in skip
        if findable:
            exact += 1
            assert result.first_bad == commits[first_bad]
            assert result.last_good == commits[first_bad - 1]
        else:
            vague += 1
            assert result.first_bad is None
            assert result.last_good is not None
            lo = commits.index(result.last_good)
            named = result.message.split("one of ", 1)[1].split(", ")
            assert commits[first_bad] in named
            assert named[-1] not in {commits[i] for i in skip}
            assert named[:-1] == [commits[i] for i in range(lo + 1, lo + len(named))]
            assert all(int(c[1:]) in skip for c in named[:-1])
        results.append(result.model_dump(mode="json"))

    cases = [
        (n, b, list(skip))
        for n in range(2, 11)
        for size in range(n - 1)
        for skip in itertools.combinations(range(1, n - 1), size)
        for b in range(1, n)
    ]
    _run_all(check(n, b, frozenset(skip)) for n, b, skip in cases)
    assert exact > 0 and vague > 0
    assert in_fresh_processes("tests.test_flaky_parts:bisected", cases) == [results, results]


def test_bisect_skip_probes_nearest_right_then_left() -> None:
    commits = _commits(11)
    oracle = Oracle(first_bad=9, skip=frozenset({5, 6, 4}))
    result = asyncio.run(bisect(commits, oracle))
    assert oracle.asked[:4] == [5, 6, 4, 7]
    assert result.first_bad == "c9"
    assert result.skipped == ["c4", "c5", "c6"]


def test_bisect_reports_candidates_when_only_skips_remain() -> None:
    result = asyncio.run(bisect(_commits(5), Oracle(first_bad=2, skip=frozenset({1, 2, 3}))))
    assert result.first_bad is None
    assert result.last_good == "c0"
    assert result.message.endswith("the first bad commit is one of c1, c2, c3, c4")
    assert result.skipped == ["c1", "c2", "c3"]


def test_bisect_rejects_bad_input() -> None:
    async def nonsense(commit: str) -> tuple[Verdict, int]:
        return "maybe", 1  # type: ignore[return-value]

    with pytest.raises(ValueError, match="at least"):
        asyncio.run(bisect(["only"], Oracle(None)))
    with pytest.raises(ValueError, match="maybe"):
        asyncio.run(bisect(_commits(4), nonsense))


def test_bisect_of_adjacent_commits_probes_nothing() -> None:
    oracle = Oracle(first_bad=1)
    result = asyncio.run(bisect(["good", "bad"], oracle))
    assert (result.first_bad, result.last_good, result.steps) == ("bad", "good", [])
    assert oracle.asked == []


def _gallop(n: int) -> list[int]:
    indices, distance = [], 1
    while distance - 1 < n - 1:
        indices.append(distance - 1)
        distance *= 2
    return [*indices, n - 1]


def test_find_good_steps_back_exponentially_for_every_position() -> None:
    async def check(n: int, first_good: int | None) -> None:
        history = _commits(n)
        asked: list[int] = []

        async def probe(commit: str) -> tuple[Verdict, int]:
            # history is newest to oldest: the newest commits, below first_good, are bad
            index = int(commit[1:])
            asked.append(index)
            bad = first_good is None or index < first_good
            return ("bad", 1) if bad else ("good", 5)

        good, steps = await find_good(history, probe)
        order = _gallop(n)
        assert asked == order[: len(asked)]
        assert len(asked) <= math.floor(math.log2(n)) + 2
        if first_good is None:
            assert good is None
            assert asked == order
        else:
            assert good is not None
            index = int(good[1:])
            assert index >= first_good
            assert asked[-1] == index
            assert all(i < first_good for i in asked[:-1])
        newest_unknown = 0
        for step in steps:
            assert (step.lo, step.hi) == (newest_unknown, n - 1)
            if step.verdict == "bad":
                newest_unknown = int(step.commit[1:]) + 1

    _run_all(check(n, g) for n in range(1, 41) for g in [*range(n), None])


def test_find_good_passes_over_unbuildable_commits() -> None:
    history = _commits(20)
    oracle = Oracle(first_bad=None, skip=frozenset({1, 3, 7}))

    async def probe(commit: str) -> tuple[Verdict, int]:
        verdict, trials = await oracle(commit)
        if verdict == "good" and int(commit[1:]) < 2:
            return "bad", 1
        return verdict, trials

    good, steps = asyncio.run(find_good(history, probe))
    assert [s.verdict for s in steps] == ["bad", "skip", "skip", "skip", "good"]
    assert good == "c15"
    root_skipped = asyncio.run(find_good(_commits(3), Oracle(None, frozenset({0, 1, 2}))))
    assert root_skipped[0] is None
    assert asyncio.run(find_good([], Oracle(None))) == (None, [])
