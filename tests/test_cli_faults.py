"""Bad input and damaged state never make the CLI print a traceback, succeed, or write.

Property tests run the real entry point (``orchestrator.cli.root.main``) in this process
with captured output, over generated arguments and damaged ledgers; the cases that need
real bytes in argv, or a read-only file system, run the CLI in a child process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli.root import main
from orchestrator.errors import PlanLoadError
from orchestrator.runtime.loader import load_plan
from tests.conftest import PLANS, cli

BASIC = PLANS / "basic.py"

# Every command that takes a run id, with RUN where it goes.
RUN_COMMANDS: list[tuple[str, ...]] = [
    ("status", "--once", "RUN"),
    ("status", "--json", "RUN"),
    ("ledger", "RUN"),
    ("ledger", "--json", "RUN"),
    ("ledger", "verify", "RUN"),
    ("replay", "RUN"),
    ("checkpoints", "RUN"),
    ("checkpoints", "verify", "RUN"),
    ("receipts", "RUN"),
    ("receipts", "--verify", "RUN"),
    ("pause", "--no-wait", "RUN"),
    ("resume", "RUN"),
    ("approve", "RUN", "review"),
    ("approve", "--show", "RUN", "review"),
]
READ_ONLY = [c for c in RUN_COMMANDS if c[0] not in ("pause", "resume", "approve")]

ODD_IDS = [
    "",
    " ",
    "nope",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "x" * 300,
    "20250101-120000-abcdef\n",
    "\x00",
    "é",
    "--",
    os.fsdecode(b"x\xffy"),
    "'; DROP TABLE events; --",
]
run_ids = st.one_of(
    st.sampled_from(ODD_IDS),
    st.text(max_size=40),
    st.binary(max_size=20).map(os.fsdecode),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
)


def invoke(home: Path, *args: str) -> tuple[int, str]:
    """Run ``orchestrator --home HOME ARGS`` in this process; (exit code, all output)."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["orchestrator", "--home", str(home), *args]
    code: int | str | None = 0
    with (
        mock.patch.object(sys, "argv", argv),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1), out.getvalue() + err.getvalue()


def tree_digest(root: Path) -> str:
    """Every path under ``root`` with its kind, mode and content hash."""
    h = hashlib.sha256()
    if not root.exists():
        return "absent"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            path = Path(dirpath, name)
            st_ = path.lstat()
            h.update(os.fsencode(path.relative_to(root)) + b"\0" + str(st_.st_mode).encode())
            # A lock file holds the pid of the last process to take the lock: lock
            # protocol, not data (resume takes it before it finds the run has ended).
            if path.is_file() and not path.is_symlink() and path.parent.name != "locks":
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def trust_of(home: Path) -> Path:
    """The trust directory where the ``finished`` run's key is pinned: the module fixture
    is set up before any test's own trust directory exists."""
    return home.parent / "trust"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A home holding one finished run of the basic plan (pinned in ``trust_of(home)``),
    and that run's id."""
    home = tmp_path_factory.mktemp("faults") / "home"
    home.mkdir()
    ran = cli(
        home,
        "run",
        f"{BASIC}:plan",
        "--input",
        "text=to be or not",
        "--sandbox",
        "local",
        env={"ORCHESTRATOR_TRUST": str(trust_of(home))},
    )
    assert ran.returncode == 0, ran.stderr
    return home, json.loads(cli(home, "ls", "--json").stdout)[0]["run_id"]


def with_run(command: tuple[str, ...], run_id: str) -> list[str]:
    return [run_id if part == "RUN" else part for part in command]


@pytest.mark.timeout(900)
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(RUN_COMMANDS), run_id=run_ids)
def test_any_run_id_gets_one_paragraph_and_writes_nothing(
    finished: tuple[Path, str], command: tuple[str, ...], run_id: str
) -> None:
    home, real = finished
    if run_id == real:
        return
    before = tree_digest(home)
    code, output = invoke(home, *with_run(command, run_id))
    assert "Traceback" not in output
    assert code != 0, output
    assert tree_digest(home) == before


@pytest.mark.timeout(900)
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(RUN_COMMANDS), run_id=run_ids)
def test_commands_on_a_missing_home_never_create_it(command: tuple[str, ...], run_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "nothing-here"
        code, output = invoke(home, *with_run(command, run_id))
        assert "Traceback" not in output
        assert code != 0
        assert not home.exists()


def _damage(ledger: Path, how: str, data: st.DataObject) -> None:
    raw = ledger.read_bytes()
    if how == "random":
        ledger.write_bytes(data.draw(st.binary(min_size=1, max_size=40_000)))
    elif how == "truncate":
        ledger.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    elif how == "flip":
        flipped = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(raw) - 1))
            flipped[at] ^= data.draw(st.integers(1, 255))
        ledger.write_bytes(bytes(flipped))
    elif how == "directory":
        ledger.unlink()
        ledger.mkdir()
    elif how == "bad-json":
        body = data.draw(st.sampled_from([b"{not json", b"\xff\xfe", b"", b"[]", b'{"kind":1}']))
        with contextlib.closing(sqlite3.connect(ledger)) as db:
            seq = data.draw(st.integers(0, db.execute("SELECT max(seq) FROM events").fetchone()[0]))
            db.execute("UPDATE events SET body=? WHERE seq=?", (body, seq))
            db.commit()


