"""local: no isolation at all. Development only, chosen explicitly, and it says so."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.sandbox.base import BackendName, SandboxSpec
from orchestrator.sandbox.limits import Limits

WARNING = (
    "the local sandbox backend isolates nothing: commands run as this user on this host, "
    "with its network and files; use it only for development"
)


class LocalLauncher:
    """Runs the agent as a plain child process with the workspace as its directory."""

    name: BackendName = "local"

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent_dir: Path
    ) -> list[str]:
        return [
            "env",
            f"ORCHESTRATOR_WORKSPACE={workspace}",
            sys.executable,
            "-I",
            "-S",
            str(agent_dir / "agent.py"),
        ]

    def cleanup(self, sandbox_id: str) -> None:
        """Nothing to remove."""

    def host_limits(self, limits: Limits) -> Limits:
        return limits
