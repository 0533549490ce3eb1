"""Anthropic's Messages API through the official ``anthropic`` SDK.

The SDK (2.x) sends ``anthropic-version: 2026-10-21`` and the key as
``Authorization: Bearer``. That API version has no sampling parameters: a request with
``temperature`` set is refused here, before any network call, rather than sent to fail
with a 400. Calls are non-streaming, so the SDK refuses ``max_tokens`` it expects to
take longer than ten minutes (about 21k tokens); that refusal becomes a ProviderError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from orchestrator.errors import ConfigError, ProviderError
from orchestrator.models.base import (
    Completion,
    CompletionRequest,
    Usage,
    redact,
    status_error,
    transport_error,
)

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from anthropic.types import Message as SdkMessage
    from anthropic.types import MessageParam

DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicProvider:
    """Completes requests with Claude models; ``base_url`` is the API root, without ``/v1``."""

    name = "anthropic"

    def __init__(self, api_key: str, base_url: str | None = None, *, max_retries: int = 2) -> None:
        import anthropic

        self.base_url = base_url or DEFAULT_BASE_URL
        self._secrets = (api_key,)
        self._client: AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=self.base_url, max_retries=max_retries
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        import anthropic

        if request.temperature is not None:
            raise ConfigError(
                "the Anthropic API version this SDK speaks (2026-10-21) has no temperature "
                "parameter and answers 400 to any request carrying one; leave "
                "CompletionRequest.temperature unset for the anthropic provider"
            )
        messages: list[MessageParam] = []
        for m in request.messages:
            if m.role == "user":
                messages.append({"role": "user", "content": m.content})
            else:
                messages.append({"role": "assistant", "content": m.content})
        try:
            reply = await self._client.messages.create(
                model=request.model,
                messages=messages,
                max_tokens=request.max_tokens,
                system=request.system if request.system is not None else anthropic.omit,
            )
        except anthropic.APIStatusError as exc:
            raise status_error(
                self.name, exc.status_code, exc.body, exc.message, exc.request_id, self._secrets
            ) from None
        except anthropic.APIConnectionError as exc:
            raise transport_error(self.name, self.base_url, exc, self._secrets) from None
        except anthropic.AnthropicError as exc:
            raise ProviderError(
                redact(f"{self.name} call failed: {type(exc).__name__}: {exc}", self._secrets),
                provider=self.name,
            ) from None
        except ValueError as exc:
            raise ProviderError(
                f"{self.name} call refused by the SDK before sending: {exc}", provider=self.name
            ) from None
        return _completion(reply)

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _completion(reply: SdkMessage) -> Completion:
    """Join the text blocks; input usage counts cache reads and writes, every prompt token."""
    text = "".join(block.text for block in reply.content if block.type == "text")
    usage = reply.usage
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return Completion(
        text=text,
        model=reply.model,
        stop_reason=reply.stop_reason,
        usage=Usage(input_tokens=usage.input_tokens + cached, output_tokens=usage.output_tokens),
    )
