"""Canned answers from a JSONL file, for tests and offline demos.

Each line is ``{"text": ..., "match": ..., "input_tokens": ..., "output_tokens": ...,
"stop_reason": ...}`` with only ``text`` required. A line with ``match`` answers every
request whose last user message contains it (the first such line wins); the lines
without ``match`` are served in file order, one per call, and running out of them is a
ProviderError. Answers are labelled ``scripted/<model>`` so they are never mistaken for
a real model's, and never exceed the request's ``max_tokens``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import ConfigError, ProviderError
from orchestrator.models.base import Completion, CompletionRequest, Usage

BYTES_PER_TOKEN = 4
"""The default usage estimate: one token per four bytes of UTF-8, rounded up."""


class ScriptedLine(BaseModel):
    """One canned response."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    text: str
    match: str | None = Field(default=None, min_length=1)
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    stop_reason: str | None = None


class ScriptedProvider:
    """Answers from canned lines; see the module docstring for the rules."""

    name = "scripted"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = load_script(path)
        self._matched = [line for line in self.lines if line.match is not None]
        self._ordered = [line for line in self.lines if line.match is None]
        self._served = 0
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), None)
        line = next(
            (
                candidate
                for candidate in self._matched
                if last_user is not None and (candidate.match or "") in last_user
            ),
            None,
        )
        if line is None:
            if self._served >= len(self._ordered):
                raise ProviderError(
                    f"scripted responses exhausted after {self.calls} calls: all "
                    f"{len(self._ordered)} lines without `match` in {self.path} were served",
                    provider=self.name,
                )
            line = self._ordered[self._served]
            self._served += 1
        self.calls += 1
        return _answer(line, request)

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _answer(line: ScriptedLine, request: CompletionRequest) -> Completion:
    text, stop_reason = line.text, line.stop_reason or "end_turn"
    encoded = text.encode()
    limit_bytes = request.max_tokens * BYTES_PER_TOKEN
    if len(encoded) > limit_bytes:
        text = encoded[:limit_bytes].decode(errors="ignore")
        stop_reason = "max_tokens"
    output = line.output_tokens
    if output is None:
        output = math.ceil(len(text.encode()) / BYTES_PER_TOKEN)
    if output > request.max_tokens:
        output = request.max_tokens
        stop_reason = "max_tokens"
    input_tokens = line.input_tokens
    if input_tokens is None:
        input_tokens = math.ceil(request.prompt_bytes() / BYTES_PER_TOKEN)
    return Completion(
        text=text,
        model=f"scripted/{request.model}",
        stop_reason=stop_reason,
        usage=Usage(input_tokens=input_tokens, output_tokens=output),
    )


def load_script(path: Path) -> list[ScriptedLine]:
    """Parse a script file; any problem is a ConfigError naming the file and line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read scripted responses file {path}: {exc}") from None
    lines: list[ScriptedLine] = []
    for number, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object with a `text` field") from None
        try:
            lines.append(ScriptedLine.model_validate(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'line'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"{where}: {problems}") from None
    if not lines:
        raise ConfigError(f"scripted responses file {path} has no responses")
    return lines
