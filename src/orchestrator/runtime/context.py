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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from orchestrator.budget import FALLBACK_PRICE, Budget, Prices, Spent, check_call
from orchestrator.clock import Clock, iso, parse_iso
from orchestrator.codec import digest
from orchestrator.errors import (
    EffectFailed,
    EffectNotDeclared,
    ExecFailed,
    NodeError,
    NonDeterminism,
    SandboxError,
    TransientEffectFailed,
)
from orchestrator.ledger.events import EffectRecorded, ErrorInfo
from orchestrator.models.base import Completion, CompletionRequest, Message, Provider
from orchestrator.sandbox.base import Sandbox

log = logging.getLogger("orchestrator.node")

EffectFields = dict[str, Any]
Recorder = Callable[[EffectFields, str | None], Awaitable[None]]
"""Journals one effect (durably): its fields, and the snapshot of the workspace saved
right after it was performed (None when the effect could not have changed it)."""
SaveRecorder = Callable[[int, str], Awaitable[None]]
"""Records (durably) that the workspace as the journal stood at an index is a snapshot."""

SANDBOX_EFFECTS = frozenset({"exec", "read", "write"})
"""Effects performed in the sandbox: a resume redoes them against a restored workspace."""
UNREPEATABLE = frozenset({"tool", "llm"})
"""Effects a resume must never redo: each is preceded by a save of a changed workspace.
Other effects (sleep, log, ...) save one at most every so often, which bounds how much
sandbox work a resume redoes."""


class SandboxSource(Protocol):
    """Where an attempt gets its sandbox from (started lazily, on first live use)."""

    async def get(self) -> Sandbox: ...

    def touched(self) -> None:
        """The workspace may have changed (a command ran, a file was written)."""
        ...

    async def save(self, *, now: bool) -> str | None:
        """Snapshot the workspace if it changed since the last save (and, unless ``now``,
        the last save is not too recent); its snapshot id."""
        ...


class ModelSource(Protocol):
    """The run's model provider (opened lazily, on the first live call)."""

    name: str
    model: str | None

    def billed_as(self, model: str) -> str:
        """The model name answers will carry (and spend is priced under)."""
        ...

    async def get(self) -> Provider: ...


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one attempt may spend on model calls, and the prices that turn tokens into
    spend. ``limit`` None: no limit (the run has no ceiling and the node declares none)."""

    limit: Budget | None = None
    prices: Prices = field(default_factory=Prices)
    counted_from: int = 0
    """Model calls at journal indexes below this do not count against ``limit``: they
    were paid from an allowance the attempt used up before this one was granted."""


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


@dataclass(frozen=True, slots=True)
class EffectSite:
    """Where a node attempt runs: identity, workspace and the journal so far."""

    run_id: str
    node: str
    attempt: int
    workspace: Path
    journal: Sequence[EffectRecorded]
    effects: frozenset[str] = frozenset({"fs", "net", "llm"})
    feedback: tuple[str, ...] = ()


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
        models: ModelSource | None = None,
        allowance: Allowance | None = None,
        record_save: SaveRecorder | None = None,
    ) -> None:
        self.run_id = site.run_id
        self.node = site.node
        self.attempt = site.attempt
        self.workspace = site.workspace
        self.effects = site.effects
        self.feedback = site.feedback
        """Comments of people who rejected earlier attempts at this node's gate."""
        self._journal = site.journal
        self._clock = clock
        self._record = record
        self._record_save = record_save
        self._regenerated = regenerated
        self._sandbox_handle = sandbox
        self._on_checkpoint = on_checkpoint
        self._index = 0
        # Held while an effect is performed and journaled: a checkpoint that takes it sees
        # the workspace and the journal agree.
        self.gate = asyncio.Lock()
        self.vm = VM(self)
        self.llm = LLM(self, models, allowance or Allowance())

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
        value, _usage = await self._effect_with_usage(kind, request, perform)
        return value

    async def _effect_with_usage(
        self,
        kind: str,
        request: Any,
        perform: Callable[[str], Awaitable[tuple[Any, dict[str, float]]]],
    ) -> tuple[Any, dict[str, float]]:
        """Perform (or serve from the journal) one effect; its value and recorded usage."""
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
            return _unwrap(kind, recorded.response), recorded.usage
        if self._record is None:
            raise JournalExhausted
        handle = self._sandbox_handle
        async with self.gate:
            # Before any effect a resume must not redo, the workspace is saved if it
            # changed: a resume restores it and serves the journal from this index on.
            if handle is not None and self._record_save and kind not in SANDBOX_EFFECTS:
                saved = await handle.save(now=kind in UNREPEATABLE)
                if saved is not None:
                    await self._record_save(index, saved)
            try:
                result, usage = await perform(fields["key"])
                response: dict[str, Any] = {"ok": to_jsonable_python(result)}
            except Exception as exc:
                response, usage = {"error": ErrorInfo.of(exc).model_dump()}, {}
            after = None
            if handle is not None:
                if kind in ("exec", "write"):
                    handle.touched()
                elif kind == "tool":  # one handed the workspace may have changed it
                    after = await handle.save(now=True)
            fields.update(response=response, usage=usage)
            await self._record(fields, after)
        return _unwrap(kind, response), usage

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
                if self._sandbox_handle is not None:
                    # the workspace exists (and is restored, after a resume) once the
                    # sandbox runs; the tool may change it, so it is saved afterwards
                    await self._sandbox()
                    self._sandbox_handle.touched()
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
            output = output_tail(result.stderr or result.stdout)
            raise ExecFailed(f"{' '.join(argv)} exited {result.code}:\n{output}")
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


