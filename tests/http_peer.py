"""A real HTTP server on loopback for tests: records every request, answers as scripted.

``HttpPeer`` runs the standard library's ``ThreadingHTTPServer`` in a thread on a free
port. By default it answers every request ``200 ok``; ``fail_next(n, status)`` makes the
next ``n`` requests get ``status`` instead (with ``Retry-After`` if asked), and
``drop_next(n)`` makes it close the connection without answering. Use the ``http_peer``
fixture (import it into a test module or conftest) or ``with HttpPeer() as peer``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.loopback import LoopbackServer

__all__ = ["Recorded", "Reply", "HttpPeer", "http_peer", "unused_port"]


@dataclass(frozen=True)
class Recorded:
    """One request as the peer received it. ``headers`` has lowercased names."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not JSON)."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, headers and body, or ``drop`` the connection."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class HttpPeer(LoopbackServer):
    """A loopback HTTP server that records requests and answers from a script."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self._lock = threading.Condition()
        self._requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._serve(self._handler())

    # ------------------------------------------------------------------ scripting

    def fail_next(
        self, n: int, status: int, *, retry_after: str | None = None, body: bytes = b""
    ) -> None:
        """Answer the next ``n`` requests (after any already scripted) with ``status``."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.script(*[Reply(status, body or f"status {status}".encode(), headers)] * n)

    def drop_next(self, n: int) -> None:
        """Close the connection on the next ``n`` requests without sending an answer."""
        self.script(*[Reply(drop=True)] * n)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, then with ``default``."""
        with self._lock:
            self._script.extend(replies)

    # ------------------------------------------------------------------ observing

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        """Block until at least ``n`` requests arrived; ``AssertionError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {n} request(s) within {timeout} s, got {len(self._requests)}"
                    )
                self._lock.wait(left)
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests and scripted replies."""
        with self._lock:
            self._requests.clear()
            self._script.clear()

    # ------------------------------------------------------------------ serving

    def _receive(self, recorded: Recorded) -> Reply:
        with self._lock:
            self._requests.append(recorded)
            self._lock.notify_all()
            return self._script.popleft() if self._script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                recorded = Recorded(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self._body(),
                )
                reply = peer._receive(recorded)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    with HttpPeer() as peer:
        yield peer


def unused_port() -> int:
    """A loopback port nothing listens on (just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
