"""AgentSandbox: a sandbox process running the agent, driven over JSON lines.

Every backend is the same host-side object; only the launcher differs (how the agent's
process is wrapped: bwrap namespaces, a gVisor container, or nothing). Limits come from
a cgroup the launcher's process joins before it executes, so they hold for everything
the sandbox starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import shlex
import tempfile
import time
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any, Protocol, Self

from orchestrator.errors import CgroupError, SandboxError, SandboxLimitExceeded
from orchestrator.sandbox import identity
from orchestrator.sandbox.base import BackendName, CommandResult, Meter, SandboxSpec
from orchestrator.sandbox.cgroups.cgroup import Cgroup
from orchestrator.sandbox.cgroups.limiter import CgroupLimiter
from orchestrator.sandbox.disk import Disk
from orchestrator.sandbox.limits import Limits
from orchestrator.sandbox.snapshot.restore import RestoreResult
from orchestrator.sandbox.snapshot.restore import restore as restore_snapshot
from orchestrator.sandbox.snapshot.scan import Snapshot, SnapshotIndex
from orchestrator.sandbox.snapshot.scan import snapshot as take_snapshot
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.sandbox.teardown import (
    CLEANUP_GRACE_S,
    KILL_GRACE_S,
    REMOVE_GRACE_S,
    bounded,
    in_own_thread,
    kill_cgroup,
    kill_now,
    record_leak,
    stop_process,
)

AGENT = Path(__file__).with_name("agent.py")
SANDBOX_PREFIX = "sbx-"
STREAM_LIMIT = 1 << 30
GRACE_S = 5.0
START_TIMEOUT_S = 60.0
OP_TIMEOUT_S = 120.0
"""How long a ``read``/``write`` may take before the sandbox counts as broken."""
BREACH_POLL_S = 0.25


class Launcher(Protocol):
    """How a backend wraps the agent process."""

    name: BackendName

    def command(
        self, sandbox_id: str, spec: SandboxSpec, workspace: Path, agent_dir: Path
    ) -> list[str]:
        """The argv that starts the agent inside this backend's isolation."""

    def cleanup(self, sandbox_id: str) -> None:
        """Remove whatever the backend left for this sandbox (state dirs, containers)."""

    def host_limits(self, limits: Limits) -> Limits:
        """What the sandbox's host cgroup gets so that ``limits`` hold inside it."""


def _joining(cgroup: Cgroup | None, argv: list[str]) -> list[str]:
    """``argv`` prefixed by a shell that moves itself into ``cgroup`` and then execs.

    The move happens in the child, before the backend starts, so the limits hold from the
    first instruction; doing it here rather than in a ``preexec_fn`` keeps the event loop
    free (a cgroup v1 move costs ~10 ms per controller) and lets Python spawn with vfork.
    """
    if cgroup is None:
        return argv
    files = " ".join(shlex.quote(str(p / "cgroup.procs")) for p in cgroup.paths)
    script = f'for f in {files}; do echo $$ > "$f" || exit 125; done; exec "$@"'
    return ["/bin/sh", "-c", script, "sandbox-join", *argv]