class LLM:
    """``ctx.llm``: model calls, each a journaled effect with its usage.

    A call whose maximum cost (an upper bound on the prompt's tokens plus ``max_tokens``)
    would pass the attempt's allowance is refused before it is sent. Resume and replay
    serve recorded answers: no model is ever called twice for one journaled call.
    """

    def __init__(self, ctx: NodeContext, models: ModelSource | None, allowance: Allowance):
        self._ctx = ctx
        self._models = models
        self._allowance = allowance
        self._spent = Spent()

    @property
    def available(self) -> bool:
        """Whether the run has a model provider (agents park for a person when not)."""
        return self._models is not None

    async def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Message | Mapping[str, str]] | None = None,
        system: str | None = None,
        model: str | None = None,
        max_tokens: int = 1024,
        temperature: float | None = None,
    ) -> Completion:
        """Ask the run's model provider; ``prompt`` is shorthand for one user message."""
        ctx = self._ctx
        if "llm" not in ctx.effects:
            raise EffectNotDeclared(f"node {ctx.node} calls a model but does not declare 'llm'")
        if self._models is None:
            raise NodeError(
                f"node {ctx.node} calls a model, but the run has no model provider "
                "(configure one with --llm, e.g. anthropic or openai@URL or scripted:FILE)"
            )
        chosen = model or self._models.model
        if chosen is None:
            raise NodeError(f"node {ctx.node} calls a model without naming one (--model)")
        listed = [Message(role="user", content=prompt)] if prompt is not None else []
        for m in messages or ():
            listed.append(m if isinstance(m, Message) else Message.model_validate(dict(m)))
        request = CompletionRequest(
            model=chosen,
            messages=listed,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        allowance = self._allowance
        limit = allowance.limit
        if limit is not None and limit.compute_h:
            # the attempt's compute is charged when its sandbox is released; keep room for it
            room = max(0.0, limit.spend_usd - allowance.prices.compute_spend(limit.compute_h))
            limit = limit.model_copy(update={"spend_usd": room})
        priced = self._models.billed_as(chosen)
        check_call(
            ctx.node,
            limit,
            self._spent,
            allowance.prices,
            priced,
            request.max_input_tokens(),
            max_tokens,
        )
        models = self._models

        async def perform(_key: str) -> tuple[Any, dict[str, float]]:
            provider = await models.get()
            done = await provider.complete(request)
            spend = allowance.prices.llm_spend(
                done.model, done.usage.input_tokens, done.usage.output_tokens
            )
            usage = {
                "input_tokens": float(done.usage.input_tokens),
                "output_tokens": float(done.usage.output_tokens),
                "spend_usd": spend,
            }
            if not allowance.prices.listed(done.model):
                usage[FALLBACK_PRICE] = 1.0
            return done.model_dump(mode="json"), usage

        wire = {"provider": models.name, **request.model_dump(mode="json")}
        index = ctx._index
        data, usage = await ctx._effect_with_usage("llm", wire, perform)
        if index >= allowance.counted_from:
            self._spent.add(
                int(usage.get("input_tokens", 0) + usage.get("output_tokens", 0)),
                0.0,
                float(usage.get("spend_usd", 0.0)),
            )
        return Completion.model_validate(data)


class VM:
    """``ctx.vm``: the node's sandbox — ``exec``, ``read`` and ``write``, each journaled."""

    def __init__(self, ctx: NodeContext) -> None:
        self.exec = ctx.exec
        self.read = ctx.read
        self.write = ctx.write


def _unwrap(kind: str, response: Any) -> Any:
    if isinstance(response, dict) and "error" in response:
        err = response["error"]
        classes = list(err.get("classes", []))
        failed = TransientEffectFailed if "TransientError" in classes else EffectFailed
        raise failed(kind, err["type"], err["message"], classes)
    return response["ok"] if isinstance(response, dict) else response


def output_tail(text: str, limit: int = 3000) -> str:
    """The end of a command's output, in whole lines (the error is usually last); a cut
    is marked, never made mid-word."""
    text = text.rstrip()
    if len(text) <= limit:
        return text
    kept: list[str] = []
    size = 0
    for line in reversed(text.splitlines()):
        if size + len(line) + 1 > limit:
            if not kept:  # one huge line: its end, from a word boundary
                words = line[-limit:].split(" ", 1)
                kept.append(words[-1])
            break
        kept.append(line)
        size += len(line) + 1
    return "[... earlier output cut ...]\n" + "\n".join(reversed(kept))


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
