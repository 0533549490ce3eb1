"""A fake GitHub REST API on loopback: the pull-request endpoints the Orchestrator uses.

``GitHubPeer`` runs the standard library's ``ThreadingHTTPServer`` in a thread on a free
port and speaks ``GET`` and ``POST /repos/{owner}/{repo}/pulls`` as GitHub does: pull
requests live in memory, numbered from 1 per repository; a second open pull request
for the same head and base is a 422 with GitHub's error body; a wrong bearer token is a
401 and an unknown repository a 404, each with GitHub's JSON message. Every request is
recorded; ``fail_next(n, status)`` answers the next ``n`` with ``status``, ``drop_next``
closes the connection unanswered, and ``script`` queues any answer. Use the
``github_peer`` fixture or ``with GitHubPeer() as peer``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.loopback import LoopbackServer

__all__ = ["TOKEN", "GitHubPeer", "Reply", "Request", "github_peer"]

TOKEN = "ghp_peer0123456789abcdefTOKEN"
DOCS = "https://docs.github.com/rest/pulls/pulls"


@dataclass(frozen=True)
class Request:
    """One request as the peer received it. ``headers`` has lowercased names; ``query``
    keeps the last value of each parameter; ``json`` is ``None`` without a body."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


@dataclass(frozen=True)
class Reply:
    """A scripted answer: a status and a JSON body, or ``drop`` the connection."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class GitHubPeer(LoopbackServer):
    """A loopback server speaking GitHub's pull-request endpoints."""

    def __init__(self, repos: tuple[str, ...] = ("octo/widgets",), token: str = TOKEN) -> None:
        self.repos = {r.lower() for r in repos}
        self.token = token
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._script: deque[Reply] = deque()
        self._pulls: dict[str, list[dict[str, Any]]] = {}
        self._serve(self._handler())

    # ------------------------------------------------------------------ scripting

    def fail_next(self, n: int, status: int, message: str = "Server Error") -> None:
        """Answer the next ``n`` requests with ``status`` and GitHub's error shape."""
        self.script(*[Reply(status, {"message": message, "documentation_url": DOCS})] * n)

    def drop_next(self, n: int) -> None:
        """Close the connection on the next ``n`` requests without answering."""
        self.script(*[Reply(drop=True)] * n)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, before serving normally."""
        with self._lock:
            self._script.extend(replies)

    def add_pull(
        self, repo: str, *, head: str, base: str, title: str = "", body: str = ""
    ) -> dict[str, Any]:
        """Open a pull request directly, as another writer (or a person) would."""
        with self._lock:
            return self._open(repo, {"head": head, "base": base, "title": title, "body": body})

    # ------------------------------------------------------------------ observing

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def calls(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    def pulls(self, repo: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(p) for p in self._pulls.get(repo.lower(), [])]

    # ------------------------------------------------------------------ GitHub

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self._requests.append(request)
            if self._script:
                return self._script.popleft()
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return Reply(401, {"message": "Bad credentials", "documentation_url": DOCS})
            parts = request.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "repos" or parts[3] != "pulls":
                return Reply(404, {"message": "Not Found", "documentation_url": DOCS})
            repo = f"{parts[1]}/{parts[2]}".lower()
            if repo not in self.repos:
                return Reply(404, {"message": "Not Found", "documentation_url": DOCS})
            if request.method == "GET":
                return Reply(200, self._list(repo, request.query))
            if request.method == "POST":
                return self._create(repo, request.json)
            return Reply(404, {"message": "Not Found", "documentation_url": DOCS})

    def _list(self, repo: str, query: dict[str, str]) -> list[dict[str, Any]]:
        found = self._pulls.get(repo, [])
        state = query.get("state", "open")
        if state != "all":
            found = [p for p in found if p["state"] == state]
        if "head" in query:
            found = [p for p in found if p["head"]["label"].lower() == query["head"].lower()]
        if "base" in query:
            found = [p for p in found if p["base"]["ref"] == query["base"]]
        return found

    def _create(self, repo: str, data: Any) -> Reply:
        if not isinstance(data, dict):
            return Reply(400, {"message": "Problems parsing JSON", "documentation_url": DOCS})
        missing = [k for k in ("head", "base") if not isinstance(data.get(k), str)]
        if missing or not (data.get("title") or data.get("issue")):
            errors = [
                {"resource": "PullRequest", "code": "missing_field", "field": k}
                for k in [*missing, *([] if data.get("title") else ["title"])]
            ]
            return Reply(422, _invalid(errors))
        owner = repo.split("/")[0]
        head_label = data["head"] if ":" in data["head"] else f"{owner}:{data['head']}"
        for pull in self._pulls.get(repo, []):
            if (
                pull["state"] == "open"
                and pull["head"]["label"].lower() == head_label.lower()
                and pull["base"]["ref"] == data["base"]
            ):
                message = f"A pull request already exists for {head_label}."
                return Reply(
                    422,
                    _invalid([{"resource": "PullRequest", "code": "custom", "message": message}]),
                )
        return Reply(201, self._open(repo, data))

    def _open(self, repo: str, data: dict[str, Any]) -> dict[str, Any]:
        repo = repo.lower()
        pulls = self._pulls.setdefault(repo, [])
        number = len(pulls) + 1
        owner, name = repo.split("/")
        head_owner, _, head_ref = data["head"].rpartition(":")
        head_owner = head_owner or owner
        pull = {
            "url": f"{self.url}/repos/{owner}/{name}/pulls/{number}",
            "html_url": f"https://github.example/{owner}/{name}/pull/{number}",
            "number": number,
            "state": "open",
            "title": data.get("title", ""),
            "body": data.get("body"),
            "draft": bool(data.get("draft", False)),
            "head": {"label": f"{head_owner}:{head_ref}", "ref": head_ref, "sha": "0" * 40},
            "base": {"label": f"{owner}:{data['base']}", "ref": data["base"], "sha": "1" * 40},
        }
        pulls.append(pull)
        return pull

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                split = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=split.path,
                    query={k: v[-1] for k, v in parse_qs(split.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    json=body,
                )
                reply = peer._answer(request)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def _invalid(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "message": "Validation Failed",
        "errors": errors,
        "documentation_url": f"{DOCS}#create-a-pull-request",
    }


@pytest.fixture
def github_peer() -> Iterator[GitHubPeer]:
    with GitHubPeer() as peer:
        yield peer
