"""Test runners: detect a repository's runner and speak its language.

Detection reads only the few files named in :data:`MARKER_FILES` (the caller fetches them),
so it is pure and needs no checkout. Everything else here is parsing of a run's combined
stdout+stderr: which tests failed (:func:`failing_tests`), what became of a run
(:func:`classify`: passed, test failed, could not collect, command not found, timeout,
crash), whether the command could not even run the tests (:func:`broke`, a bisection
``skip``), and the command that runs one test (:func:`test_command`).

Python runs use a virtualenv inside the checkout (``.orchestrator-venv``), invoked as
``python -m ...`` through ``PATH``: the checkout is installed wherever the install step runs
but mounted at ``/workspace`` for the test runs, and a venv's console scripts carry the
absolute path of their creation in their shebang while ``python`` does not. Go keeps its
module and build caches in the checkout likewise (``.orchestrator-gomod``,
``.orchestrator-gocache``).

Parsing is heuristic by nature: ANSI colour is stripped first, ids are returned sorted and
unique, and an output no parser understands yields ``[]`` (the caller then blames the
whole command).
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.agents import dependency_groups
from orchestrator.errors import ConfigError

__all__ = [
    "GO_CACHE",
    "GO_MODCACHE",
    "MARKER_FILES",
    "NOT_REACHED",
    "SANDBOX_ONLY_ENV",
    "VENV",
    "Outcome",
    "Runner",
    "broke",
    "cause",
    "classify",
    "detect",
    "failing_tests",
    "not_run_pattern",
    "test_command",
]

MARKER_FILES: tuple[str, ...] = (
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
)

VENV = ".orchestrator-venv"
GO_MODCACHE = ".orchestrator-gomod"
GO_CACHE = ".orchestrator-gocache"
SANDBOX_ONLY_ENV = frozenset({"PATH", "GOMODCACHE", "GOCACHE"})
"""Run environment that names places in the sandbox: left out of commands for people."""
WORKSPACE = "/workspace"

_PYTHON_MARKERS = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "pytest.ini",
    "tox.ini",
    "requirements.txt",
    "requirements-dev.txt",
)
_REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
_NPM_PLACEHOLDER = "no test specified"
# Test scripts that run jest under another name (`react-scripts test`, `umi-test`, ...): the
# package in the dependencies, or the command in scripts.test.
_JEST_WRAPPERS = ("react-scripts", "tsdx", "kcd-scripts", "@umijs/test", "umi-test")


class Runner(BaseModel):
    """How to install for, run, seed and read one repository's tests."""

    model_config = ConfigDict(frozen=True)

    name: Literal["pytest", "unittest", "npm", "go"]
    language: Literal["python", "javascript", "go"]
    framework: str
    """``pytest`` | ``unittest`` | ``jest`` | ``vitest`` | ``mocha`` | ``node`` | ``go``."""
    install: list[list[str]]
    """argv lists to run in the checkout, with network, to install test dependencies."""
    env: dict[str, str]
    """Environment added to every test run."""
    seed_env: list[str]
    """Environment variables that carry the per-run seed."""
    command: list[str]
    """The default command that runs the whole suite."""

    def seed_args(self, seed: int) -> list[str]:
        """Extra arguments carrying ``seed`` where the runner has a seed flag.

        Only Go takes one (``-shuffle=N`` randomizes test order reproducibly). npm gets none:
        the flags would have to cross ``npm test``'s script, and vitest's seed only matters
        with shuffling switched on, which changes what is being measured.
        """
        if self.name == "go":
            return [f"-shuffle={seed}"]
        return []


# ---- detection ------------------------------------------------------------------------------


