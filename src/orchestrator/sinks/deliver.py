"""Delivering one notice to one sink, with retries, never raising for a failed delivery.

A notification is a courtesy around the durable record, not part of it: the gate is
parked and the receipt signed in the ledger before anything is sent. So :func:`deliver`
retries what may pass (connection errors, timeouts, HTTP 5xx and 429, object-store
errors) with exponential backoff, gives up on what will not (other 4xx, a bad URL, an
unset environment variable), and reports either way as a :class:`Delivery` that the
caller records. It raises only for a programming error in its own arguments.

The retry loop is tenacity's, as is GitHub's (``agents/github.py``): transport retries
use one library, node retries stay the runtime's own (their jitter must replay
deterministically). Not stamina, though it wraps tenacity: it has no per-call ``sleep``
(callers with their own clock, and tests, skip waits through it), a backoff it is
handed (``Retry-After``) escapes its cap, and its test mode is process-wide.

Errors are written for logs and the ledger: they never include a URL's path, query or
user info, nor the value of an ``env:`` variable, even when the lower layer's message
would (such text is cut out before the message leaves this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import tenacity

from orchestrator.codec import canonical_bytes
from orchestrator.errors import ConfigError, StorageError
from orchestrator.sinks.base import (
    Delivery,
    Notice,
    OutcomeNotice,
    ReceiptNotice,
    SinkConfig,
    SummaryNotice,
    env_name,
    http_origin,
)
from orchestrator.sinks.slack import slack_payload
from orchestrator.storage.objects import ObjectStore, open_object_store

if TYPE_CHECKING:
    import httpx  # imported where a notice is posted: it costs a run that sends none

__all__ = ["MAX_DELAY", "HTTP_TIMEOUT", "deliver", "notice_key"]

log = logging.getLogger("orchestrator.sinks")

MAX_DELAY = 30.0
"""The longest wait between two attempts, whatever the backoff or a Retry-After asks."""
HTTP_TIMEOUT = 10.0
"""Seconds allowed to connect, and between bytes, for each HTTP attempt."""
ERROR_LIMIT = 300

Sleep = Callable[[float], Awaitable[None]]
Send = Callable[[], Awaitable[None]]

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PERMANENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EINVAL,
}


class _Failed(Exception):
    """One attempt failed; ``retry`` says whether another could succeed."""

    def __init__(self, message: str, *, retry: bool, after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.retry, self.after = message, retry, after


async def deliver(
    sink: SinkConfig,
    notice: Notice,
    *,
    attempts: int = 5,
    base_delay: float = 0.5,
    sleep: Sleep = asyncio.sleep,
    objects_cache: MutableMapping[str, ObjectStore] | None = None,
) -> Delivery:
    """Send ``notice`` to ``sink``, trying up to ``attempts`` times; never raises for a
    failed delivery.

    Between attempts it waits ``base_delay * 2**i`` seconds (at most :data:`MAX_DELAY`),
    or what a 429/503's ``Retry-After`` asks (same cap), through ``sleep`` so tests and
    callers with their own clock skip the wait. For ``s3`` sinks, ``objects_cache`` (URL
    to open store) lets many deliveries share one store; the caller then closes them.
    Without it each delivery opens and closes its own.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if not (base_delay >= 0 and math.isfinite(base_delay)):
        raise ValueError(f"base_delay must be a non-negative number of seconds, not {base_delay}")
    name = sink.describe()
    secrets: list[str] = []

    def waiting(state: tenacity.RetryCallState) -> None:
        failed = state.outcome.exception() if state.outcome is not None else None
        error = _redact(failed.message, secrets) if isinstance(failed, _Failed) else "?"
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.info(
            "delivery to %s: attempt %d failed (%s); next in %.1f s",
            name,
            state.attempt_number,
            error,
            delay,
        )

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=_backoff(base_delay),
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, _Failed) and exc.retry),
        sleep=sleep,
        before_sleep=waiting,
        reraise=True,
    )
    try:
        async with _sender(sink, notice, secrets, objects_cache) as send:
            tried = 0
            try:
                async for attempt in retrying:
                    tried = attempt.retry_state.attempt_number
                    with attempt:
                        await _attempt(send)
                        return Delivery(sink=name, ok=True, attempts=tried)
            except _Failed as failed:
                error = _redact(failed.message, secrets)
                log.warning("could not deliver to %s: %s", name, error)
                return Delivery(sink=name, ok=False, attempts=tried, error=error)
    except _Failed as failed:  # before the first attempt: nothing was sent
        return Delivery(sink=name, ok=False, attempts=0, error=_redact(failed.message, secrets))
    except Exception as exc:  # a bug here must not stop a run either
        error = _redact(f"unexpected {type(exc).__name__}: {exc}", secrets)
        log.error("could not deliver to %s: %s", name, error)
        return Delivery(sink=name, ok=False, attempts=0, error=error)
    raise AssertionError("unreachable: the loop returns")  # pragma: no cover


