"""OpenAI chat completions through the official ``openai`` SDK: OpenAI itself, and the
servers that speak its wire format (vLLM, Ollama, llama.cpp's server).

The output limit goes out as ``max_tokens``, which every compatible server reads, except
to api.openai.com, whose reasoning models refuse it and want ``max_completion_tokens``.
A server that reports no usage is charged the conservative bound: the request's
``max_input_tokens()`` in, and at most one token per byte of the answer out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import urlsplit

from orchestrator.errors import ProviderError
from orchestrator.models.base import (
    Completion,
    CompletionRequest,
    Usage,
    redact,
    status_error,
    transport_error,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "unused"
"""Sent to local servers that need no key: the SDK insists on one."""

TokenParam = Literal["max_tokens", "max_completion_tokens"]


def token_param_for(base_url: str) -> TokenParam:
    """``max_completion_tokens`` for api.openai.com, ``max_tokens`` for everyone else."""
    return (
        "max_completion_tokens" if urlsplit(base_url).hostname == "api.openai.com" else "max_tokens"
    )


class OpenAICompatProvider:
    """Completes requests through ``POST {base_url}/chat/completions``."""

    name = "openai"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        max_retries: int = 2,
        token_param: TokenParam | None = None,
    ) -> None:
        import openai

        self.base_url = base_url or DEFAULT_BASE_URL
        self.token_param: TokenParam = token_param or token_param_for(self.base_url)
        self._secrets = (api_key,) if api_key != PLACEHOLDER_KEY else ()
        self._client: AsyncOpenAI = openai.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, max_retries=max_retries
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        import openai

        messages: list[ChatCompletionMessageParam] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        for m in request.messages:
            if m.role == "user":
                messages.append({"role": "user", "content": m.content})
            else:
                messages.append({"role": "assistant", "content": m.content})
        limit = request.max_tokens
        temperature = request.temperature if request.temperature is not None else openai.omit
        try:
            if self.token_param == "max_completion_tokens":
                reply = await self._client.chat.completions.create(
                    model=request.model,
                    messages=messages,
                    max_completion_tokens=limit,
                    temperature=temperature,
                )
            else:
                reply = await self._client.chat.completions.create(
                    model=request.model,
                    messages=messages,
                    max_tokens=limit,
                    temperature=temperature,
                )
        except openai.APIStatusError as exc:
            raise status_error(
                self.name, exc.status_code, exc.body, exc.message, exc.request_id, self._secrets
            ) from None
        except openai.APIConnectionError as exc:
            raise transport_error(self.name, self.base_url, exc, self._secrets) from None
        except openai.OpenAIError as exc:
            raise ProviderError(
                redact(f"{self.name} call failed: {type(exc).__name__}: {exc}", self._secrets),
                provider=self.name,
            ) from None
        return self._completion(request, reply)

    def _completion(self, request: CompletionRequest, reply: ChatCompletion) -> Completion:
        if not reply.choices:
            raise ProviderError(
                f"{self.name} call failed: the server at {self.base_url} answered with no choices",
                provider=self.name,
            )
        choice = reply.choices[0]
        text = choice.message.content or ""
        if reply.usage is not None:
            usage = Usage(
                input_tokens=reply.usage.prompt_tokens,
                output_tokens=reply.usage.completion_tokens,
            )
        else:
            usage = Usage(
                input_tokens=request.max_input_tokens(),
                output_tokens=min(request.max_tokens, len(text.encode())),
            )
        return Completion(
            text=text, model=reply.model, stop_reason=choice.finish_reason, usage=usage
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
