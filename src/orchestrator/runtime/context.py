"""NodeContext: the only door through which a node body touches the world.

Every call that is not deterministic goes through ``ctx`` and is journaled as an effect
with its request and response, keyed by (run, node, attempt, index). When a body runs
again (resume after a crash, or replay) the journal serves recorded responses in order,
and a request that differs from the recorded one is a non-determinism error naming the
node, attempt, index, expected and got.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random as _random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from orchestrator.errors import EffectFailed, EffectNotDeclared, NonDeterminism
from orchestrator.ledger.codec import digest
from orchestrator.ledger.events import EffectRecorded, ErrorInfo
from orchestrator.runtime.clock import Clock, iso, parse_iso
from orchestrator.sandbox.base import Sandbox, SandboxError

log = logging.getLogger("orchestrator.node")

EffectFields = dict[str, Any]
Recorder = Callable[[EffectFields], Awaitable[None]]


class SandboxSource(Protocol):
    """Where an attempt gets its sandbox from (started lazily, on first live use)."""

    async def get(self) -> Sandbox: ...


class JournalExhausted(BaseException):
    """Replay reached the end of an attempt's journal; the body is stopped there."""


class ExecResult(BaseModel):
    """What ``ctx.exec`` returns."""

    code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0


class ExecFailed(Exception):
    """``ctx.exec(..., check=True)`` saw a non-zero exit."""


@dataclass(frozen=True, slots=True)
class EffectSite:
    """Where a node attempt runs: identity, workspace and the journal so far."""

    run_id: str
    node: str
    attempt: int
    workspace: Path
    journal: Sequence[EffectRecorded]
    effects: frozenset[str] = frozenset({"fs", "net", "llm"})