def _backoff(base_delay: float) -> Callable[[tenacity.RetryCallState], float]:
    """``base_delay * 2**i`` before retry ``i + 1``, or what a ``Retry-After`` asked; at
    most :data:`MAX_DELAY` either way."""
    exponential = tenacity.wait_exponential(multiplier=base_delay, max=MAX_DELAY)

    def wait(state: tenacity.RetryCallState) -> float:
        failed = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failed, _Failed) and failed.after is not None:
            return min(failed.after, MAX_DELAY)
        return exponential(state)

    return wait


async def _attempt(send: Send) -> None:
    """One attempt; anything unforeseen is a failure not worth repeating, not a crash."""
    try:
        await send()
    except _Failed:
        raise
    except Exception as exc:
        raise _Failed(f"unexpected {type(exc).__name__}: {exc}", retry=False) from exc


def notice_key(notice: Notice) -> str:
    """The object key an ``s3`` sink stores ``notice`` under.

    ``notices/RUN/receipt-N.json``, ``notices/RUN/gate-NODE-ATTEMPT.json`` or
    ``notices/RUN/OUTCOME-TIME.json`` (abort, failure, success); a run id
    or node name that is not a plain key segment is replaced by a safe spelling plus a
    hash of the original, so distinct names never share a key.
    """
    if isinstance(notice, ReceiptNotice):
        name = f"receipt-{notice.number}"
    elif isinstance(notice, SummaryNotice):
        name = f"summary-{_segment(notice.name, 200)}"
    elif isinstance(notice, OutcomeNotice):
        name = f"{notice.outcome}-{_segment(notice.at.replace(':', ''), 64)}"
    else:
        name = f"gate-{_segment(notice.node, 200)}-{notice.attempt}"
    return f"notices/{_segment(notice.run_id, 255)}/{name}.json"


def _segment(text: str, limit: int) -> str:
    if _SEGMENT.fullmatch(text) and len(text) <= limit and text not in (".", ".."):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[: limit - 17]
    return f"{safe}-{digest}"


# --------------------------------------------------------------------------- senders


@contextlib.asynccontextmanager
async def _sender(
    sink: SinkConfig,
    notice: Notice,
    secrets: list[str],
    objects_cache: MutableMapping[str, ObjectStore] | None,
) -> AsyncIterator[Send]:
    """A callable making one attempt; raises :class:`_Failed` if even that cannot start."""
    if sink.kind == "file":
        yield _file_sender(Path(sink.url), notice)
    elif sink.kind == "s3":
        async with _s3_sender(sink.url, notice, objects_cache) as send:
            yield send
    else:
        url = _resolve(sink.url, secrets)
        if sink.kind == "slack":
            body = canonical_bytes(slack_payload(notice))
            headers = {"Content-Type": "application/json"}
        else:
            body = canonical_bytes(notice.model_dump(mode="json"))
            headers = {
                "Content-Type": "application/json",
                "X-Orchestrator-Event": notice.kind,
                "X-Orchestrator-Notice": hashlib.sha256(body).hexdigest(),
            }
        import httpx

        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as client:
            yield _http_sender(client, url, body, headers)