# Damage that every command notices (the others may hit bytes no command reads).
ALWAYS_NOTICED = ("random", "directory", "bad-json")


@contextlib.contextmanager
def copy_of(home: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "home"
        shutil.copytree(home, copy)
        yield copy


@pytest.mark.timeout(900)
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    command=st.sampled_from([*RUN_COMMANDS, ("ls",), ("ls", "--json")]),
    how=st.sampled_from(["random", "truncate", "flip", "directory", "bad-json"]),
    data=st.data(),
)
def test_a_damaged_ledger_gets_one_paragraph_and_writes_nothing(
    finished: tuple[Path, str], command: tuple[str, ...], how: str, data: st.DataObject
) -> None:
    source, run_id = finished
    with copy_of(source) as home:
        _damage(home / "ledger.db", how, data)
        before = tree_digest(home)
        code, output = invoke(home, *with_run(command, run_id))
        assert "Traceback" not in output
        if how in ALWAYS_NOTICED and command[0] not in ("ls", "checkpoints"):
            assert code != 0, output
        assert tree_digest(home) == before, output


def test_a_home_that_is_a_file_is_one_paragraph(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    for args in (("ls",), ("status", "abc"), ("run", f"{BASIC}:plan", "--input", "text=a")):
        code, output = invoke(home, *args)
        assert code == 1 and "Traceback" not in output
        assert "is not a directory" in " ".join(output.split())
    assert home.read_text() == "not a directory"


@pytest.mark.parametrize(
    "command", [c for c in RUN_COMMANDS if c[0] != "status" or c[1] == "--once"]
)
def test_a_non_utf8_run_id_in_argv_is_refused_by_every_command(
    finished: tuple[Path, str], command: tuple[str, ...]
) -> None:
    home, _ = finished
    before = tree_digest(home)
    args = [os.fsencode(p) if p != "RUN" else b"x\xffy" for p in command]
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--home", os.fsencode(home), *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1
    assert "Traceback" not in stderr
    assert "'x\\xffy' is not a run id" in stderr
    assert tree_digest(home) == before


def test_a_non_utf8_home_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    home = os.fsencode(tmp_path) + b"/h\xff"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--home", home, "run", f"{BASIC}:plan"],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert b"/h\\xff is not a UTF-8 path" in b" ".join(result.stderr.split())
    assert not os.path.exists(home)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bwrap for a read-only mount")
def test_a_read_only_home_reads_and_refuses_writes_in_one_paragraph(
    finished: tuple[Path, str],
) -> None:
    home, run_id = finished
    before = tree_digest(home)

    def ro(*args: str) -> subprocess.CompletedProcess[str]:
        wrap = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(home), str(home), "--"]
        return subprocess.run(
            [*wrap, sys.executable, "-m", "orchestrator.cli", "--home", str(home), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200", "ORCHESTRATOR_TRUST": str(trust_of(home))},
        )

    read = ro("ledger", "verify", run_id)
    assert read.returncode == 0 and "ledger OK" in read.stdout, read.stderr
    for args in (("run", f"{BASIC}:plan", "--input", "text=a"), ("resume", run_id)):
        refused = ro(*args)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "is read-only" in " ".join(refused.stderr.split())
    assert tree_digest(home) == before


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("raise SystemExit(0)", "called exit(0)"),
        ("import sys\nsys.exit(3)", "called exit(3)"),
        ("raise KeyboardInterrupt", "raised KeyboardInterrupt"),
        ("1/0", "raised ZeroDivisionError"),
    ],
)
def test_a_plan_that_exits_at_import_is_a_plan_error(tmp_path: Path, body: str, said: str) -> None:
    module = tmp_path / "exits.py"
    module.write_text(body + "\n")
    with pytest.raises(PlanLoadError, match=re.escape(f"importing '{module}' {said}")):
        load_plan(f"{module}:plan")


def test_run_of_a_plan_that_exits_at_import_fails_and_writes_nothing(tmp_path: Path) -> None:
    module = tmp_path / "exits.py"
    module.write_text("raise SystemExit(0)\n")
    home = tmp_path / "home"
    result = cli(home, "run", f"{module}:plan")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "called exit(0)" in " ".join(result.stderr.split())
    assert not (home / "ledger.db").exists()


def test_every_workload_plan_loads_by_its_ref_and_by_the_refs_older_versions_recorded() -> None:
    from orchestrator.workloads import demo, flaky_hunt

    for ref, plan in (
        (flaky_hunt.PLAN_REF, flaky_hunt.plan),
        (flaky_hunt.REVIEWED_REF, flaky_hunt.reviewed),
        (demo.PLAN_REF, demo.plan),
        ("orchestrator.workloads.flaky:plan", flaky_hunt.plan),
        ("orchestrator.workloads.flaky:reviewed", flaky_hunt.reviewed),
    ):
        assert load_plan(ref) is plan, ref
