"""Choosing and opening backends: probe what works here, pick ``auto``, open a sandbox."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError, SandboxUnavailable
from orchestrator.sandbox.base import BACKENDS, BackendName, SandboxSpec
from orchestrator.sandbox.bwrap import BwrapLauncher
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter, cgroups_available
from orchestrator.sandbox.gvisor import GvisorLauncher
from orchestrator.sandbox.local import LocalLauncher
from orchestrator.sandbox.process import AgentSandbox, Launcher
from orchestrator.sandbox.teardown import leaks_dir

AUTO_ORDER: tuple[BackendName, ...] = ("gvisor", "bwrap")
MICROVM_NOTE = (
    "microvm: not built on this machine class — /dev/kvm here is a software KVM that cannot "
    "boot stock guest kernels; the Sandbox protocol and contract tests are the seam for it"
)


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether a backend works here, and why (not)."""

    backend: BackendName
    ok: bool
    reason: str
    start_s: float | None = None


def launcher_for(backend: BackendName, home: Path) -> Launcher:
    if backend == "gvisor":
        return GvisorLauncher(home / "sandbox" / "gvisor")
    if backend == "bwrap":
        return BwrapLauncher()
    return LocalLauncher()


def limiter_for(home: Path) -> CgroupLimiter | None:
    ok, _ = cgroups_available()
    return CgroupLimiter() if ok else None


# Probes that passed, per (backend, home): a backend that worked once in this process
# keeps working, and every run of a long-lived process need not start a sandbox for it.
_PASSED: dict[tuple[BackendName, Path], Probe] = {}


async def probe_backend(backend: BackendName, home: Path) -> Probe:
    """Start a real sandbox of this backend and run ``true`` in it (once per process and
    home when it passes). Each probe works in a directory of its own, so concurrent runs
    sharing a home never pull one another's probe workspace away."""
    needed = {"gvisor": "runsc", "bwrap": "bwrap"}.get(backend)
    if needed and shutil.which(needed) is None:
        return Probe(
            backend, False, f"`{needed}` is not installed (Debian package: {_pkg(backend)})"
        )
    key = (backend, home)
    if key in _PASSED:
        return _PASSED[key]
    started = time.monotonic()
    sandbox = AgentSandbox(
        launcher_for(backend, home), SandboxSpec(), Path(), None, leaks=leaks_dir(home)
    )
    sandbox.workspace = home / "sandbox" / "probe" / sandbox.id
    try:
        async with sandbox:
            result = await sandbox.exec(["true"], timeout=30)
        if result.code != 0:
            return Probe(backend, False, f"`true` exited {result.code} inside the sandbox")
    except Exception as exc:
        return Probe(backend, False, f"a probe sandbox failed: {str(exc)[:300]}")
    finally:
        shutil.rmtree(sandbox.workspace, ignore_errors=True)
    elapsed = round(time.monotonic() - started, 4)
    _PASSED[key] = Probe(backend, True, "a probe sandbox started and ran `true`", elapsed)
    return _PASSED[key]


async def probe_all(home: Path) -> list[Probe]:
    return [await probe_backend(b, home) for b in BACKENDS]


async def choose(backend: str, home: Path) -> tuple[BackendName, str]:
    """Resolve ``auto`` (gvisor when its probe passes, else bwrap) and check the choice."""
    if backend == "auto":
        reasons: list[str] = []
        for candidate in AUTO_ORDER:
            result = await probe_backend(candidate, home)
            if result.ok:
                why = f"auto picked {candidate}: {result.reason}"
                return candidate, "; ".join([*reasons, why])
            reasons.append(f"{candidate} unavailable ({result.reason})")
        raise SandboxUnavailable(
            "no isolating sandbox backend works here: "
            + "; ".join(reasons)
            + ". Install Debian's runsc or bubblewrap, or choose --sandbox local explicitly "
            "(no isolation, development only)"
        )
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown sandbox backend {backend!r} (choose auto, {', '.join(BACKENDS)})"
        )
    name: BackendName = backend
    if name == "local":
        return name, "local chosen explicitly: no isolation"
    result = await probe_backend(name, home)
    if not result.ok:
        raise SandboxUnavailable(f"sandbox backend {name} cannot run here: {result.reason}")
    return name, f"{name} chosen explicitly: {result.reason}"


def _pkg(backend: str) -> str:
    return {"gvisor": "runsc", "bwrap": "bubblewrap"}.get(backend, backend)