def owner_alive(sandbox_id: str) -> bool:
    """Whether the orchestrator process that made ``sbx-PID-…`` still runs (unknown: yes)."""
    parts = sandbox_id.split("-")
    if len(parts) < 3 or parts[0] + "-" != SANDBOX_PREFIX or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def relative(path: str) -> str:
    """Workspace-relative paths only: never absolute, never ``..``."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\0" in path:
        raise ValueError(f"path {path!r} must be relative and stay inside the workspace")
    return str(pure)


class AgentSandbox:
    """A started sandbox: one agent process, one cgroup, one workspace."""

    def __init__(
        self,
        launcher: Launcher,
        spec: SandboxSpec,
        workspace: Path,
        limiter: CgroupLimiter | None,
        sandbox_id: str | None = None,
        leaks: Path | None = None,
        *,
        own_workspace: bool = True,
    ) -> None:
        self.backend: BackendName = launcher.name
        self.spec = spec
        self.workspace = workspace
        self.id = sandbox_id or f"{SANDBOX_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.leaks = leaks
        """Where a sandbox that cannot be stopped is recorded (None: nowhere)."""
        self._launcher = launcher
        self._limiter = limiter
        # An orchestrator-made workspace is given to the sandbox's identity; a
        # directory someone passed in keeps its owners.
        self._own_workspace = own_workspace
        self._cgroup: Cgroup | None = None
        self.disk: Disk | None = None
        """The disk-limited filesystem the workspace is on, if any (set by its owner)."""
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count()
        self._started = 0.0
        self._closed_at: float | None = None
        self._cpu_s = 0.0
        self._stderr: IO[bytes] | None = None

    async def start(self) -> None:
        try:
            # Inside the try: a failure after the cgroup exists must not leak it (nor the
            # diagnostics file). The backend's own diagnostics go to a file, opened only
            # here (a sandbox never started never opens it): an unread pipe could fill
            # and stall it.
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            self.workspace.mkdir(parents=True, exist_ok=True)
            if self.backend != "local" and self._own_workspace:
                await asyncio.to_thread(identity.give, self.workspace)
            if self._limiter is not None:
                self._cgroup = self._limiter.create(
                    self.id, self._launcher.host_limits(self.spec.limits)
                )
            command = self._launcher.command(self.id, self.spec, self.workspace, AGENT.parent)
            argv = _joining(self._cgroup, command)
            self._started = time.monotonic()
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._stderr,
                limit=STREAM_LIMIT,
                # A session of its own: Ctrl-C at the terminal pauses the run (drain,
                # then park) and must not kill the sandboxes that are draining.
                start_new_session=True,
            )
            await self._call({"op": "ping"}, timeout=START_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise

    async def _call(
        self,
        request: dict[str, Any],
        timeout: float | None = OP_TIMEOUT_S,  # noqa: ASYNC109 - the command's own limit
    ) -> dict[str, Any]:
        """Send one request and wait for its answer: ``timeout`` (None: no limit, for a
        command without one) plus ``GRACE_S``, then the sandbox is closed as broken."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise SandboxError(f"sandbox {self.id} is not running")
        async with self._lock:
            request["id"] = next(self._ids)
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            deadline = None if timeout is None else time.monotonic() + timeout + GRACE_S
            try:
                # A stopped agent reads nothing: a large request would fill the pipe.
                async with asyncio.timeout(None if timeout is None else timeout + GRACE_S):
                    await proc.stdin.drain()
                line = await self._answer(proc.stdout, deadline)
            except (TimeoutError, ConnectionError):
                line = b""
        if not line:
            breach = self._breach()
            stderr = self._stderr_tail()
            await self.close()
            if breach is not None:
                raise SandboxLimitExceeded(breach, self._limit_detail(breach))
            raise SandboxError(f"{self.backend} sandbox {self.id} stopped answering: {stderr}")
        response: dict[str, Any] = json.loads(line)
        if "error" in response:
            breach = self._breach()  # e.g. a write that found the disk full
            if breach is not None:
                await self.close()
                raise SandboxLimitExceeded(breach, self._limit_detail(breach))
            raise SandboxError(f"{self.backend} sandbox {self.id}: {response['error']}")
        return response

    async def _answer(self, stdout: asyncio.StreamReader, deadline: float | None) -> bytes:
        """The agent's reply line, watching the cgroup meanwhile: a breached limit kills
        everything in the sandbox at once, instead of when the command would have ended
        (a fork bomb's children would otherwise hold the pipes open)."""
        reply = asyncio.ensure_future(stdout.readline())
        try:
            while True:
                done, _ = await asyncio.wait({reply}, timeout=BREACH_POLL_S)
                if done:
                    return reply.result()
                if self._cgroup is not None and self._breach() is not None:
                    await kill_cgroup(self._cgroup, KILL_GRACE_S)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError
        finally:
            reply.cancel()

    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = ".",
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the command's own limit
    ) -> CommandResult:
        if timeout is None:
            timeout = self.spec.limits.timeout_s
        request: dict[str, Any] = {
            "op": "exec",
            "argv": list(argv),
            "cwd": relative(cwd) if cwd != "." else ".",
            "env": env or {},
            "stdin_b64": None if stdin is None else base64.b64encode(stdin).decode(),
            "timeout": timeout,
        }
        response = await self._call(request, timeout)
        breach = self._breach()
        if breach is not None:
            await self.close()
            raise SandboxLimitExceeded(breach, self._limit_detail(breach))
        return CommandResult(
            code=response["code"],
            stdout=base64.b64decode(response["stdout_b64"]),
            stderr=base64.b64decode(response["stderr_b64"]),
            duration=response["duration"],
            timed_out=response["timed_out"],
        )

    async def read(self, path: str) -> bytes:
        response = await self._call({"op": "read", "path": relative(path)})
        return base64.b64decode(response["data_b64"])

    async def write(self, path: str, data: bytes) -> None:
        await self._call(
            {"op": "write", "path": relative(path), "data_b64": base64.b64encode(data).decode()}
        )

    async def snapshot(
        self, store: ChunkStore, previous: SnapshotIndex | None = None
    ) -> tuple[Snapshot, SnapshotIndex]:
        """Snapshot the workspace; commands wait meanwhile, so the copy is consistent."""
        async with self._lock:
            return await asyncio.to_thread(take_snapshot, self.workspace, store, previous)

    async def restore(self, snapshot_id: str, store: ChunkStore) -> RestoreResult:
        """Make the workspace hold exactly the snapshot's tree (never writing outside it)."""
        async with self._lock:
            restored = await asyncio.to_thread(restore_snapshot, snapshot_id, store, self.workspace)
            if self.backend != "local" and self._own_workspace:
                await asyncio.to_thread(identity.give, self.workspace)
            return restored

    def meter(self) -> Meter:
        end = self._closed_at if self._closed_at is not None else time.monotonic()
        cpu_s = self._cgroup.usage().cpu_s if self._cgroup is not None else self._cpu_s
        return Meter(
            wall_s=round(end - self._started, 6) if self._started else 0.0,
            vcpus=self.spec.limits.cpu_share or 1.0,
            cpu_s=cpu_s,
        )

    def _breach(self) -> str | None:
        breach = self._cgroup.breach() if self._cgroup is not None else None
        if breach is None and self.disk is not None and self.disk.breached():
            return "disk"
        return breach

    def _limit_detail(self, breach: str) -> str:
        limits = self.spec.limits
        if breach == "memory":
            return f"the sandbox used more than {limits.memory_mb} MB; its processes were killed"
        if breach == "disk":
            return f"the sandbox wrote more than {limits.disk_mb} MB; its processes were killed"
        if breach == "pids":
            return f"the sandbox tried to run more than {limits.pids} processes; they were killed"
        return "the sandbox's processes were killed"

    def _stderr_tail(self) -> str:
        proc = self._proc
        text = ""
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.seek(0)
            text = self._stderr.read()[-2000:].decode(errors="replace").strip()
        return text[-500:] or f"exit code {proc.returncode if proc else '?'}"

    def pids(self) -> list[int]:
        """Host pids of the sandbox's processes (its cgroup's, else the agent's own)."""
        if self._cgroup is not None:
            return self._cgroup.pids()
        return [self._proc.pid] if self._proc is not None else []

    async def close(self) -> None:
        """Tear the sandbox down within ``TEARDOWN_GRACE_S``; never raises. What will not
        die by then is recorded as leaked (when the sandbox has a ``leaks`` directory) for
        the pool's sweep to remove later."""
        if self._closed_at is None and self._started:
            self._closed_at = time.monotonic()
        proc, self._proc = self._proc, None
        cgroup, self._cgroup = self._cgroup, None
        if proc is None and cgroup is None and (self._stderr is None or self._stderr.closed):
            return
        pid = proc.pid if proc is not None else None
        stopped = cleaned = True
        try:
            if proc is not None:
                stopped = await stop_process(proc, cgroup)
            if cgroup is not None:
                with contextlib.suppress(CgroupError):
                    self._cpu_s = cgroup.usage().cpu_s
                if stopped:  # rmdir of a cgroup can take tens of ms: not on the loop
                    stopped, _ = await bounded(
                        in_own_thread(lambda: cgroup.remove(REMOVE_GRACE_S / 2)),
                        REMOVE_GRACE_S,
                        f"removing cgroup {cgroup.name}",
                    )
            cleaned, _ = await bounded(
                in_own_thread(lambda: self._launcher.cleanup(self.id)),
                CLEANUP_GRACE_S,
                f"{self.backend} cleanup of {self.id}",
            )
        except BaseException:  # cut short (cancelled at shutdown): kill, record, go
            kill_now(pid, cgroup)
            stopped = False
            raise
        finally:  # also when the close itself is cancelled
            if self._stderr is not None:
                self._stderr.close()
            if (not stopped or not cleaned) and self.leaks is not None:
                record_leak(self.leaks, self.id, self.backend, pid, cgroup)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
