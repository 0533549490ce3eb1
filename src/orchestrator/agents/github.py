"""A small GitHub REST client: just enough to open a pull request, once.

Opening is idempotent by construction rather than by a server feature (GitHub's REST
API has no idempotency header): every attempt first looks for an open pull request
with the same head and base, and only creates one if there is none. So a call repeated
after a crash, a retry after a lost answer, or a race with another writer (GitHub's
422 "A pull request already exists") all end with the one pull request that is open.

Errors are :class:`GitHubError`, carrying the HTTP status and GitHub's own message;
the token never appears in them, even if a server echoes it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.errors import GitHubError

__all__ = [
    "DEFAULT_API",
    "GitHubError",
    "GitHubRemote",
    "PullRequest",
    "idempotency_marker",
    "open_pull_request",
    "parse_remote",
]

DEFAULT_API = "https://api.github.com"
API_VERSION = "2022-11-28"
HTTP_TIMEOUT = 30.0
"""Seconds allowed to connect, and between bytes, for each request."""
MESSAGE_LIMIT = 300

Sleep = Callable[[float], Awaitable[None]]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GITHUB_HOSTS = frozenset({"github.com", "www.github.com", "ssh.github.com"})
_URL_SCHEMES = frozenset({"https", "http", "ssh", "git+ssh", "git"})
# user@host:path, with no "://" (that is a URL) and a host that is not one letter
# (so a Windows drive such as C:\repo is not taken for a host)
_SCP = re.compile(r"(?:[^@/:]+@)?(?P<host>[^@/:\\]{2,}):(?P<path>[^/\\].*)")


class GitHubRemote(BaseModel):
    """A repository on GitHub (or GitHub Enterprise, with its ``api`` root)."""

    model_config = ConfigDict(frozen=True)

    owner: str
    repo: str
    api: str = DEFAULT_API

    @field_validator("owner", "repo")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"not a GitHub owner or repository name: {value!r}")
        return value

    @field_validator("api")
    @classmethod
    def _http_root(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the API root must be an http(s) URL, not {value!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"the API root must not have a query or fragment: {value!r}")
        return value.rstrip("/")

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def pulls_url(self) -> str:
        return f"{self.api}/repos/{self.owner}/{self.repo}/pulls"


class PullRequest(BaseModel):
    """An open pull request: its number, web address, and head and base branches."""

    number: int = Field(gt=0)
    url: str
    head: str
    base: str


def parse_remote(url: str, api: str | None = None) -> GitHubRemote | None:
    """The GitHub repository a git remote URL names, or ``None`` if it names none.

    Understands ``git@github.com:o/r(.git)``, ``https://github.com/o/r(.git)`` and
    ``ssh://git@github.com[:port]/o/r(.git)`` (also ``http``, ``git`` and ``git+ssh``
    URLs, user info and a trailing slash). Without ``api`` the host must be GitHub's; with
    ``api`` (GitHub Enterprise, or a test server) any host is taken, and ``api`` becomes
    the remote's API root. Anything else (local paths, ``file://``, other hosts, extra
    path segments) is ``None``.
    """
    url = url.strip()
    if "://" in url:
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:  # e.g. a malformed IPv6 host
            return None
        if parts.scheme.lower() not in _URL_SCHEMES or parts.query or parts.fragment:
            return None
        path = parts.path
    else:
        match = _SCP.fullmatch(url)
        if match is None:
            return None
        host, path = match["host"], match["path"]
    if not host or (api is None and host.lower() not in _GITHUB_HOSTS):
        return None
    path = path.strip("/")
    path = path.removesuffix(".git")
    pieces = path.split("/")
    if len(pieces) != 2:
        return None
    try:
        return GitHubRemote(owner=pieces[0], repo=pieces[1], api=api or DEFAULT_API)
    except ValueError:
        return None


def idempotency_marker(key: str) -> str:
    """The hidden line added to a pull request's body to show which call opened it.

    It holds a digest of ``key``, not the key, so nothing about the caller leaks and no
    key can break out of the HTML comment.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"<!-- orchestrator-idempotency-key: {digest} -->"


