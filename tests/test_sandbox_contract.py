"""The sandbox contract, one suite run against every backend with real sandboxes.

Each backend gets two sandboxes for the whole module (one with ``fs``, one without), so
the suite costs a handful of starts. A backend is skipped only when its binary is
missing. Where the ``local`` backend differs (it isolates nothing), the test asserts what
it does instead, so the difference stays documented and checked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import BACKENDS, SandboxSpec
from orchestrator.sandbox.factory import launcher_for, limiter_for
from orchestrator.sandbox.process import AgentSandbox
from tests.backends import backends

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", params=backends(*BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def home(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(f"contract-{backend}") / "home"


async def _open(backend: str, home: Path, effects: frozenset[str], name: str) -> AgentSandbox:
    sandbox = AgentSandbox(
        launcher_for(backend, home),  # type: ignore[arg-type]
        SandboxSpec(effects=effects),
        home / "ws" / name,
        limiter_for(home),
    )
    await sandbox.start()
    return sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rw(backend: str, home: Path) -> AsyncIterator[AgentSandbox]:
    """A sandbox whose workspace is writable (``fs``)."""
    sandbox = await _open(backend, home, frozenset({"fs"}), "rw")
    yield sandbox
    await sandbox.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ro(backend: str, home: Path) -> AsyncIterator[AgentSandbox]:
    """A sandbox without ``fs``: its workspace is read-only."""
    sandbox = await _open(backend, home, frozenset(), "ro")
    yield sandbox
    await sandbox.close()


def _root(backend: str, sandbox: AgentSandbox) -> str:
    """Where the workspace appears to commands inside the sandbox."""
    return str(sandbox.workspace.resolve()) if backend == "local" else "/workspace"


# ---- exec ------------------------------------------------------------------------------


async def test_exec_round_trip(backend: str, rw: AgentSandbox) -> None:
    (rw.workspace / "sub").mkdir(exist_ok=True)
    result = await rw.exec(
        ["sh", "-c", 'echo "out:$FOO:$(pwd)"; echo "err:$FOO" >&2'],
        env={"FOO": "bar baz"},
        cwd="sub",
    )
    assert result.code == 0, result.stderr
    assert result.stdout == f"out:bar baz:{_root(backend, rw)}/sub\n".encode()
    assert result.stderr == b"err:bar baz\n"
    assert result.timed_out is False
    assert 0 <= result.duration < 5

    # Commands see only the agent's minimal environment plus what was passed, never the
    # orchestrator's (no PYTEST_CURRENT_TEST, VIRTUAL_ENV, ... leaking in).
    env = await rw.exec(["env"], env={"FOO": "1"})
    names = {line.split("=", 1)[0] for line in env.stdout.decode().splitlines()}
    assert names == {"PATH", "HOME", "LANG", "FOO"}


async def test_nonzero_exit_and_signals(rw: AgentSandbox) -> None:
    result = await rw.exec(["sh", "-c", "echo partial; echo bad >&2; exit 7"])
    assert (result.code, result.stdout, result.stderr) == (7, b"partial\n", b"bad\n")
    assert result.timed_out is False
    killed = await rw.exec(["sh", "-c", "kill -TERM $$"])
    assert killed.code == -15  # killed by a signal: minus the signal number, as subprocess


async def test_stdin_is_passed_through_and_absent_stdin_is_eof(rw: AgentSandbox) -> None:
    data = os.urandom(1 << 20) + b"\0\n\xff"
    echoed = await rw.exec(["cat"], stdin=data)
    assert echoed.code == 0
    assert echoed.stdout == data
    # Without stdin a command that reads it gets EOF at once instead of hanging.
    started = time.monotonic()
    empty = await rw.exec(["cat"], timeout=10)
    assert (empty.code, empty.stdout, empty.timed_out) == (0, b"", False)
    assert time.monotonic() - started < 5


async def test_large_output_comes_back_intact(rw: AgentSandbox) -> None:
    result = await rw.exec(
        [
            "sh",
            "-c",
            "head -c 5000000 /dev/zero | tr '\\0' x; head -c 1000000 /dev/zero | tr '\\0' y >&2",
        ]
    )
    assert result.code == 0
    assert len(result.stdout) == 5_000_000 and result.stdout == b"x" * 5_000_000
    assert len(result.stderr) == 1_000_000 and result.stderr == b"y" * 1_000_000


async def test_timeout_kills_the_command_and_its_children(backend: str, rw: AgentSandbox) -> None:
    started = time.monotonic()
    result = await rw.exec(
        ["sh", "-c", "sleep 30 & echo $! > bg.pid; echo $$ > fg.pid; wait"], timeout=0.5
    )
    elapsed = time.monotonic() - started
    assert result.timed_out is True
    assert result.code != 0
    assert elapsed < 5, f"a 0.5 s timeout took {elapsed:.1f}s to return"

    pids = [(await rw.read(name)).decode().strip() for name in ("fg.pid", "bg.pid")]
    assert all(p.isdigit() for p in pids), pids
    probe = (
        "import json, sys\n"
        "out = {}\n"
        "for pid in sys.argv[1:]:\n"
        "    try:\n"
        "        stat = open(f'/proc/{pid}/stat').read()\n"
        "        out[pid] = stat[stat.rfind(')') + 2]\n"
        "    except FileNotFoundError:\n"
        "        out[pid] = 'gone'\n"
        "print(json.dumps(out))\n"
    )
    # The sandbox still works after a timeout, and neither the shell nor its background
    # child survived it.
    check = await rw.exec(["python3", "-c", probe, *pids], timeout=30)
    assert check.code == 0, check.stderr
    states = json.loads(check.stdout)
    if backend == "local":
        # Orphans of the local backend are reparented to the host's init, which may not
        # have reaped them yet: dead (zombie) is what can be asserted.
        assert set(states.values()) <= {"gone", "Z"}, states
    else:
        # Inside a sandbox nothing may linger, not even as a zombie of the sandbox init.
        assert set(states.values()) == {"gone"}, states


# ---- files -------------------------------------------------------------------------------


async def test_read_write_round_trip(rw: AgentSandbox) -> None:
    blob = bytes(range(256)) * 4000 + b"\xff\xfe not utf-8"
    await rw.write("nested/dir/blob.bin", b"first version")
    await rw.write("nested/dir/blob.bin", blob)
    assert await rw.read("nested/dir/blob.bin") == blob
    # It is a real file in the workspace: on the host, and to commands in the sandbox.
    assert (rw.workspace / "nested" / "dir" / "blob.bin").read_bytes() == blob
    assert sorted(os.listdir(rw.workspace / "nested" / "dir")) == ["blob.bin"]  # no temp
    size = await rw.exec(["sh", "-c", "wc -c < nested/dir/blob.bin"])
    assert int(size.stdout) == len(blob)
    made = await rw.exec(["sh", "-c", "printf 'made by a command' > made.txt"])
    assert made.code == 0
    assert await rw.read("made.txt") == b"made by a command"
    with pytest.raises(SandboxError, match="No such file"):
        await rw.read("does-not-exist")
    assert (await rw.exec(["true"])).code == 0  # an error answer leaves the sandbox usable


async def test_workspace_is_read_only_without_fs(backend: str, ro: AgentSandbox) -> None:
    (ro.workspace / "given.txt").write_bytes(b"from the host")
    # Reading needs no effect.
    assert await ro.read("given.txt") == b"from the host"
    shell = await ro.exec(["sh", "-c", "echo x > f"])
    if backend == "local":
        # local isolates nothing (local.py): without `fs` the workspace stays writable.
        assert shell.code == 0
        await ro.write("g", b"y")
        assert (ro.workspace / "f").exists() and (ro.workspace / "g").read_bytes() == b"y"
        return
    assert shell.code != 0
    assert b"Read-only file system" in shell.stderr
    with pytest.raises(SandboxError, match="Read-only file system"):
        await ro.write("g", b"y")
    for args in (["mkdir", "d"], ["rm", "given.txt"], ["touch", "given.txt"]):
        denied = await ro.exec(args)
        assert denied.code != 0, args
    assert sorted(os.listdir(ro.workspace)) == ["given.txt"]
    assert (ro.workspace / "given.txt").read_bytes() == b"from the host"


BAD_PATHS = ["/etc/passwd", "/workspace/x", "../outside", "a/../../b", "a/..", "..", "", "x\0y"]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_paths_must_be_relative_and_stay_inside(rw: AgentSandbox, path: str) -> None:
    with pytest.raises(ValueError, match="must be relative"):
        await rw.read(path)
    with pytest.raises(ValueError, match="must be relative"):
        await rw.write(path, b"nope")
    if path not in ("", "x\0y"):
        with pytest.raises(ValueError, match="must be relative"):
            await rw.exec(["true"], cwd=path)


async def test_agent_refuses_escaping_paths_on_its_own(rw: AgentSandbox) -> None:
    """Defence in depth: the agent refuses what the host side would have caught."""
    for request in (
        {"op": "read", "path": "../etc/passwd"},
        {"op": "read", "path": "/etc/passwd"},
        {"op": "write", "path": "../escaped", "data_b64": ""},
    ):
        with pytest.raises(SandboxError, match="must be relative"):
            await rw._call(dict(request))
    assert not (rw.workspace.parent / "escaped").exists()
    ok = await rw.exec(["true"])
    assert ok.code == 0


async def test_missing_binary_gives_127(rw: AgentSandbox) -> None:
    result = await rw.exec(["no-such-command-a1b2c3", "--flag"])
    assert result.code == 127
    assert b"no-such-command-a1b2c3" in result.stderr
    assert result.stdout == b""
    assert (await rw.exec(["true"])).code == 0