def detect(files: dict[str, str], command: list[str] | None = None) -> Runner:
    """Pick the runner from marker files (relative path -> content) and the test command.

    Order: ``package.json`` with a real ``scripts.test`` -> npm; ``go.mod`` -> go; any
    Python marker -> the runner ``command`` names (``pytest`` or ``python -m pytest``,
    ``python -m unittest``), else pytest when pytest is mentioned or configured, else
    unittest. pytest is installed whenever it is the runner, declared or not, with the
    requirements files, the test dependency groups (PEP 735, :mod:`dependency_groups`)
    and the project itself when it declares dependencies.
    Raises :class:`ConfigError` when nothing matches.
    """
    package = _package_json(files)
    if package is not None and _npm_test_script(package):
        return _npm_runner(package, "package-lock.json" in files)
    if "go.mod" in files:
        return _go_runner(files["go.mod"])
    present = [name for name in _PYTHON_MARKERS if name in files]
    if present:
        return _python_runner(files, present, _named_python_runner(command or []))
    looked = ", ".join(MARKER_FILES)
    if package is not None:
        raise ConfigError(
            "package.json has no usable scripts.test and no other test runner was found "
            f"(looked for {looked}); pass the test command explicitly"
        )
    raise ConfigError(
        f"no test runner detected: none of {looked} is at the repository root; "
        "pass the test command explicitly"
    )