async def open_pull_request(
    remote: GitHubRemote,
    token: str,
    *,
    head: str,
    base: str,
    title: str,
    body: str,
    draft: bool = False,
    idempotency_key: str | None = None,
    attempts: int = 3,
    base_delay: float = 0.5,
    sleep: Sleep = asyncio.sleep,
    http_timeout: float = HTTP_TIMEOUT,
) -> PullRequest:
    """Open a pull request merging ``head`` into ``base``, or return the one already open.

    Each attempt first asks for open pull requests from ``{owner}:{head}`` into ``base``
    and returns the one it finds; only if there is none does it create one. A 422 "A pull
    request already exists" (another writer won a race) is answered by the same lookup.
    Server errors (5xx, 429) and connection failures are tried again, ``attempts`` times
    in all, waiting ``base_delay * 2**i`` seconds through ``sleep`` between them; other
    refusals (401, 403, 404, a 422 that is not "already exists") raise at once.

    With ``idempotency_key``, the body gets a hidden marker (:func:`idempotency_marker`)
    saying which call opened it. The lookup does not depend on it: GitHub allows one
    open pull request per head and base, and a node retried after a crash is a new
    attempt with a new key, yet must find the pull request its earlier attempt opened.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    token = token.strip()
    if not token or any(c in token for c in "\r\n\0"):
        raise GitHubError("no usable GitHub token was given")
    if not head or not base:
        raise ValueError("head and base must be branch names")
    marker = idempotency_marker(idempotency_key) if idempotency_key is not None else None
    if marker is not None and marker not in body:
        body = f"{body.rstrip()}\n\n{marker}\n"
    call = _Call(remote, token, head, base)
    payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "orchestrator",
    }
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=base_delay),
        retry=tenacity.retry_if_exception_type(_Transient),
        sleep=sleep,
        reraise=True,
    )
    async with httpx.AsyncClient(
        headers=headers, timeout=http_timeout, follow_redirects=True
    ) as client:
        try:
            async for attempt in retrying:
                with attempt:
                    found = await call.find(client)
                    if found is not None:
                        return found
                    return await call.create(client, payload)
        except _Transient as failed:
            raise GitHubError(
                call.redact(f"{failed} (gave up after {attempts} attempts)"),
                status=failed.status,
                message=failed.message,
            ) from None
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


# --------------------------------------------------------------------------- internals


class _Transient(Exception):
    """One attempt failed in a way another attempt may not."""

    def __init__(self, text: str, *, status: int | None = None, message: str = "") -> None:
        super().__init__(text)
        self.status, self.message = status, message


class _Call:
    """The state of one :func:`open_pull_request` call, shared by its attempts."""

    def __init__(self, remote: GitHubRemote, token: str, head: str, base: str) -> None:
        self.remote, self.token, self.head, self.base = remote, token, head, base
        # a fork's branch is "user:branch"; a branch of the repository itself is ours
        owner, _, ref = head.rpartition(":")
        self.head_owner, self.head_ref = owner or remote.owner, ref

    async def find(self, client: httpx.AsyncClient) -> PullRequest | None:
        """The open pull request from head into base, if there is one."""
        params = {"head": f"{self.head_owner}:{self.head_ref}", "base": self.base}
        response = await self.send(client, "GET", params={**params, "state": "open"})
        self.check(response, "look up pull requests")
        data = self.json(response)
        if not isinstance(data, list):
            raise self.error("GitHub's list of pull requests is not a list", response)
        for item in data:
            # GitHub ignores a "head" filter it cannot parse and lists every pull request
            if isinstance(item, dict) and self.matches(item):
                return self.pull(item, response)
        return None

    async def create(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> PullRequest:
        response = await self.send(client, "POST", json=payload)
        if response.status_code == 422 and "already exists" in _github_message(response):
            found = await self.find(client)
            if found is not None:
                return found
            raise _Transient(
                f"GitHub says a pull request from {self.head} into {self.base} already "
                "exists, but none is listed as open",
                status=422,
                message=self.redact(_github_message(response)),
            )
        self.check(response, "open a pull request")
        if response.status_code != 201:
            raise self.error(f"expected 201 Created, got {response.status_code}", response)
        data = self.json(response)
        if not isinstance(data, dict):
            raise self.error("GitHub's answer is not a pull request", response)
        return self.pull(data, response)

    async def send(self, client: httpx.AsyncClient, method: str, **kwargs: Any) -> httpx.Response:
        try:
            return await client.request(method, self.remote.pulls_url, **kwargs)
        except httpx.TimeoutException as exc:
            raise _Transient(
                f"GitHub at {self.remote.api} timed out ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise _Transient(
                f"could not reach GitHub at {self.remote.api}: "
                f"{type(exc).__name__}: {exc or 'no detail'}"
            ) from None
        except httpx.HTTPError as exc:
            raise GitHubError(
                self.redact(f"cannot ask GitHub at {self.remote.api}: {type(exc).__name__}: {exc}")
            ) from None

    def check(self, response: httpx.Response, doing: str) -> None:
        """Raise for an answer that is not a success; transient ones may be retried."""
        status = response.status_code
        if 200 <= status < 300:
            return
        message = self.redact(_github_message(response))
        said = f"{status} {message}" if message else str(status)
        where = f"{self.remote.full_name} at {self.remote.api}"
        if status >= 500 or status == 429:
            raise _Transient(f"GitHub failed to {doing} ({said})", status=status, message=message)
        if status == 401:
            text = f"GitHub rejected the token ({said}): check that it is valid and not expired"
        elif status == 403 and _rate_limited(response, message):
            text = f"GitHub's rate limit stopped the request to {doing} ({said}); try later"
        elif status == 403:
            text = (
                f"the token lacks permission to {doing} on {where} ({said}): it needs "
                "'Pull requests: write' (fine-grained token) or the 'repo' scope (classic)"
            )
        elif status == 404:
            text = f"repository not found: {where} does not exist or the token cannot see it"
            text += f" ({said})"
        elif status == 422:
            text = f"GitHub refused to {doing} on {where} ({said})"
        else:
            text = f"unexpected answer from GitHub when trying to {doing} on {where} ({said})"
        raise GitHubError(text, status=status, message=message)

    def matches(self, item: dict[str, Any]) -> bool:
        head, base = item.get("head"), item.get("base")
        if not isinstance(head, dict) or not isinstance(base, dict):
            return False
        label = head.get("label")
        return (
            head.get("ref") == self.head_ref
            and base.get("ref") == self.base
            and (
                label is None or str(label).lower() == f"{self.head_owner}:{self.head_ref}".lower()
            )
            and item.get("state", "open") == "open"
        )

    def pull(self, data: dict[str, Any], response: httpx.Response) -> PullRequest:
        try:
            return PullRequest(
                number=data["number"],
                url=data["html_url"],
                head=data["head"]["ref"],
                base=data["base"]["ref"],
            )
        except (KeyError, TypeError, ValueError):
            raise self.error("GitHub's answer is not a pull request", response) from None

    def json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self.error("GitHub's answer is not JSON", response) from None

    def error(self, text: str, response: httpx.Response) -> GitHubError:
        return GitHubError(
            self.redact(f"{text} ({self.remote.pulls_url}, status {response.status_code})"),
            status=response.status_code,
        )

    def redact(self, text: str) -> str:
        text = " ".join(text.replace(self.token, "***").split())
        return text if len(text) <= MESSAGE_LIMIT * 2 else text[: MESSAGE_LIMIT * 2 - 1] + "…"


def _github_message(response: httpx.Response) -> str:
    """GitHub's ``message``, with the messages of its ``errors`` list, on one short line."""
    try:
        data = response.json()
    except ValueError:
        text = response.text
    else:
        if isinstance(data, dict):
            said = [str(data.get("message") or "")]
            for item in data.get("errors") or []:
                if isinstance(item, dict):
                    detail = item.get("message") or " ".join(
                        str(item[k]) for k in ("resource", "field", "code") if k in item
                    )
                    said.append(str(detail))
                elif isinstance(item, str):
                    said.append(item)
            text = ": ".join(s for s in said if s)
        else:
            text = ""
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _rate_limited(response: httpx.Response, message: str) -> bool:
    return response.headers.get("x-ratelimit-remaining") == "0" or "rate limit" in message.lower()
