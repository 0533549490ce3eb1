"""The model-provider contract: one request in, one completion out, errors in our tree.

A provider turns a :class:`CompletionRequest` into a :class:`Completion` and nothing
more: no streaming, no tools, no retries of its own beyond what the vendor SDK already
does. Budgets, journaling and replay wrap it from outside (``ctx.llm``), so every
provider stays a few screens long and the scripted one can stand in for the others.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import ProviderError

PER_MESSAGE_OVERHEAD = 8
"""Tokens allowed for each message's role and framing in the upper bound."""
REQUEST_OVERHEAD = 8
"""Tokens allowed for the request's own framing (e.g. the assistant turn's start)."""


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["user", "assistant"]
    content: str


class CompletionRequest(BaseModel):
    """What to ask a model: the same shape for every provider, and what the journal keys on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    messages: list[Message]
    system: str | None = None
    max_tokens: int = Field(ge=1)
    temperature: float | None = None

    def prompt_bytes(self) -> int:
        """UTF-8 length of the system prompt and every message's content."""
        parts = [self.system or "", *(m.content for m in self.messages)]
        return sum(len(p.encode()) for p in parts)

    def max_input_tokens(self) -> int:
        """A conservative upper bound on the prompt's tokens, with no network call.

        Byte-level BPE tokenizers (every current vendor's) emit tokens that each cover at
        least one byte of UTF-8, so the byte count never undercounts the text; each message
        adds ``PER_MESSAGE_OVERHEAD`` and the request ``REQUEST_OVERHEAD`` for framing.
        Budgets reserve this before a call; the real usage comes back in :class:`Usage`.
        """
        return self.prompt_bytes() + PER_MESSAGE_OVERHEAD * len(self.messages) + REQUEST_OVERHEAD

    def max_tokens_total(self) -> int:
        """The worst case this request can cost: the prompt bound plus ``max_tokens``."""
        return self.max_input_tokens() + self.max_tokens


class Usage(BaseModel):
    """Tokens a call consumed, as the provider reported them."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int
    output_tokens: int


class Completion(BaseModel):
    """A model's answer. ``model`` is the model that answered, as the provider names it."""

    model_config = ConfigDict(frozen=True)

    text: str
    model: str
    stop_reason: str | None
    usage: Usage


class Provider(Protocol):
    """A model backend: ``complete`` one request, ``aclose`` when done."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def aclose(self) -> None: ...


REDACTED = "[redacted]"


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every occurrence of each secret in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def status_error(
    provider: str,
    status_code: int,
    body: object,
    fallback: str,
    request_id: str | None,
    secrets: tuple[str, ...],
) -> ProviderError:
    """A ProviderError for an HTTP error response, quoting the server's own message."""
    kind, said = _server_message(body)
    text = f"{provider} call failed: HTTP {status_code}"
    if kind:
        text += f" {kind}"
    text += f": {said or fallback}"
    if request_id:
        text += f" (request id {request_id})"
    return ProviderError(
        redact(text, secrets), provider=provider, status_code=status_code, request_id=request_id
    )


def transport_error(
    provider: str, base_url: str, exc: BaseException, secrets: tuple[str, ...]
) -> ProviderError:
    """A ProviderError for a call that got no HTTP response (refused, reset, timed out)."""
    text = f"{provider} call failed: no response from {base_url}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        text += f" ({type(cause).__name__}: {cause})"
    return ProviderError(redact(text, secrets), provider=provider)


def _server_message(body: object) -> tuple[str | None, str | None]:
    """(error type, message) from an error body in either vendor's shape, or Nones."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            kind, said = inner.get("type"), inner.get("message")
            return (
                kind if isinstance(kind, str) and kind else None,
                said if isinstance(said, str) and said else None,
            )
        if isinstance(inner, str) and inner:
            return None, inner[:1000]
    if isinstance(body, str) and body.strip():
        return None, body.strip()[:1000]
    return None, None
