"""bubblewrap: Linux namespaces around the agent — the fast backend (~4 ms to start).

Only what a command needs is bound in, read-only: ``/usr`` (with the usual ``/bin``,
``/lib`` symlinks) and a handful of ``/etc`` entries. Binding all of ``/`` would leave
host Unix sockets under ``/run`` reachable, so nothing else is. Without ``net`` the
sandbox gets a network namespace of its own with nothing in it; with ``net`` one with
user-mode outbound networking (:mod:`orchestrator.sandbox.netns`), so the host's loopback
services and abstract Unix sockets stay out of reach; only ``host-net`` shares the host's
network. Without ``fs`` the workspace is bound read-only. As root, the agent runs as the
unprivileged :mod:`~orchestrator.sandbox.identity`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from orchestrator.errors import SandboxError
from orchestrator.sandbox import identity, netns
from orchestrator.sandbox.base import BackendName, SandboxSpec
from orchestrator.sandbox.limits import Limits

ETC_ENTRIES = (
    "alternatives",
    "ssl",
    "ca-certificates",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "resolv.conf",
    "gitconfig",
    "localtime",
    "mime.types",
)
USR_LINKS = ("bin", "lib", "lib64", "sbin")


Network = Literal["none", "own", "host"]


def network(spec: SandboxSpec) -> Network:
    """``host`` with ``host-net``, a namespace of its own with ``net``, else none."""
    if "host-net" in spec.effects:
        return "host"
    return "own" if "net" in spec.effects else "none"


def slirp4netns() -> str:
    """The slirp4netns executable a ``net`` sandbox's outbound networking needs."""
    found = shutil.which("slirp4netns")
    if found is None:
        raise SandboxError(
            "a node with the `net` effect needs slirp4netns for its own network namespace "
            "(Debian package: slirp4netns); install it, or declare `host-net` to share the "
            "host's network"
        )
    return found


def system_binds(root: Path = Path("/"), net: Network = "host") -> list[tuple[Path, str]]:
    """(host path, sandbox path) pairs of the read-only system a command runs against.
    In a network namespace of its own, the resolver is slirp4netns's."""
    binds = [(root / "usr", "/usr")]
    for entry in ETC_ENTRIES:
        if entry == "resolv.conf" and net == "own":
            binds.append((netns.resolv_conf(), "/etc/resolv.conf"))
        elif (root / "etc" / entry).exists():
            binds.append((root / "etc" / entry, f"/etc/{entry}"))
    return binds


def _unshare() -> list[str]:
    """Every namespace; as root all but the user namespace, whose mapping would hold only
    root (the agent drops to the sandbox identity instead, see :func:`_drop`)."""
    if not identity.unprivileged():
        return ["--unshare-all"]
    return [
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]


def _drop() -> list[str]:
    """As root, the agent runs as the unprivileged sandbox identity (bwrap has mounted)."""
    if not identity.unprivileged():
        return []
    return [
        "/usr/bin/setpriv",
        f"--reuid={identity.SANDBOX_UID}",
        f"--regid={identity.SANDBOX_GID}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


class BwrapLauncher:
    """Runs the agent under ``bwrap`` with every namespace unshared."""

    name: BackendName = "bwrap"

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("bwrap") or "bwrap"

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent_dir: Path
    ) -> list[str]:
        net = network(spec)
        argv = [self.executable, *_unshare(), "--die-with-parent", "--new-session"]
        if net != "none":
            argv.append("--share-net")  # the host's, or the one netns.wrap made
        argv += ["--perms", "0755", "--dir", "/etc"]  # else made 0700: not for a non-root agent
        for host, inside in system_binds(net=net):
            argv += ["--ro-bind", str(host), inside]
        for link in USR_LINKS:
            if Path("/usr", link).exists():
                argv += ["--symlink", f"usr/{link}", f"/{link}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
        if spec.limits.disk_mb is not None:  # /tmp is writable too: same bound as the disk
            argv += ["--size", str(spec.limits.disk_mb << 20)]
        argv += ["--tmpfs", "/tmp"]
        argv += ["--bind" if "fs" in spec.effects else "--ro-bind", str(workspace), "/workspace"]
        argv += ["--ro-bind", str(agent_dir), "/agent"]
        argv += ["--hostname", "sandbox", "--chdir", "/workspace", "--clearenv"]
        argv += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
        argv += ["--", *_drop(), "/usr/bin/python3", "-I", "-S", "/agent/agent.py"]
        return netns.wrap(argv, slirp4netns()) if net == "own" else argv

    def cleanup(self, sandbox_id: str) -> None:
        """bwrap leaves nothing behind: its namespaces die with the process."""

    def host_limits(self, limits: Limits) -> Limits:
        """The sandbox's processes are host processes: the limits apply as they are."""
        return limits