def _package_json(files: dict[str, str]) -> dict[str, Any] | None:
    if "package.json" not in files:
        return None
    try:
        data = json.loads(files["package.json"])
    except json.JSONDecodeError as exc:
        raise ConfigError(f"package.json is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _npm_test_script(package: dict[str, Any]) -> str:
    scripts = package.get("scripts")
    script = scripts.get("test") if isinstance(scripts, dict) else None
    if not isinstance(script, str) or _NPM_PLACEHOLDER in script:
        return ""
    return script


def _npm_runner(package: dict[str, Any], locked: bool) -> Runner:
    deps: set[str] = set()
    for key in ("devDependencies", "dependencies"):
        table = package.get(key)
        if isinstance(table, dict):
            deps.update(str(name) for name in table)
    script = _npm_test_script(package)
    framework = next(
        (name for name in ("vitest", "jest", "mocha") if name in deps or name in script),
        "jest" if any(name in deps or name in script for name in _JEST_WRAPPERS) else "node",
    )
    install = ["npm", "ci"] if locked else ["npm", "install"]
    return Runner(
        name="npm",
        language="javascript",
        framework=framework,
        install=[[*install, "--no-audit", "--no-fund"]],
        env={
            "CI": "1",
            "FORCE_COLOR": "0",
            "NO_COLOR": "1",
            "npm_config_update_notifier": "false",
        },
        seed_env=[],
        command=["npm", "test"],
    )


def _go_runner(go_mod: str) -> Runner:
    """Modules are downloaded into the checkout at install time (the only step with
    network; the install command sets its own proxy since it may run with ``env``), and
    test runs read them there with the proxy off, so a missing module fails fast.

    The build cache lives in the checkout too (:data:`GO_CACHE`), warmed at install by
    compiling every package's tests without running them: a sandbox's ``HOME`` is empty,
    and without it every run would compile the standard library again (minutes)."""
    paths = f'GOMODCACHE="$PWD/{GO_MODCACHE}" GOCACHE="$PWD/{GO_CACHE}"'
    toolchain = 'PATH="/usr/local/go/bin:$PATH" GOTOOLCHAIN=local'
    install: list[list[str]] = []
    if re.search(r"^\s*require\b", go_mod, re.MULTILINE):
        install.append(
            [
                "sh",
                "-c",
                f"{toolchain} {paths} GOPROXY=https://proxy.golang.org,direct go mod download",
            ]
        )
    # best effort: a package that does not build fails its runs, and those say why
    install.append(
        ["sh", "-c", f"{toolchain} {paths} GOPROXY=off go test -exec=true ./... || true"]
    )
    return Runner(
        name="go",
        language="go",
        framework="go",
        install=install,
        env={
            "PATH": "/usr/local/go/bin:/usr/bin:/bin",
            "GOFLAGS": "-count=1",
            "GOMODCACHE": f"{WORKSPACE}/{GO_MODCACHE}",
            "GOCACHE": f"{WORKSPACE}/{GO_CACHE}",
            "GOTOOLCHAIN": "local",
            "GOPROXY": "off",
        },
        seed_env=[],
        command=["go", "test", "./..."],
    )


def _named_python_runner(command: list[str]) -> str | None:
    """``pytest`` or ``unittest`` when the command runs one (``pytest ...``, ``python -m
    pytest ...``), else None."""
    if not command:
        return None
    program = command[0].rsplit("/", 1)[-1]
    if program in ("pytest", "py.test"):
        return "pytest"
    if re.fullmatch(r"python[0-9.]*", program) and command[1:2] == ["-m"]:
        module = command[2] if len(command) > 2 else ""
        return module if module in ("pytest", "unittest") else None
    return None


def _python_runner(files: dict[str, str], present: list[str], named: str | None) -> Runner:
    declared = _uses_pytest(files, present)
    pytest = named == "pytest" or (named is None and declared)
    packages = ["pytest"] if pytest or declared else []
    for name in _REQUIREMENTS:
        if name in files:
            packages += ["-r", name]
    grouped = dependency_groups.requirements_for_tests(_pyproject(files))
    packages += [requirement for requirement in grouped if requirement not in packages]
    if _declares_dependencies(files):
        packages += ["-e", "."]
    # --copies: a real interpreter in the venv, not a symlink to /usr/bin/python3, which
    # a checkpoint's workspace snapshot leaves out (it keeps no symlink leading outside
    # the workspace): a node resumed from one would find no `python` to run the tests.
    install = [["python3", "-m", "venv", "--copies", VENV]]
    if packages:
        pip = [f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check"]
        install.append([*pip, *packages])
    return Runner(
        name="pytest" if pytest else "unittest",
        language="python",
        framework="pytest" if pytest else "unittest",
        install=install,
        env={
            "PATH": f"{WORKSPACE}/{VENV}/bin:/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",
            "CI": "1",
        },
        seed_env=["PYTHONHASHSEED"],
        command=(
            ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
            if pytest
            else ["python", "-m", "unittest"]
        ),
    )


def _uses_pytest(files: dict[str, str], present: list[str]) -> bool:
    if "pytest.ini" in files:
        return True
    return any(re.search(r"\bpytest\b", files[name], re.IGNORECASE) for name in present)


def _pyproject(files: dict[str, str]) -> dict[str, Any]:
    """``pyproject.toml``'s tables, or none when it is missing or not valid TOML."""
    try:
        return tomllib.loads(files.get("pyproject.toml", ""))
    except tomllib.TOMLDecodeError:
        return {}


def _declares_dependencies(files: dict[str, str]) -> bool:
    """Whether the project itself must be installed for its tests to import their deps."""
    if "pyproject.toml" in files:
        data = _pyproject(files)
        project = data.get("project")
        if isinstance(project, dict) and project.get("dependencies"):
            return True
        poetry = data.get("tool", {}).get("poetry", {}).get("dependencies")
        if isinstance(poetry, dict) and set(poetry) - {"python"}:
            return True
    return any(
        re.search(r"\binstall_requires\b", files.get(name, ""))
        for name in ("setup.py", "setup.cfg")
    )


# ---- output parsing -------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PYTEST_SUMMARY = re.compile(r"^(?:FAILED|ERROR) (\S+::.+?)(?: - .*)?$")
_PYTEST_VERBOSE = re.compile(r"^(\S+::\S+) (?:FAILED|ERROR)\b")
_UNITTEST = re.compile(r"^(?:FAIL|ERROR): (\S+) \(([\w.]+)\)")
_JEST_CROSS = re.compile(r"^\s*✕ (.+?)(?: \(\d+(?:\.\d+)? ?m?s\))?$")
_JEST_HEADER = re.compile(r"^\s*● (.+)$")
_JEST_SEP = " \u203a "  # jest joins describe blocks and the test name with U+203A
_JEST_NOT_TESTS = ("Test suite failed to run", "Console", "Validation ", "Deprecation ")
_VITEST_FAIL = re.compile(r"^\s*FAIL\s+(\S.*? > .+?)\s*$")
_VITEST_PROJECT = re.compile(r"^\|[^|]+\| ")
_VITEST_CROSS = re.compile("^\\s*[\u00d7\u2717] (.+?)(?: \\d+(?:\\.\\d+)?m?s)?$")
_MOCHA = re.compile(r"^\s+(\d+)\) (.+?):?$")
_NODE_CROSS = re.compile(r"^\s*✖ (.+?)(?: \(\d+(?:\.\d+)?m?s\))?$")
_TAP_NOT_OK = re.compile(r"^\s*not ok \d+ - (.+?)(?: # .*)?$")
_GO_FAIL = re.compile(r"^\s*--- FAIL: (\S+)")


def failing_tests(runner: Runner, output: str) -> list[str]:
    """Ids of the tests that failed in one run's combined output, sorted and unique.

    pytest ``path::name``; unittest ``module.Class.method``; jest ``Suite <U+203A> name``; vitest
    ``file > suite > name``; mocha and node the test's title; go ``TestName[/sub]``.
    """
    lines = _ANSI.sub("", output).replace("\r", "").splitlines()
    if runner.framework == "pytest":
        ids = _pytest_failures(lines)
    elif runner.framework == "unittest":
        ids = _unittest_failures(lines)
    elif runner.framework == "jest":
        ids = _jest_failures(lines)
    elif runner.framework == "vitest":
        ids = _vitest_failures(lines)
    elif runner.framework == "mocha":
        ids = _mocha_failures(lines)
    elif runner.framework == "go":
        ids = {m.group(1) for line in lines if (m := _GO_FAIL.match(line))}
    else:
        ids = _node_failures(lines)
    return sorted(ids)


def _pytest_failures(lines: list[str]) -> set[str]:
    found: set[str] = set()
    for line in lines:
        match = _PYTEST_SUMMARY.match(line) or _PYTEST_VERBOSE.match(line)
        if match:
            found.add(match.group(1))
    return found


def _unittest_failures(lines: list[str]) -> set[str]:
    found: set[str] = set()
    for line in lines:
        match = _UNITTEST.match(line)
        if match is None:
            continue
        method, where = match.groups()
        # Python 3.11+ prints "(module.Class.method)", earlier versions "(module.Class)".
        found.add(where if where.endswith(f".{method}") else f"{where}.{method}")
    return found


def _jest_failures(lines: list[str]) -> set[str]:
    headers = {
        m.group(1).strip()
        for line in lines
        if (m := _JEST_HEADER.match(line)) and not m.group(1).startswith(_JEST_NOT_TESTS)
    }
    crosses = {m.group(1).strip() for line in lines if (m := _JEST_CROSS.match(line))}
    leaves = {header.rsplit(_JEST_SEP, 1)[-1] for header in headers}
    return headers | {name for name in crosses if name not in leaves}


def _vitest_failures(lines: list[str]) -> set[str]:
    """A workspace prints the project first (``FAIL  |web| file > name``); the id keeps the
    file, which a narrowed command passes as its filter."""
    fails = {
        _VITEST_PROJECT.sub("", m.group(1)) for line in lines if (m := _VITEST_FAIL.match(line))
    }
    crosses = {m.group(1).strip() for line in lines if (m := _VITEST_CROSS.match(line))}
    return fails | {c for c in crosses if not any(f.endswith(f" > {c}") for f in fails)}


def _mocha_failures(lines: list[str]) -> set[str]:
    """Mocha numbers each failure twice: inline under its suite (the test's own title,
    seen first) and again in the report; the first sighting of each number wins."""
    titles: dict[str, str] = {}
    for line in lines:
        match = _MOCHA.match(line)
        if match:
            titles.setdefault(match.group(1), match.group(2).strip())
    return set(titles.values())


def _node_failures(lines: list[str]) -> set[str]:
    """node --test: the spec reporter's "failing tests" section lists leaves only; without
    it, every ✖ line; the TAP reporter's ``not ok`` lines minus suites whose subtests
    failed."""
    if "✖ failing tests:" in lines:
        lines = lines[lines.index("✖ failing tests:") + 1 :]
    found = {m.group(1) for line in lines if (m := _NODE_CROSS.match(line))}
    for i, line in enumerate(lines):
        match = _TAP_NOT_OK.match(line)
        if match is None:
            continue
        block = []
        for following in lines[i + 1 : i + 12]:
            if following.strip() == "...":
                break
            block.append(following)
        if not any("subtestsFailed" in text for text in block):
            found.add(match.group(1))
    return found


# ---- commands -------------------------------------------------------------------------------


def test_command(runner: Runner, user_command: list[str], test_id: str | None) -> list[str]:
    """The command that runs just ``test_id`` (an id from :func:`failing_tests`); the user's
    command when ``test_id`` is None."""
    if test_id is None:
        return list(user_command)
    if runner.framework == "pytest":
        base = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
        return [*base, *_pytest_options(user_command), test_id]
    if runner.framework == "unittest":
        return ["python", "-m", "unittest", test_id]
    if runner.name == "go":
        pattern = "/".join(f"^{_regex_escape(part)}$" for part in test_id.split("/"))
        if user_command[:2] == ["go", "test"]:
            return [*user_command[:2], "-run", pattern, *user_command[2:]]
        return ["go", "test", "-run", pattern, "./..."]
    base = list(user_command) if user_command[:1] == ["npm"] else ["npm", "test"]
    if "--" not in base:
        base.append("--")
    if runner.framework == "vitest":
        file, _, rest = test_id.partition(" > ")
        if rest:
            return [*base, file, "-t", _regex_escape(rest.replace(" > ", " "))]
        return [*base, "-t", _regex_escape(file)]
    if runner.framework == "jest":
        return [*base, "-t", _regex_escape(test_id.replace(_JEST_SEP, " "))]
    if runner.framework == "mocha":
        return [*base, "--grep", _regex_escape(test_id)]
    return [*base, "--test-name-pattern", _regex_escape(test_id)]


_PYTEST_VALUED = frozenset(
    [
        "-o",
        "--override-ini",
        "-k",
        "-m",
        "-p",
        "-c",
        "--config-file",
        "-W",
        "--pythonwarnings",
        "--rootdir",
        "--basetemp",
        "--confcutdir",
        "--ignore",
        "--ignore-glob",
        "--deselect",
        "--import-mode",
        "--tb",
        "--maxfail",
        "--log-level",
        "--durations",
        "-n",
        "--dist",
        "-r",
        "--capture",
        "--junitxml",
        "--junit-xml",
        "--log-file",
        "--log-cli-level",
        "--cov",
        "--cov-report",
        "--cov-config",
        "--timeout",
        "--reruns",
        "--randomly-seed",
    ]
)
"""pytest options whose value is the next argument (when not joined with ``=``)."""


def _pytest_options(command: list[str]) -> list[str]:
    """The options of the user's pytest command (``pytest ...`` or ``python -m pytest ...``)
    without its paths and without ``-q``, which the narrowed command already has: a suite
    may collect only with them (``-o pythonpath=tests``)."""
    if _named_python_runner(command) != "pytest":
        return []
    args = command[1:] if command[1:2] != ["-m"] else command[3:]
    kept: list[str] = []
    takes_value = False
    for arg in args:
        if takes_value:
            kept.append(arg)
            takes_value = False
        elif arg.startswith("-") and arg not in ("-q", "--quiet"):
            kept.append(arg)
            takes_value = arg in _PYTEST_VALUED
    return kept


def _regex_escape(text: str) -> str:
    """Escape for a JavaScript or Go (RE2) regular expression."""
    return re.sub(r"([\\^$.*+?()\[\]{}|/-])", r"\\\1", text)


_NOT_RUN = (126, 127)
_PYTEST_BROKEN = (2, 3, 4, 5)
_UNITTEST_IMPORT = ("ImportError", "ModuleNotFoundError", "SyntaxError")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_NPM_BROKEN = re.compile(
    r"Missing script: |● Test suite failed to run|^No tests found|No test files found"
    r"|^\s*FAIL\s+(\S+) \[ \1 \]|Cannot find module '(?:jest|vitest|mocha)",
    re.MULTILINE,
)
_GO_BROKEN = (
    "[build failed]",
    "[setup failed]",
    "cannot find main module",
    "no required module provides package",
    "requires go >=",
    "missing go.sum entry",
    "module lookup disabled",
    "failed to initialize build cache",  # GOCACHE unwritable: no package was built
)


Outcome = Literal[
    "passed", "test-failed", "could-not-collect", "command-not-found", "timeout", "crash"
]
"""What became of one run: it passed; a test failed (an assertion or an error inside the
test); the tests could not be collected (import or syntax error, no tests found, the
runner itself missing); the command was not found (exit 126/127); it timed out; or it
was killed by a signal."""

NOT_REACHED: frozenset[Outcome] = frozenset({"could-not-collect", "command-not-found"})
"""The outcomes of a run that never reached the test."""

_NO_MODULE = re.compile(r"^\S*python[0-9.]*: No module named ", re.MULTILINE)


def classify(runner: Runner, code: int, output: str, timed_out: bool = False) -> Outcome:
    """What became of one run, from its exit code, output and whether it timed out.

    Could not collect: pytest exit 2-5 or a collection error; unittest import failures
    without test results, zero tests ran or NO TESTS RAN; an interpreter that has no such
    module as its ``-m`` (``No module named pytest``); a missing npm script, no tests or an
    unloadable suite; a go build or module failure. Crash: killed by a signal (negative
    code, or 129-159 through a shell) other than the timeout's."""
    if timed_out:
        return "timeout"
    text = _ANSI.sub("", output)
    if runner.framework == "unittest":
        ran = [int(n) for n in _UNITTEST_RAN.findall(text)]
        if ran and max(ran) == 0:
            return "could-not-collect"
    if code == 0:
        return "passed"
    if code in _NOT_RUN:
        return "command-not-found"
    if code < 0 or 128 < code < 160:
        return "crash"
    return "could-not-collect" if _not_collected(runner, code, text) else "test-failed"


def _not_collected(runner: Runner, code: int, text: str) -> bool:
    if runner.language == "python" and _NO_MODULE.search(text):
        return True
    if runner.framework == "pytest":
        return code in _PYTEST_BROKEN or "ERROR collecting" in text
    if runner.framework == "unittest":
        if "unittest.loader._FailedTest" in text or "NO TESTS RAN" in text:
            return True
        return not _UNITTEST_RAN.search(text) and any(e in text for e in _UNITTEST_IMPORT)
    if runner.name == "go":
        return any(marker in text for marker in _GO_BROKEN)
    return _NPM_BROKEN.search(text) is not None


def broke(runner: Runner, code: int, output: str) -> bool:
    """Whether the command could not even run the tests (a bisection ``skip``): the run's
    :func:`classify` outcome is in :data:`NOT_REACHED`. A timeout never counts: a hang may
    be the flake itself."""
    return classify(runner, code, output) in NOT_REACHED


_CAUSE = re.compile(
    r"No module named|ModuleNotFoundError|ImportError|SyntaxError|not found|"
    r"No tests? (?:found|files found)|NO TESTS RAN|^Ran 0 tests|ERROR collecting|"
    r"Missing script|cannot run|Cannot find module|build failed|setup failed|requires go|"
    r"failed to initialize build cache",
    re.MULTILINE,
)


def cause(output: str) -> str:
    """The line of a run's output that best names why it never reached the test: the last
    line naming a missing module or command, an import or syntax error, no tests or a
    failed build; else the last non-empty line."""
    lines = [line.strip() for line in _ANSI.sub("", output).splitlines() if line.strip()]
    named = [line for line in lines if _CAUSE.search(line)]
    return (named or lines or [""])[-1]


_NOT_RUN_TEXT: dict[str, str] = {
    "python": r"^[^ ]*python[0-9.]*: No module named |: (command )?not found$",
    "pytest": r"ERROR collecting|^(ERROR: )?(file or directory )?not found:|no tests ran in",
    "unittest": r"unittest\.loader\._FailedTest|NO TESTS RAN|^Ran 0 tests",
    "go": r"\[build failed\]|\[setup failed\]|cannot find main module|missing go\.sum entry|"
    r"no required module provides package|requires go >=|failed to initialize build cache",
    "npm": r"Missing script: |Test suite failed to run|^No tests found|No test files found|"
    r"Cannot find module '(jest|vitest|mocha)",
}


def not_run_pattern(framework: str) -> str:
    """A POSIX extended regular expression (``grep -E``) matching output of a run of
    ``framework`` that never reached the test (for scripts that run outside Python)."""
    common = _NOT_RUN_TEXT["python"]
    if framework in ("pytest", "unittest"):
        return f"{common}|{_NOT_RUN_TEXT[framework]}"
    if framework == "go":
        return f"{common}|{_NOT_RUN_TEXT['go']}"
    return f"{common}|{_NOT_RUN_TEXT['npm']}"