class NodeContext:
    """Handed to ``run(ctx, inputs)``. All non-determinism goes through it."""

    def __init__(
        self,
        site: EffectSite,
        clock: Clock,
        record: Recorder | None,
        regenerated: list[EffectFields] | None = None,
        sandbox: SandboxSource | None = None,
        on_checkpoint: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self.run_id = site.run_id
        self.node = site.node
        self.attempt = site.attempt
        self.workspace = site.workspace
        self.effects = site.effects
        self._journal = site.journal
        self._clock = clock
        self._record = record
        self._regenerated = regenerated
        self._sandbox_handle = sandbox
        self._on_checkpoint = on_checkpoint
        self._index = 0
        # Held while an effect is performed and journaled: a checkpoint that takes it sees
        # the workspace and the journal agree.
        self.gate = asyncio.Lock()
        self.vm = VM(self)

    @property
    def replaying(self) -> bool:
        """True while effects are being served from the journal rather than performed."""
        return self._index < len(self._journal) or self._record is None

    def idempotency_key(self, index: int) -> str:
        return f"{self.run_id}/{self.node}/{self.attempt}/{index}"

    # ---- the journal --------------------------------------------------------------------

    async def _effect(
        self,
        kind: str,
        request: Any,
        perform: Callable[[str], Awaitable[tuple[Any, dict[str, float]]]],
    ) -> Any:
        index = self._index
        self._index += 1
        request = to_jsonable_python(request)
        fields: EffectFields = {
            "node": self.node,
            "attempt": self.attempt,
            "index": index,
            "effect": kind,
            "key": self.idempotency_key(index),
            "request": request,
            "request_digest": digest([kind, request]),
        }
        if index < len(self._journal):
            recorded = self._journal[index]
            if recorded.effect != kind or recorded.request_digest != fields["request_digest"]:
                raise NonDeterminism(
                    self.node,
                    self.attempt,
                    index,
                    f"{recorded.effect} {_short(recorded.request)}",
                    f"{kind} {_short(request)}",
                )
            if self._regenerated is not None:
                fields.update(response=recorded.response, usage=recorded.usage)
                self._regenerated.append(fields)
            return _unwrap(kind, recorded.response)
        if self._record is None:
            raise JournalExhausted
        async with self.gate:
            try:
                result, usage = await perform(fields["key"])
                response: dict[str, Any] = {"ok": to_jsonable_python(result)}
            except Exception as exc:
                response, usage = {"error": ErrorInfo.of(exc).model_dump()}, {}
            fields.update(response=response, usage=usage)
            await self._record(fields)
        return _unwrap(kind, response)

    # ---- effects ------------------------------------------------------------------------

    async def now(self) -> datetime:
        """The current time (UTC), as recorded."""

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            return iso(self._clock.now()), {}

        stamp: str = await self._effect("now", {}, perform)
        return parse_iso(stamp)

    async def random(self) -> float:
        """A uniform float in [0, 1), as recorded."""

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            return _random.random(), {}

        value: float = await self._effect("random", {}, perform)
        return value

    async def sleep(self, seconds: float) -> None:
        """A durable sleep: once journaled, a resumed body does not sleep it again."""

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            await self._clock.sleep(seconds)
            return None, {}

        await self._effect("sleep", {"seconds": seconds}, perform)

    async def log(self, message: str, **fields: Any) -> None:
        """A log line on the record (emitted to Python logging when first performed)."""

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            log.info("%s %s: %s", self.node, message, fields or "")
            return None, {}

        await self._effect("log", {"message": message, "fields": fields}, perform)

    async def checkpoint(self, label: str) -> None:
        """Take a checkpoint of the run now, this node's workspace included."""

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            if self._on_checkpoint is None:
                return None, {}
            return await self._on_checkpoint(label), {}

        await self._effect("checkpoint", {"label": label}, perform)

    async def tool(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) on the host as a recorded effect.

        The result must be JSON-compatible. Two keywords are supplied when ``fn`` accepts
        them, and are not part of the recorded request: ``idempotency_key`` (the effect's
        stable key, so a call in flight at a crash and performed again can be recognized
        as the same one) and ``workspace`` (the host path of what the node's sandbox sees
        at ``/workspace``).
        """
        accepted = inspect.signature(fn).parameters

        async def perform(key: str) -> tuple[Any, dict[str, float]]:
            extra: dict[str, Any] = {}
            if "idempotency_key" in accepted:
                extra["idempotency_key"] = key
            if "workspace" in accepted:
                extra["workspace"] = str(self.workspace)
            result = fn(*args, **kwargs, **extra)
            if inspect.isawaitable(result):
                result = await result
            return result, {}

        return await self._effect("tool", {"name": name, "args": args, "kwargs": kwargs}, perform)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str = ".",
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the command's limit, recorded
        check: bool = False,
    ) -> ExecResult:
        """Run a command in the node's sandbox, in its workspace (``cwd`` is relative).

        Environment values are recorded only as digests, so secrets passed here never
        reach the ledger in clear. ``ORCHESTRATOR_IDEMPOTENCY_KEY`` is set for the command.
        """
        extra_env = dict(env or {})
        request = {
            "argv": list(argv),
            "cwd": cwd,
            "env": {k: digest(v)[:16] for k, v in sorted(extra_env.items())},
            "stdin": stdin,
            "timeout": timeout,
        }

        async def perform(key: str) -> tuple[Any, dict[str, float]]:
            sandbox = await self._sandbox()
            done = await sandbox.exec(
                list(argv),
                env={**extra_env, "ORCHESTRATOR_IDEMPOTENCY_KEY": key},
                cwd=cwd,
                stdin=stdin.encode() if stdin is not None else None,
                timeout=timeout,
            )
            result = ExecResult(
                code=done.code,
                stdout=done.stdout.decode(errors="replace"),
                stderr=done.stderr.decode(errors="replace"),
                duration=done.duration,
                timed_out=done.timed_out,
            )
            return result.model_dump(), {"wall_s": done.duration}

        data = await self._effect("exec", request, perform)
        result = ExecResult.model_validate(data)
        if check and result.code != 0:
            raise ExecFailed(
                f"{' '.join(argv)} exited {result.code}: {(result.stderr or result.stdout)[-500:]}"
            )
        return result

    async def read(self, path: str) -> str:
        """Read a text file from the workspace."""

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            sandbox = await self._sandbox()
            return (await sandbox.read(path)).decode(), {}

        text: str = await self._effect("read", {"path": path}, perform)
        return text

    async def write(self, path: str, text: str) -> None:
        """Write a text file in the workspace (atomically); needs the ``fs`` effect."""
        if "fs" not in self.effects:
            raise EffectNotDeclared(f"node {self.node} writes {path!r} but does not declare 'fs'")

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            sandbox = await self._sandbox()
            await sandbox.write(path, text.encode())
            return None, {}

        await self._effect("write", {"path": path, "digest": digest(text)}, perform)

    async def _sandbox(self) -> Sandbox:
        if self._sandbox_handle is None:
            raise SandboxError(f"node {self.node} has no sandbox to run commands in")
        return await self._sandbox_handle.get()


class VM:
    """``ctx.vm``: the node's sandbox — ``exec``, ``read`` and ``write``, each journaled."""

    def __init__(self, ctx: NodeContext) -> None:
        self.exec = ctx.exec
        self.read = ctx.read
        self.write = ctx.write


def _unwrap(kind: str, response: Any) -> Any:
    if isinstance(response, dict) and "error" in response:
        err = response["error"]
        raise EffectFailed(kind, err["type"], err["message"], list(err.get("classes", [])))
    return response["ok"] if isinstance(response, dict) else response


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
