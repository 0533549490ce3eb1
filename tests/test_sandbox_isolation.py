"""Isolation of the gVisor and bubblewrap backends, probed from inside real sandboxes.

Network: a TCP listener the test opens on the host's 127.0.0.1 must be unreachable
without ``net`` and with ``net`` (a namespace of its own, outbound through slirp4netns:
``npm install`` works), and reachable only with ``host-net``; so must a host abstract
Unix socket. Files: two concurrent sandboxes
never see each other's workspace, the orchestrator home (ledger, secrets) is not there,
nor are host sockets under /run or host processes. The local backend is explicitly not
isolated; its test asserts exactly that, so the difference stays documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from orchestrator.sandbox.base import SandboxSpec
from orchestrator.sandbox.factory import launcher_for, limiter_for
from orchestrator.sandbox.process import AgentSandbox
from tests.backends import backends

ISOLATING = backends()

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
    "    print('connected', s.recv(16).decode())\n"
    "except OSError as exc:\n"
    "    print('refused', type(exc).__name__, exc)\n"
    "    sys.exit(3)\n"
)

# Looks, from inside, for anything it is given and reports what it found as JSON: which
# paths can be read or even stat'ed, which files named NAME exist anywhere outside the
# big read-only system trees, every unix socket, and every process command line.
PROBE = """
import json, os, socket, stat, sys
paths, name, sock = json.loads(sys.argv[1])
out = {"readable": [], "exists": [], "found": [], "sockets": [], "connected": [], "cmdlines": []}
for path in paths:
    try:
        with open(path, "rb") as f:
            f.read(1)
        out["readable"].append(path)
    except OSError:
        pass
    if os.path.lexists(path):
        out["exists"].append(path)
for top in os.listdir("/") if name else []:
    if top in ("proc", "sys", "usr", "dev") or os.path.islink("/" + top):
        continue  # the kernel's views and the read-only system (lib -> usr/lib, ...)
    for root, dirs, files in os.walk("/" + top):
        for entry in dirs + files:
            full = os.path.join(root, entry)
            if entry == name:
                out["found"].append(full)
            try:
                if stat.S_ISSOCK(os.lstat(full).st_mode):
                    out["sockets"].append(full)
            except OSError:
                pass
if sock:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(sock)
        out["connected"].append(sock)
    except OSError:
        pass
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            raw = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        out["cmdlines"].append(raw.replace(b"\\0", b" ").decode(errors="replace"))
print(json.dumps(out))
"""


class Listener:
    """A real TCP listener on the host's loopback that counts what it accepts."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        self._own: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if peer not in self._own:
                self.accepted.append(peer)
            with conn:
                conn.sendall(b"hello")

    def flush(self) -> None:
        """Connect from here and wait until that is accepted (not counted): connections
        made before it are accepted, and counted, by then (the backlog is served in order)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self._own.add(probe.getsockname())
            probe.settimeout(10)
            probe.connect(("127.0.0.1", self.port))
            assert probe.recv(16) == b"hello"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class UnixListener:
    """A unix socket a host service might expose (created, then removed again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(1)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@pytest.fixture
def listener() -> Iterator[Listener]:
    tcp = Listener()
    yield tcp
    tcp.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An orchestrator home holding what a sandbox must never see."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "ledger.db").write_bytes(b"SQLite format 3\0 pretend ledger")
    (home / "secrets").mkdir()
    (home / "secrets" / "token").write_text("s3cr3t-" + secrets.token_hex(8))
    return home


@pytest_asyncio.fixture
async def opened() -> AsyncIterator[list[AgentSandbox]]:
    """Sandboxes a test started; all closed afterwards."""
    started: list[AgentSandbox] = []
    yield started
    await asyncio.gather(*(s.close() for s in started), return_exceptions=True)


async def _start(
    opened: list[AgentSandbox], backend: str, home: Path, name: str, effects: set[str]
) -> AgentSandbox:
    sandbox = AgentSandbox(
        launcher_for(backend, home),  # type: ignore[arg-type]
        SandboxSpec(effects=frozenset(effects)),
        home / "sandbox" / "live" / name / "workspace",
        limiter_for(home),
    )
    opened.append(sandbox)
    await sandbox.start()
    return sandbox


async def _probe(
    sandbox: AgentSandbox, paths: list[str], name: str = "", sock: str = ""
) -> dict[str, list[str]]:
    result = await sandbox.exec(
        ["python3", "-c", PROBE, json.dumps([paths, name, sock])], timeout=60
    )
    assert result.code == 0, result.stderr.decode()
    probed: dict[str, list[str]] = json.loads(result.stdout)
    return probed


# ---- network -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ISOLATING)
async def test_no_network_without_net_and_host_loopback_only_with_host_net(
    backend: str, home: Path, listener: Listener, opened: list[AgentSandbox]
) -> None:
    closed, own, host = await asyncio.gather(
        _start(opened, backend, home, "no-net", set()),
        _start(opened, backend, home, "net", {"net"}),
        _start(opened, backend, home, "host-net", {"host-net"}),
    )
    for sandbox in (closed, own):
        refused = await sandbox.exec(["python3", "-c", CONNECT, str(listener.port)], timeout=30)
        assert refused.code == 3, refused.stdout + refused.stderr
        assert refused.stdout.startswith(b"refused")
    await asyncio.to_thread(listener.flush)
    assert listener.accepted == []

    # Not just loopback: without `net` there is no route anywhere but its own lo.
    routes = await closed.exec(
        [
            "python3",
            "-c",
            "import json, socket; print(json.dumps([n for _, n in socket.if_nameindex()]))",
        ]
    )
    assert routes.code == 0, routes.stderr
    assert set(json.loads(routes.stdout)) <= {"lo"}, routes.stdout

    reached = await host.exec(["python3", "-c", CONNECT, str(listener.port)], timeout=30)
    assert reached.code == 0, reached.stdout + reached.stderr
    assert reached.stdout == b"connected hello\n"
    assert len(listener.accepted) == 1


ABSTRACT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect('\\0' + sys.argv[1])\n"
    "    print('connected')\n"
    "except OSError as exc:\n"
    "    print('refused', type(exc).__name__)\n"
)


