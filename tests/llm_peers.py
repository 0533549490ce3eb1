"""Loopback HTTP peers that speak the model vendors' wire formats, for real SDK clients.

Each peer is served by a ``LoopbackServer`` (``tests/loopback.py``). It records every
request (path, headers, JSON body), answers with a configurable text and usage, and can
fail its next N requests with a chosen status, sending ``retry-after-ms: 10`` so the
SDKs' retries take milliseconds, not seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

import pytest

from tests.loopback import LoopbackServer

Wire = Literal["anthropic", "openai"]


@dataclass(frozen=True)
class Seen:
    """One request as it arrived: headers are keyed in lower case."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Failure:
    status: int
    times: int
    message: str
    error_type: str


@dataclass
class Peer:
    """A fake vendor endpoint. Point an SDK at ``base_url``."""

    wire: Wire
    text: str = "hello from the peer"
    input_tokens: int = 11
    output_tokens: int = 7
    stop_reason: str | None = None
    extra_usage: dict[str, Any] = field(default_factory=dict)
    omit_usage: bool = False
    requests: list[Seen] = field(default_factory=list)
    _failures: list[Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""  # the server's root, once it serves

    @property
    def base_url(self) -> str:
        """The URL the SDK takes: the API root (Anthropic) or the ``/v1`` prefix (OpenAI)."""
        assert self.url, "the peer is not being served"
        return self.url if self.wire == "anthropic" else f"{self.url}/v1"

    def fail(self, status: int, times: int = 1, message: str = "the peer was told to fail") -> None:
        """Answer the next ``times`` requests with ``status`` and a vendor-shaped error."""
        kinds = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
        with self._lock:
            self._failures.append(Failure(status, times, message, kinds.get(status, "api_error")))

    def _take_failure(self) -> Failure | None:
        with self._lock:
            while self._failures and self._failures[0].times <= 0:
                self._failures.pop(0)
            if not self._failures:
                return None
            self._failures[0].times -= 1
            return self._failures[0]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        model = str(body.get("model", "unknown"))
        if self.wire == "anthropic":
            usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
            return {
                "id": f"msg_{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": self.text}],
                "stop_reason": self.stop_reason or "end_turn",
                "stop_sequence": None,
                "usage": {**usage, **self.extra_usage},
            }
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.stop_reason or "stop",
                }
            ],
        }
        if not self.omit_usage:
            answer["usage"] = {
                "prompt_tokens": self.input_tokens,
                "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            }
        return answer

    def error_body(self, failure: Failure) -> dict[str, Any]:
        if self.wire == "anthropic":
            return {
                "type": "error",
                "error": {"type": failure.error_type, "message": failure.message},
                "request_id": "req_peer",
            }
        return {
            "error": {
                "message": failure.message,
                "type": failure.error_type,
                "param": None,
                "code": None,
            }
        }


def _handler(peer: Peer) -> type[BaseHTTPRequestHandler]:
    expected = "/v1/messages" if peer.wire == "anthropic" else "/v1/chat/completions"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            peer._record(Seen(self.path, headers, body))
            if self.path != expected:
                self._send(404, {"error": {"type": "not_found", "message": self.path}})
                return
            failure = peer._take_failure()
            if failure is not None:
                self._send(failure.status, peer.error_body(failure), {"retry-after-ms": "10"})
                return
            self._send(200, peer.reply(body if isinstance(body, dict) else {}))

        def _send(
            self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            id_header = "request-id" if peer.wire == "anthropic" else "x-request-id"
            self.send_header(id_header, f"req_{len(peer.requests)}")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _PeerServer(LoopbackServer):
    def __init__(self, peer: Peer) -> None:
        self._serve(_handler(peer))


def serve(wire: Wire) -> Iterator[Peer]:
    """Run a peer until the generator is closed."""
    peer = Peer(wire)
    with _PeerServer(peer) as server:
        peer.url = server.url
        yield peer


@pytest.fixture(name="anthropic_peer")
def anthropic_peer_fixture() -> Iterator[Peer]:
    yield from serve("anthropic")


@pytest.fixture(name="openai_peer")
def openai_peer_fixture() -> Iterator[Peer]:
    yield from serve("openai")