def _resolve(url: str, secrets: list[str]) -> str:
    """The URL to POST to, reading ``env:NAME`` now; adds to ``secrets`` what must never
    be shown: the URL, its path and query, and each piece of them of 4 characters or more."""
    name = env_name(url)
    if name is not None:
        value = os.environ.get(name, "")
        if value:
            secrets.append(value)
        if not value.strip():
            raise _Failed(f"environment variable {name} is not set", retry=False)
        url = value.strip()
        if http_origin(url) is None:
            raise _Failed(f"environment variable {name} does not hold an http(s) URL", retry=False)
    parts = urlsplit(url)
    secrets += [url, parts.path, parts.query, parts.fragment, parts.netloc.rpartition("@")[0]]
    if parts.query:
        secrets.append(f"{parts.path}?{parts.query}")
    # a server may echo back any one piece (Slack's token is the last path segment)
    pieces = re.split(r"[/?&=#;:@]", f"{parts.path}?{parts.query}#{parts.fragment}")
    secrets += [unquote(p) for p in pieces if len(p) >= 4] + [p for p in pieces if len(p) >= 4]
    return url


def _http_sender(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> Send:
    import httpx

    async def send() -> None:
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise _Failed(f"timed out ({type(exc).__name__})", retry=True) from None
        except httpx.TransportError as exc:
            raise _Failed(f"{type(exc).__name__}: {exc or 'no detail'}", retry=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        snippet = " ".join(response.text.split())[:200]
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 429 or status >= 500:
            raise _Failed(message, retry=True, after=_retry_after(response.headers))
        raise _Failed(message, retry=False)

    return send


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _file_sender(path: Path, notice: Notice) -> Send:
    line = canonical_bytes(notice.model_dump(mode="json")) + b"\n"

    async def send() -> None:
        try:
            await asyncio.to_thread(_append_line, path, line)
        except OSError as exc:
            raise _Failed(
                f"cannot append to {path}: {exc.strerror or exc}",
                retry=exc.errno not in _PERMANENT_ERRNOS,
            ) from None

    return send


def _append_line(path: Path, line: bytes) -> None:
    """Append ``line`` in one ``write`` on an ``O_APPEND`` descriptor, then fsync.

    One write per line is what keeps concurrent appenders' lines whole: the kernel
    places each ``O_APPEND`` write at the end of the file as a unit.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):
            os.write(fd, b"\n")  # end the torn line, so the retried one starts clean
            raise OSError(errno.EIO, f"short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def _s3_sender(
    url: str,
    notice: Notice,
    cache: MutableMapping[str, ObjectStore] | None,
) -> AsyncIterator[Send]:
    key = notice_key(notice)
    data = canonical_bytes(notice.model_dump(mode="json"))
    opened: list[ObjectStore] = []

    async def store() -> ObjectStore:
        if opened:
            return opened[0]
        found = cache.get(url) if cache is not None else None
        if found is None:
            found = await asyncio.to_thread(open_object_store, url)
            if cache is not None:
                winner = cache.setdefault(url, found)
                if winner is not found:  # a concurrent delivery opened it first
                    found.close()
                found = winner
        opened.append(found)
        return found

    async def send() -> None:
        try:
            target = await store()
            await asyncio.to_thread(target.put, key, data)
        except ConfigError as exc:
            raise _Failed(str(exc), retry=False) from None
        except StorageError as exc:
            raise _Failed(str(exc), retry=True) from None

    try:
        yield send
    finally:
        if opened and cache is None:
            with contextlib.suppress(Exception):  # the notice is already stored, or not
                opened[0].close()


def _redact(message: str, secrets: list[str]) -> str:
    """``message`` on one line, short, with every secret (and URL path) cut out."""
    for secret in sorted((s for s in secrets if len(s) > 1), key=len, reverse=True):
        message = message.replace(secret, "***")
    message = " ".join(message.split())
    return message if len(message) <= ERROR_LIMIT else message[: ERROR_LIMIT - 1] + "…"