@pytest.mark.parametrize("backend", ISOLATING)
async def test_a_net_node_cannot_reach_host_abstract_unix_sockets(
    backend: str, home: Path, opened: list[AgentSandbox]
) -> None:
    name = f"orchestrator-test-{secrets.token_hex(6)}"
    server = socket.socket(socket.AF_UNIX)
    server.bind("\0" + name)
    server.listen(4)
    try:
        own = await _start(opened, backend, home, "net", {"net"})
        tried = await own.exec(["python3", "-c", ABSTRACT, name], timeout=30)
        assert tried.stdout.startswith(b"refused"), tried.stdout + tried.stderr
        if backend == "bwrap":  # gVisor keeps Unix sockets inside its own kernel anyway
            host = await _start(opened, backend, home, "host-net", {"host-net"})
            shared = await host.exec(["python3", "-c", ABSTRACT, name], timeout=30)
            assert shared.stdout == b"connected\n", shared.stdout + shared.stderr
    finally:
        server.close()


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("registry.npmjs.org", 443), timeout=10).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("backend", ISOLATING)
async def test_npm_install_works_in_a_net_node(
    backend: str, home: Path, opened: list[AgentSandbox]
) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    if not _registry_reachable():
        pytest.skip("the npm registry is not reachable from this host")
    own = await _start(opened, backend, home, "net", {"net", "fs"})
    resolv = await own.exec(["cat", "/etc/resolv.conf"])
    assert resolv.stdout == b"nameserver 10.0.2.3\n"
    done = await own.exec(
        [
            "sh",
            "-c",
            "cd /tmp && npm install --no-audit --no-fund --no-update-notifier left-pad "
            "&& cat node_modules/left-pad/package.json",
        ],
        timeout=300,
    )
    assert done.code == 0, done.stdout + done.stderr
    assert b'"name": "left-pad"' in done.stdout


# ---- files, home, sockets, processes -----------------------------------------------------


@pytest.mark.parametrize("backend", ISOLATING)
async def test_concurrent_sandboxes_and_the_home_are_invisible(
    backend: str, home: Path, opened: list[AgentSandbox]
) -> None:
    a, b = await asyncio.gather(
        _start(opened, backend, home, f"sbx-a-{secrets.token_hex(3)}", {"fs"}),
        _start(opened, backend, home, f"sbx-b-{secrets.token_hex(3)}", {"fs"}),
    )
    marker = f"only-in-a-{secrets.token_hex(4)}.txt"
    await a.write(marker, b"A's private data")
    host_copy = a.workspace / marker
    assert host_copy.read_bytes() == b"A's private data"

    run_socket = Path("/run") / f"orchestrator-test-{secrets.token_hex(4)}.sock"
    home_socket = home / "control.sock"
    services = [UnixListener(run_socket), UnixListener(home_socket)]
    try:
        secret_paths = [
            str(host_copy),  # A's workspace file by its host path
            str(a.workspace),  # A's workspace directory itself
            str(home / "ledger.db"),
            str(home / "secrets" / "token"),
            str(home),
            str(run_socket),
            str(home_socket),
        ]
        # The probe works: A finds its own file where its workspace is mounted.
        seen_by_a = await _probe(a, [], marker)
        assert seen_by_a["found"] == [f"/workspace/{marker}"]

        seen_by_b = await _probe(b, secret_paths, marker, str(run_socket))
        assert seen_by_b["readable"] == []
        assert seen_by_b["exists"] == []
        assert seen_by_b["found"] == []
        assert seen_by_b["sockets"] == []
        assert seen_by_b["connected"] == []
        listing = await b.exec(
            ["python3", "-c", "import json, os; print(json.dumps(os.listdir('/')))"]
        )
        assert "run" not in json.loads(listing.stdout), listing.stdout
        catted = await b.exec(["cat", str(home / "secrets" / "token"), str(host_copy)])
        assert catted.code != 0 and catted.stdout == b""
        # Nor does it see host processes (this test runner among them).
        assert seen_by_b["cmdlines"], "the probe must at least see itself"
        runner = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert runner not in seen_by_b["cmdlines"]
        assert not [c for c in seen_by_b["cmdlines"] if sys.executable in c]
        assert not [c for c in seen_by_b["cmdlines"] if a.id in c or "runsc" in c]
        # B's own workspace holds nothing of A's.
        assert marker not in os.listdir(b.workspace)
        assert (await b.exec(["test", "-e", marker])).code != 0
    finally:
        for service in services:
            service.close()


