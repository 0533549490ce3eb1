"""Model providers: real SDK clients against loopback peers, the scripted provider, specs."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.errors import ConfigError
from orchestrator.models import (
    AnthropicProvider,
    Completion,
    CompletionRequest,
    Message,
    OpenAICompatProvider,
    Provider,
    ProviderError,
    ScriptedProvider,
    Usage,
    open_provider,
)
from orchestrator.models.openai_compat import token_param_for
from tests.llm_peers import (  # noqa: F401 - fixtures
    Peer,
    Wire,
    anthropic_peer_fixture,
    openai_peer_fixture,
    serve,
)

KEY = "sk-test-0123456789abcdefSECRET"
WIRES: tuple[Wire, ...] = ("anthropic", "openai")


def ask(
    *texts: str, system: str | None = "be brief", max_tokens: int = 64, **kw: Any
) -> CompletionRequest:
    roles = ["user", "assistant"]
    messages = [Message(role=roles[i % 2], content=t) for i, t in enumerate(texts)]
    return CompletionRequest(
        model="test-model", messages=messages, system=system, max_tokens=max_tokens, **kw
    )


def connect(peer: Peer, max_retries: int = 2) -> AnthropicProvider | OpenAICompatProvider:
    if peer.wire == "anthropic":
        return AnthropicProvider(KEY, peer.base_url, max_retries=max_retries)
    return OpenAICompatProvider(KEY, peer.base_url, max_retries=max_retries)


def leaks_key(exc: BaseException) -> bool:
    shown = "".join(traceback.format_exception(exc)) + repr(exc)
    return KEY in shown


@pytest.fixture(params=WIRES)
def peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    yield from serve(request.param)


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# The request shape and its token bound


def test_request_is_frozen_strict_and_needs_a_positive_max_tokens() -> None:
    with pytest.raises(ValidationError):
        ask("hi", max_tokens=0)
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", messages=[], max_tokens=1, top_p=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Message(role="system", content="x")
    request = ask("hi")
    with pytest.raises(ValidationError):
        request.max_tokens = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("plain ascii prompt", 18), ("ünïcödé", 11), ("日本語のテキスト", 24), ("🙂🙃", 8)],
)
def test_max_input_tokens_bounds_the_bytes_and_the_scripted_estimate(
    text: str, nbytes: int
) -> None:
    request = ask(text, system=None)
    assert len(text.encode()) == nbytes
    bound = request.max_input_tokens()
    assert bound == nbytes + 8 + 8
    assert bound >= math.ceil(nbytes / 4)
    assert bound >= len(text)  # a token covers at least one byte, so at least one character
    assert request.max_tokens_total() == bound + 64


@given(
    system=st.none() | st.text(max_size=50),
    contents=st.lists(st.text(max_size=80), min_size=1, max_size=5),
)
def test_max_input_tokens_never_below_bytes_or_characters(
    system: str | None, contents: list[str]
) -> None:
    request = ask(*contents, system=system)
    prompt = (system or "") + "".join(contents)
    assert request.max_input_tokens() >= len(prompt.encode()) >= len(prompt)
    assert request.max_input_tokens() >= math.ceil(len(prompt.encode()) / 4)


async def test_max_input_tokens_is_at_least_the_scripted_default(tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text('{"text": "ok", "match": ""}\n'.replace(', "match": ""', ""))
    for text in ["ascii only here", "ĉu vi parolas? 日本 🙂" * 7]:
        request = ask(text, "and a reply", text, system="sÿstem")
        async with ScriptedProvider(script) as provider:
            done = await provider.complete(request)
        assert done.usage.input_tokens == math.ceil(request.prompt_bytes() / 4)
        assert request.max_input_tokens() >= done.usage.input_tokens


# Both real SDKs against their peers


async def test_anthropic_request_on_the_wire_and_completion(anthropic_peer: Peer) -> None:
    request = ask("first question", "an answer", "second question", system="you are terse")
    async with AnthropicProvider(KEY, anthropic_peer.base_url) as provider:
        done = await provider.complete(request)
    [seen] = anthropic_peer.requests
    assert seen.path == "/v1/messages"
    assert seen.body == {
        "model": "test-model",
        "max_tokens": 64,
        "system": "you are terse",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "second question"},
        ],
    }
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["anthropic-version"]
    assert done == Completion(
        text="hello from the peer",
        model="test-model",
        stop_reason="end_turn",
        usage=Usage(input_tokens=11, output_tokens=7),
    )
    assert KEY not in done.model_dump_json()


async def test_anthropic_omits_absent_system_and_counts_cached_input(
    anthropic_peer: Peer,
) -> None:
    anthropic_peer.extra_usage = {"cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
    anthropic_peer.stop_reason = "max_tokens"
    async with AnthropicProvider(KEY, anthropic_peer.base_url) as provider:
        done = await provider.complete(ask("hi", system=None))
    assert "system" not in anthropic_peer.requests[0].body
    assert done.usage.input_tokens == 11 + 100 + 5
    assert done.stop_reason == "max_tokens"


async def test_anthropic_refuses_temperature_before_sending(anthropic_peer: Peer) -> None:
    async with AnthropicProvider(KEY, anthropic_peer.base_url) as provider:
        with pytest.raises(ConfigError, match="temperature"):
            await provider.complete(ask("hi", temperature=0.2))
    assert anthropic_peer.requests == []


async def test_openai_request_on_the_wire_and_completion(openai_peer: Peer) -> None:
    openai_peer.input_tokens, openai_peer.output_tokens = 23, 5
    request = ask("first question", "an answer", "second", system="you are terse", temperature=0.3)
    async with OpenAICompatProvider(KEY, openai_peer.base_url) as provider:
        done = await provider.complete(request)
    [seen] = openai_peer.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.body == {
        "model": "test-model",
        "max_tokens": 64,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "you are terse"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "second"},
        ],
    }
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert (done.text, done.model, done.stop_reason) == (
        "hello from the peer",
        "test-model",
        "stop",
    )
    assert (done.usage.input_tokens, done.usage.output_tokens) == (23, 5)
    assert KEY not in done.model_dump_json()


async def test_openai_without_system_or_temperature_sends_neither(openai_peer: Peer) -> None:
    async with OpenAICompatProvider(KEY, openai_peer.base_url) as provider:
        await provider.complete(ask("hi", system=None))
    body = openai_peer.requests[0].body
    assert "temperature" not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}]


async def test_openai_official_endpoint_gets_max_completion_tokens(openai_peer: Peer) -> None:
    assert token_param_for("https://api.openai.com/v1") == "max_completion_tokens"
    assert token_param_for(openai_peer.base_url) == "max_tokens"
    provider = OpenAICompatProvider(KEY, openai_peer.base_url, token_param="max_completion_tokens")
    async with provider:
        await provider.complete(ask("hi", max_tokens=33))
    body = openai_peer.requests[0].body
    assert body["max_completion_tokens"] == 33
    assert "max_tokens" not in body


async def test_openai_missing_usage_is_charged_the_upper_bound(openai_peer: Peer) -> None:
    openai_peer.omit_usage = True
    openai_peer.text = "dix octets"
    request = ask("a prompt", max_tokens=64)
    async with OpenAICompatProvider(KEY, openai_peer.base_url) as provider:
        done = await provider.complete(request)
    assert done.usage.input_tokens == request.max_input_tokens()
    assert done.usage.output_tokens == len(b"dix octets")


@pytest.mark.parametrize("status", [500, 429])
async def test_a_transient_failure_is_retried_and_succeeds(peer: Peer, status: int) -> None:
    peer.fail(status, times=1)
    async with connect(peer) as provider:
        done = await provider.complete(ask("hi"))
    assert done.text == "hello from the peer"
    assert len(peer.requests) == 2
    assert peer.requests[0].body == peer.requests[1].body


async def test_a_persistent_500_is_a_provider_error_naming_the_status(peer: Peer) -> None:
    peer.fail(500, times=10, message="the backend fell over")
    async with connect(peer) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(ask("hi"))
    assert len(peer.requests) == 3  # the first try and the SDK's two retries
    error = caught.value
    assert (error.provider, error.status_code) == (peer.wire, 500)
    assert str(error).startswith(f"{peer.wire} call failed: HTTP 500")
    assert "the backend fell over" in str(error)
    assert not leaks_key(error)


async def test_a_400_is_not_retried(peer: Peer) -> None:
    peer.fail(400, times=1, message="max_tokens: must be positive")
    async with connect(peer) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(ask("hi"))
    assert len(peer.requests) == 1
    assert caught.value.status_code == 400
    assert "invalid_request_error" in str(caught.value)
    assert "max_tokens: must be positive" in str(caught.value)
    # the peer is healthy again, so a retry would have succeeded: it really was not retried


async def test_a_server_echoing_the_key_has_it_redacted(peer: Peer) -> None:
    peer.fail(401, times=1, message=f"invalid api key {KEY}")
    async with connect(peer) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(ask("hi"))
    assert caught.value.status_code == 401
    assert "invalid api key [redacted]" in str(caught.value)
    assert not leaks_key(caught.value)


async def test_no_server_is_a_provider_error_without_the_key(peer: Peer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = peer.base_url.replace(peer.base_url.split("/")[2], f"127.0.0.1:{port}")
    provider: Provider
    if peer.wire == "anthropic":
        provider = AnthropicProvider(KEY, url, max_retries=0)
    else:
        provider = OpenAICompatProvider(KEY, url, max_retries=0)
    with pytest.raises(ProviderError, match=f"no response from {url}") as caught:
        await provider.complete(ask("hi"))
    await provider.aclose()
    assert caught.value.status_code is None
    assert not leaks_key(caught.value)


# Opening providers from specs


async def test_open_anthropic_at_a_base_url_reads_the_key_from_the_environment(
    anthropic_peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    provider = open_provider(f"anthropic@{anthropic_peer.base_url}")
    assert provider.name == "anthropic"
    done = await provider.complete(ask("hi"))
    await provider.aclose()
    assert done.text == "hello from the peer"
    assert anthropic_peer.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_open_openai_at_a_local_url_without_a_key_uses_a_placeholder(
    openai_peer: Peer, no_keys: None
) -> None:
    provider = open_provider(f"openai@{openai_peer.base_url}")
    assert provider.name == "openai"
    await provider.complete(ask("hi"))
    await provider.aclose()
    assert openai_peer.requests[0].headers["authorization"] == "Bearer unused"


async def test_open_openai_with_a_key_sends_it(
    openai_peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    provider = open_provider(f"openai@{openai_peer.base_url}")
    await provider.complete(ask("hi"))
    await provider.aclose()
    assert openai_peer.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_plain_specs_pin_the_vendor_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/elsewhere")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/elsewhere")
    anthropic = open_provider("anthropic")
    openai = open_provider("openai")
    assert isinstance(anthropic, AnthropicProvider)
    assert isinstance(openai, OpenAICompatProvider)
    assert anthropic.base_url == "https://api.anthropic.com"
    assert (openai.base_url, openai.token_param) == (
        "https://api.openai.com/v1",
        "max_completion_tokens",
    )
    await anthropic.aclose()
    await openai.aclose()


@pytest.mark.parametrize(
    ("spec", "variable"), [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")]
)
def test_a_missing_key_is_a_config_error_naming_the_variable(
    spec: str, variable: str, no_keys: None
) -> None:
    with pytest.raises(ConfigError, match=f"{variable} is not set"):
        open_provider(spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gpt-4o", "accepted forms: anthropic, anthropic@BASE_URL"),
        ("", "scripted:PATH"),
        ("anthropic:", "accepted forms"),
        ("openai@", "must be an http(s) URL with a host"),
        ("openai@ftp://example.com/v1", "must be an http(s) URL with a host"),
        ("anthropic@localhost:8080", "must be an http(s) URL with a host"),
        ("anthropic@http://", "must be an http(s) URL with a host"),
        ("scripted:", "names no file"),
    ],
)
def test_bad_specs_are_config_errors(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        open_provider(spec)


def test_specs_never_echo_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="carries credentials") as caught:
        open_provider("openai@http://me:hunter2@127.0.0.1:8000/v1")
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    for pasted in (KEY, f"anthropic@{KEY}", f"scripted{KEY}"):
        with pytest.raises(ConfigError) as caught:
            open_provider(pasted)
        assert KEY not in str(caught.value)


def test_importing_the_package_does_not_import_the_sdks() -> None:
    code = (
        "import sys, orchestrator.models\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'anthropic', 'openai'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_public_api_is_pinned() -> None:
    import orchestrator.models

    assert orchestrator.models.__all__ == [
        "Message",
        "CompletionRequest",
        "Completion",
        "Usage",
        "Provider",
        "ProviderError",
        "open_provider",
        "AnthropicProvider",
        "OpenAICompatProvider",
        "ScriptedProvider",
    ]


# The scripted provider


def script(tmp_path: Path, *lines: dict[str, Any] | str) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


async def test_scripted_serves_unmatched_lines_in_order_then_runs_out(tmp_path: Path) -> None:
    provider = open_provider(f"scripted:{script(tmp_path, {'text': 'one'}, {'text': 'two'})}")
    assert provider.name == "scripted"
    assert (await provider.complete(ask("a"))).text == "one"
    assert (await provider.complete(ask("a"))).text == "two"
    with pytest.raises(ProviderError, match="scripted responses exhausted after 2 calls"):
        await provider.complete(ask("a"))


async def test_scripted_match_lines_are_reusable_and_first_wins(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        {"text": "weather answer", "match": "weather"},
        {"text": "first in order"},
        {"text": "too late", "match": "weather"},
        {"text": "second in order"},
    )
    provider = ScriptedProvider(path)
    assert (await provider.complete(ask("the weather today?"))).text == "weather answer"
    assert (await provider.complete(ask("hello"))).text == "first in order"
    assert (await provider.complete(ask("weather again"))).text == "weather answer"
    # only the last user message counts, not earlier turns or the system prompt
    later = ask("weather?", "sunny", "thanks", system="weather bot")
    assert (await provider.complete(later)).text == "second in order"
    with pytest.raises(ProviderError, match="exhausted after 4 calls"):
        await provider.complete(ask("bye"))
    assert (await provider.complete(ask("weather, once more"))).text == "weather answer"


async def test_scripted_labels_and_default_usage(tmp_path: Path) -> None:
    provider = ScriptedProvider(script(tmp_path, {"text": "nine byte"}, {"text": "été"}))
    request = ask("hello", system="sÿs")  # 5 + 4 bytes
    done = await provider.complete(request)
    assert done.model == "scripted/test-model"
    assert done.stop_reason == "end_turn"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (3, 3)
    done = await provider.complete(ask("x", system=None))
    assert (done.usage.input_tokens, done.usage.output_tokens) == (1, 2)  # "été" is 5 bytes


async def test_scripted_explicit_usage_and_stop_reason(tmp_path: Path) -> None:
    line = {"text": "hi", "input_tokens": 1000, "output_tokens": 9, "stop_reason": "stop_sequence"}
    done = await ScriptedProvider(script(tmp_path, line)).complete(ask("x"))
    assert (done.usage.input_tokens, done.usage.output_tokens) == (1000, 9)
    assert done.stop_reason == "stop_sequence"


async def test_scripted_output_never_exceeds_max_tokens(tmp_path: Path) -> None:
    provider = ScriptedProvider(
        script(
            tmp_path,
            {"text": "abcdefghijklmnopqrstuvwxyz"},
            {"text": "€€€"},
            {"text": "short", "output_tokens": 50},
            {"text": "exactly8"},
        )
    )
    done = await provider.complete(ask("x", max_tokens=2))
    assert (done.text, done.stop_reason, done.usage.output_tokens) == ("abcdefgh", "max_tokens", 2)
    done = await provider.complete(ask("x", max_tokens=1))  # 4 bytes cut inside the second €
    assert (done.text, done.stop_reason, done.usage.output_tokens) == ("€", "max_tokens", 1)
    done = await provider.complete(ask("x", max_tokens=3))
    assert (done.text, done.stop_reason, done.usage.output_tokens) == ("short", "max_tokens", 3)
    done = await provider.complete(ask("x", max_tokens=2))
    assert (done.text, done.stop_reason, done.usage.output_tokens) == ("exactly8", "end_turn", 2)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"text": "ok"}', "{not json"], ":2: not valid JSON"),
        (['{"text": "ok"}', "", '{"txt": "typo"}'], ":3: text: Field required"),
        (['{"text": 5}'], ":1: text: Input should be a valid string"),
        (['{"text": "a", "input_tokens": "5"}'], ":1: input_tokens"),
        (['{"text": "a", "output_tokens": -1}'], ":1: output_tokens"),
        (['{"text": "a", "match": ""}'], ":1: match"),
        (['["text"]'], ":1: expected a JSON object"),
        (["", "  "], "has no responses"),
    ],
)
def test_bad_script_files_are_config_errors_naming_file_and_line(
    tmp_path: Path, lines: list[str], expected: str
) -> None:
    path = script(tmp_path, *lines)
    with pytest.raises(ConfigError) as caught:
        open_provider(f"scripted:{path}")
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_a_missing_script_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError, match="cannot read scripted responses file") as caught:
        open_provider(f"scripted:{missing}")
    assert str(missing) in str(caught.value)
