"""gVisor (runsc): a user-space kernel between the node and the host.

The strongest isolation available on machines without hardware KVM. Each sandbox is an
OCI container: a read-only root with only ``/usr`` and a few ``/etc`` entries bound in,
the workspace at ``/workspace`` (read-only without ``fs``), and runsc's network either
``none`` (no interfaces but loopback of its own), ``host`` inside a namespace of its own
with ``net`` (:mod:`orchestrator.sandbox.netns` gives it user-mode outbound networking;
the host's loopback is out of reach) or ``host`` itself with ``host-net``.
The ptrace platform is used because it needs no KVM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from orchestrator.sandbox import identity, netns
from orchestrator.sandbox.base import BackendName, SandboxSpec
from orchestrator.sandbox.bwrap import USR_LINKS, network, slirp4netns, system_binds
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.teardown import CLEANUP_GRACE_S

# The host cgroup's pids controller counts gVisor's own tasks, not the sandbox's
# processes: ~100 threads for runsc, its gofer and the sentry before anything runs, and
# ~17 more per process inside (ptrace platform: a stub process per address space; threads
# inside cost next to nothing). Measured with runsc 20221219 on 2 CPUs.
SENTRY_TASKS = 160
TASKS_PER_PROCESS = 20


class GvisorLauncher:
    """Runs the agent as ``runsc run`` of a per-sandbox OCI bundle."""

    name: BackendName = "gvisor"

    def __init__(
        self, state: Path, executable: str | None = None, platform: str = "ptrace"
    ) -> None:
        self.state = state
        self.executable = executable or shutil.which("runsc") or "runsc"
        self.platform = platform

    def _flags(self, spec: SandboxSpec | None = None) -> list[str]:
        net = network(spec) if spec is not None else "none"
        # ``own``: runsc's host network, inside the namespace netns.wrap made (this runsc's
        # own network stack refuses to start on kernels newer than it: it takes every
        # namespace for the root one)
        mode = "none" if net == "none" else "host"
        return [
            self.executable,
            f"--root={self.state / 'runsc'}",
            f"--platform={self.platform}",
            f"--network={mode}",
            "--ignore-cgroups",
        ]

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent_dir: Path
    ) -> list[str]:
        bundle = self.state / "bundles" / sandbox_id
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        for link in USR_LINKS:
            if Path("/usr", link).exists() and not (rootfs / link).is_symlink():
                (rootfs / link).symlink_to(f"usr/{link}")
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            _tmp(spec.limits.disk_mb),
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        ]
        net = network(spec)
        for host, inside in system_binds(net=net):
            mounts.append(_bind(host, inside, writable=False))
        mounts.append(_bind(workspace, "/workspace", writable="fs" in spec.effects))
        mounts.append(_bind(agent_dir, "/agent", writable=False))
        namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        if net == "none":
            namespaces.append({"type": "network"})
        config = {
            "ociVersion": "1.0.0",
            "process": {
                "terminal": False,
                "user": _user(),
                "args": ["/usr/bin/python3", "-I", "-S", "/agent/agent.py"],
                "env": ["PATH=/usr/bin:/bin", "HOME=/tmp"],
                "cwd": "/workspace",
            },
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "sandbox",
            "mounts": mounts,
            "linux": {"namespaces": namespaces},
        }
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        argv = [*self._flags(spec), "run", f"--bundle={bundle}", sandbox_id]
        return netns.wrap(argv, slirp4netns()) if net == "own" else argv

    def host_limits(self, limits: Limits) -> Limits:
        """``pids`` counts processes inside the sandbox; on the host that takes room for
        the sentry's own tasks and for each process's stub (see ``TASKS_PER_PROCESS``)."""
        if limits.pids is None:
            return limits
        pids = SENTRY_TASKS + TASKS_PER_PROCESS * limits.pids
        return limits.model_copy(update={"pids": pids})

    def cleanup(self, sandbox_id: str) -> None:
        """``runsc delete --force``, bounded: a wedged runsc raises TimeoutExpired."""
        subprocess.run(
            [*self._flags(), "delete", "--force", sandbox_id],
            capture_output=True,
            timeout=CLEANUP_GRACE_S - 1,
            check=False,
        )
        shutil.rmtree(self.state / "bundles" / sandbox_id, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Containers a previous (crashed) process left in runsc's state directory."""
        listed = subprocess.run(
            [*self._flags(), "list", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        return [line for line in listed.stdout.split() if line]


def _tmp(disk_mb: int | None) -> dict[str, Any]:
    """``/tmp``, a tmpfs bounded like the disk (it is writable too)."""
    options = ["mode=1777"] if disk_mb is None else ["mode=1777", f"size={disk_mb << 20}"]
    return {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": options}


def _user() -> dict[str, int]:
    """The container's user: as root, the unprivileged sandbox identity."""
    if identity.unprivileged():
        return {"uid": identity.SANDBOX_UID, "gid": identity.SANDBOX_GID}
    return {"uid": 0, "gid": 0}


def _bind(host: Path, inside: str, *, writable: bool) -> dict[str, Any]:
    options = ["rbind", "rw" if writable else "ro"]
    return {"destination": inside, "type": "bind", "source": str(host), "options": options}
