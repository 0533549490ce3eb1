"""bubblewrap: Linux namespaces around the agent — the fast backend (~4 ms to start).

Only what a command needs is bound in, read-only: ``/usr`` (with the usual ``/bin``,
``/lib`` symlinks) and a handful of ``/etc`` entries. Binding all of ``/`` would leave
host Unix sockets under ``/run`` reachable, so nothing else is. Without ``net`` the
sandbox gets a network namespace of its own with nothing in it; without ``fs`` the
workspace is bound read-only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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


def system_binds(root: Path = Path("/")) -> list[tuple[Path, str]]:
    """(host path, sandbox path) pairs of the read-only system a command runs against."""
    binds = [(root / "usr", "/usr")]
    binds += [(root / "etc" / e, f"/etc/{e}") for e in ETC_ENTRIES if (root / "etc" / e).exists()]
    return binds


class BwrapLauncher:
    """Runs the agent under ``bwrap`` with every namespace unshared."""

    name: BackendName = "bwrap"

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("bwrap") or "bwrap"

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent_dir: Path
    ) -> list[str]:
        argv = [self.executable, "--unshare-all", "--die-with-parent", "--new-session"]
        if "net" in spec.effects:
            argv.append("--share-net")
        for host, inside in system_binds():
            argv += ["--ro-bind", str(host), inside]
        for link in USR_LINKS:
            if Path("/usr", link).exists():
                argv += ["--symlink", f"usr/{link}", f"/{link}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        if spec.limits.disk_mb is not None:  # /tmp is writable too: same bound as the disk
            argv += ["--size", str(spec.limits.disk_mb << 20)]
        argv += ["--tmpfs", "/tmp"]
        argv += ["--bind" if "fs" in spec.effects else "--ro-bind", str(workspace), "/workspace"]
        argv += ["--ro-bind", str(agent_dir), "/agent"]
        argv += ["--hostname", "sandbox", "--chdir", "/workspace", "--clearenv"]
        argv += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
        return [*argv, "--", "/usr/bin/python3", "-I", "-S", "/agent/agent.py"]

    def cleanup(self, sandbox_id: str) -> None:
        """bwrap leaves nothing behind: its namespaces die with the process."""

    def host_limits(self, limits: Limits) -> Limits:
        """The sandbox's processes are host processes: the limits apply as they are."""
        return limits
