"""A network namespace of its own with user-mode outbound networking (slirp4netns).

``python3 netns.py SLIRP4NETNS -- COMMAND...`` forks; the child unshares a network
namespace and waits; the parent, still in the host's namespace, attaches slirp4netns to
it (``tap0``, 10.0.2.100/24, gateway 10.0.2.2, DNS at 10.0.2.3) with connections to the
host's loopback prohibited, then lets the child exec COMMAND. The sandbox backend started
as COMMAND shares that namespace: outbound connections work (to the package registries),
the host's loopback services and abstract Unix sockets are out of reach. slirp4netns
ends with the command (its exit fd closes). Run by path with ``-I -S``: stdlib only.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CLONE_NEWNET = 0x40000000
READY_S = 15.0
NAMESERVER = "10.0.2.3"
SCRIPT = Path(__file__)


def wrap(argv: list[str], slirp: str) -> list[str]:
    """``argv`` run in a namespace of its own with outbound networking."""
    return [sys.executable, "-I", "-S", str(SCRIPT), slirp, "--", *argv]


_RESOLV: list[Path] = []


def resolv_conf() -> Path:
    """A resolv.conf naming slirp4netns's DNS forwarder (made once per process)."""
    if not _RESOLV:
        directory = Path(tempfile.mkdtemp(prefix="orchestrator-netns-"))
        directory.chmod(0o755)
        path = directory / "resolv.conf"
        path.write_text(f"nameserver {NAMESERVER}\n")
        path.chmod(0o644)
        _RESOLV.append(path)
    return _RESOLV[0]


def _fail(message: str) -> None:
    sys.stderr.write(f"netns: {message}\n")
    sys.stderr.flush()


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        _fail("usage: netns.py SLIRP4NETNS -- COMMAND...")
        return 125
    slirp, command = args[0], args[2:]
    made_r, made_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(made_r)
        os.close(go_w)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            _fail(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
            os._exit(125)
        os.write(made_w, b"1")
        os.close(made_w)
        if os.read(go_r, 1) != b"1":
            os._exit(125)
        os.close(go_r)
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    os.close(made_w)
    os.close(go_r)
    # Only the child talks to the orchestrator: its pipes must end when the child does.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if os.read(made_r, 1) != b"1":
        return _reap(child, None)
    exit_r, exit_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        slirp_proc = subprocess.Popen(
            [
                slirp,
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                f"--exit-fd={exit_r}",
                f"--ready-fd={ready_w}",
                str(child),
                "tap0",
            ],
            pass_fds=(exit_r, ready_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    except OSError as exc:
        _fail(f"cannot start {slirp}: {exc}")
        os.kill(child, signal.SIGKILL)
        return _reap(child, None)
    os.close(exit_r)
    os.close(ready_w)
    ready, _, _ = select.select([ready_r], [], [], READY_S)
    if not ready or os.read(ready_r, 1) != b"1":
        _fail(f"slirp4netns did not configure the network within {READY_S:g}s")
        os.kill(child, signal.SIGKILL)
        return _reap(child, slirp_proc, exit_w)
    os.write(go_w, b"1")
    os.close(go_w)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: os.kill(child, s))
    return _reap(child, slirp_proc, exit_w)


def _reap(child: int, slirp: subprocess.Popen[bytes] | None, exit_w: int | None = None) -> int:
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if exit_w is not None:
        os.close(exit_w)  # slirp4netns exits when this closes
    if slirp is not None:
        try:
            slirp.wait(timeout=5)
        except subprocess.TimeoutExpired:
            slirp.kill()
            slirp.wait(timeout=5)
    return os.waitstatus_to_exitcode(status) if status else 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.exit(code if code >= 0 else 128 - code)