async def test_local_backend_is_not_isolated(
    home: Path, listener: Listener, opened: list[AgentSandbox]
) -> None:
    """local isolates nothing: no network namespace, the host's files. Documented here."""
    sandbox = await _start(opened, "local", home, "local", set())
    token = str(home / "secrets" / "token")
    read = await sandbox.exec(["cat", token])
    assert read.code == 0
    assert read.stdout.decode() == Path(token).read_text()
    reached = await sandbox.exec(["python3", "-c", CONNECT, str(listener.port)], timeout=30)
    assert reached.stdout == b"connected hello\n"
    assert len(listener.accepted) == 1
    # The same probe that finds nothing inside gVisor and bwrap finds it all here.
    sock = UnixListener(home / "control.sock")
    try:
        wanted = [str(home / "ledger.db"), token, str(sock.path)]
        seen = await _probe(sandbox, wanted, "", str(sock.path))
    finally:
        sock.close()
    assert seen["readable"] == wanted[:2]
    assert seen["exists"] == wanted
    assert seen["connected"] == [str(sock.path)]
    runner = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert runner in seen["cmdlines"]


# ---- identity ----------------------------------------------------------------------------


def _host_processes() -> list[tuple[int, int, list[str]]]:
    """(pid, real uid, argv) of every host process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            uid = next(
                int(line.split()[1])
                for line in (entry / "status").read_text().splitlines()
                if line.startswith("Uid:")
            )
        except (OSError, StopIteration):
            continue
        found.append((int(entry.name), uid, [a.decode(errors="replace") for a in argv if a]))
    return found


async def _sandbox_uids(backend: str, sandbox: AgentSandbox, marker: str) -> list[int]:
    """Host uids of what runs the sandbox's commands: bwrap's are host processes (the
    marker ``sleep``); gVisor's run inside its sentry (``runsc-sandbox``) and its stubs."""
    for _ in range(100):  # up to ~10 s for the backgrounded command to show
        procs = _host_processes()
        if backend == "bwrap":
            uids = [uid for _, uid, argv in procs if argv == ["sleep", marker]]
        else:
            sentries = {
                pid
                for pid, _, argv in procs
                if argv and argv[0] == "runsc-sandbox" and sandbox.id in argv
            }
            uids = [uid for pid, uid, _ in procs if pid in sentries]
        if uids:
            return uids
        await asyncio.sleep(0.1)
    raise AssertionError(f"no host process of sandbox {sandbox.id} found")


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: sandboxes already run as this user")
@pytest.mark.parametrize("backend", ISOLATING)
async def test_sandboxed_processes_run_as_an_unprivileged_host_uid(
    backend: str, home: Path, opened: list[AgentSandbox]
) -> None:
    sandbox = await _start(opened, backend, home, "uid", {"fs"})
    # A key of host root's, mode 0600, planted where the sandbox can see it.
    planted = sandbox.workspace / "planted.key"
    planted.write_text("private key bytes")
    planted.chmod(0o600)
    read = await sandbox.exec(["cat", "planted.key"])
    assert read.code != 0 and b"private" not in read.stdout
    assert b"Permission denied" in read.stderr
    # What the node was given stays its own to change.
    wrote = await sandbox.exec(["sh", "-c", "echo mine > made.txt && id -u && cat made.txt"])
    assert wrote.code == 0, wrote.stderr
    assert (sandbox.workspace / "made.txt").stat().st_uid != 0
    marker = f"{secrets.randbelow(10**6) + 1000}.{secrets.randbelow(999) + 1}"
    started = await sandbox.exec(["sh", "-c", f"sleep {marker} >/dev/null 2>&1 &"])
    assert started.code == 0, started.stderr
    uids = await _sandbox_uids(backend, sandbox, marker)
    assert uids and 0 not in uids, uids
