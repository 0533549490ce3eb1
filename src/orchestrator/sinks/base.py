"""What a sink is (:class:`SinkConfig`), what goes to it (:data:`Notice`), and what came of it.

A sink config is recorded in the run's ledger, so it must never hold a secret in clear:
a Slack incoming-webhook URL is a bearer token, and a webhook URL's path or query often
carries one too. The config may therefore name an environment variable (``env:NAME``)
resolved only at delivery time, and everything meant for logs or the ledger goes
through :meth:`SinkConfig.describe`, which keeps scheme, host and port and drops the rest.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from orchestrator.errors import ConfigError

__all__ = [
    "SINK_KINDS",
    "NOTICE_EVENTS",
    "NoticeEvent",
    "SinkConfig",
    "GateNotice",
    "OutcomeNotice",
    "ReceiptNotice",
    "SummaryNotice",
    "Notice",
    "NOTICE",
    "Delivery",
    "env_name",
    "http_origin",
]

SinkKind = Literal["file", "webhook", "slack", "s3"]
SINK_KINDS: tuple[SinkKind, ...] = ("file", "webhook", "slack", "s3")

NoticeEvent = Literal["gate", "abort", "failure", "success"]
NOTICE_EVENTS: tuple[NoticeEvent, ...] = ("gate", "abort", "failure", "success")
"""What a notify sink may subscribe to: a gate parked, the run aborted (its budget),
failed, or succeeded. A sink gets all four unless its config narrows them."""
_EVENTS_MARK = "#events="

_ENV_PREFIX = "env:"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_HTTP_KINDS = ("webhook", "slack")


def env_name(url: str) -> str | None:
    """The variable named by an ``env:NAME`` URL, or None for any other URL."""
    return url[len(_ENV_PREFIX) :] if url.startswith(_ENV_PREFIX) else None


def http_origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL with a host, else None (never user info)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _problem(kind: str, url: str) -> str | None:
    """Why ``url`` cannot serve a ``kind`` sink (in words that never repeat a secret)."""
    if not url.strip():
        return "the URL is empty"
    if "\0" in url or "\n" in url or "\r" in url:
        return "the URL contains a NUL or line break"
    if kind in _HTTP_KINDS:
        name = env_name(url)
        if name is not None:
            if not _ENV_NAME.fullmatch(name):
                return f"{name!r} is not an environment variable name (write env:VARNAME)"
            return None
        if http_origin(url) is None:
            return "the URL must be http(s)://HOST/... or env:VARNAME"
        return None
    if kind == "s3":
        scheme = _SCHEME.match(url)
        if scheme and scheme.group(0).lower() not in ("s3:", "file:"):
            return (
                "the object store URL must be a directory path, file:///ABS/PATH or "
                "s3://BUCKET/PREFIX?endpoint=..."
            )
    return None


class SinkConfig(BaseModel):
    """Where notices go: ``kind`` and a ``url`` whose meaning depends on it.

    * ``file``: a path; each notice is appended as one canonical JSON line
      (relative paths are relative to the working directory at delivery time);
    * ``webhook``: an http(s) URL, or ``env:VARNAME``; each notice is POSTed as JSON;
    * ``slack``: a Slack incoming-webhook URL, or (better, it is a secret) ``env:VARNAME``;
    * ``s3``: an object store URL as :func:`~orchestrator.storage.objects.open_object_store`
      accepts (a directory path, or ``s3://BUCKET/PREFIX?endpoint=...``).

    ``events``: the outcomes a notify sink is sent (:data:`NOTICE_EVENTS`, all by
    default; left out of the recorded form then, so configs that never narrow it record
    as before).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: SinkKind
    url: str
    events: tuple[NoticeEvent, ...] = NOTICE_EVENTS

    @field_validator("events")
    @classmethod
    def _ordered(cls, events: tuple[NoticeEvent, ...]) -> tuple[NoticeEvent, ...]:
        if not events:
            raise ValueError("a sink must subscribe to at least one event")
        return tuple(e for e in NOTICE_EVENTS if e in events)

    @model_serializer(mode="wrap")
    def _recorded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.events == NOTICE_EVENTS:
            data.pop("events", None)
        return data

    def wants(self, event: NoticeEvent) -> bool:
        """Whether this sink subscribed to ``event``."""
        return event in self.events

    @model_validator(mode="after")
    def _check_url(self) -> Self:
        problem = _problem(self.kind, self.url)
        if problem:
            raise ValueError(f"{self.kind} sink: {problem}")
        return self

    def describe(self) -> str:
        """The sink in words safe to log or record: never a URL's path, query or user info."""
        narrowed = "" if self.events == NOTICE_EVENTS else f" ({', '.join(self.events)})"
        return self._where() + narrowed

    def _where(self) -> str:
        name = env_name(self.url)
        if self.kind in _HTTP_KINDS:
            if name is not None:
                return f"{self.kind} env:{name}"
            return f"{self.kind} {http_origin(self.url)}"
        if self.kind == "s3" and _SCHEME.match(self.url):
            parts = urlsplit(self.url)
            host = parts.netloc.rpartition("@")[2]
            return f"s3 {parts.scheme}://{host}{parts.path}"
        return f"{self.kind} {self.url}"

    @classmethod
    def parse(cls, text: str) -> SinkConfig:
        """Read the command-line form ``KIND=URL[#events=E,...]`` (e.g.
        ``slack=env:SLACK_URL`` or ``webhook=https://h/x#events=abort,failure``).

        Raises :class:`~orchestrator.errors.ConfigError` saying what is wrong and what
        would be right, without repeating a URL that may hold a secret.
        """
        forms = (
            "file=PATH, webhook=URL, slack=URL, s3=STORE_URL "
            "(for webhook and slack, URL may be env:VARNAME)"
        )
        kind, eq, url = text.partition("=")
        kind = kind.strip().lower()
        if not eq:
            raise ConfigError(
                f"cannot read the sink {_shown(text)!r}: write KIND=URL, one of {forms}"
            )
        if kind not in SINK_KINDS:
            raise ConfigError(
                f"cannot read the sink {kind + '=...'!r}: unknown kind {kind!r}; "
                f"write KIND=URL, one of {forms}"
            )
        url, events = _events_of(kind, url.strip())
        problem = _problem(kind, url)
        if problem:
            raise ConfigError(f"cannot read the sink {kind + '=...'!r}: {problem}")
        try:
            return cls(kind=kind, url=url, events=events)
        except ValidationError as exc:  # not reached: _problem covers the validator
            raise ConfigError(f"cannot read the sink {kind + '=...'!r}: {exc}") from None


def _events_of(kind: str, url: str) -> tuple[str, tuple[NoticeEvent, ...]]:
    """Split ``URL#events=E,...`` into the URL and the events (all, when not given)."""
    if _EVENTS_MARK not in url:
        return url, NOTICE_EVENTS
    url, _, listed = url.rpartition(_EVENTS_MARK)
    names = [n.strip().lower() for n in listed.split(",") if n.strip()]
    unknown = [n for n in names if n not in NOTICE_EVENTS]
    if unknown or not names:
        what = f"unknown event(s) {', '.join(map(repr, unknown))}" if unknown else "no events"
        raise ConfigError(
            f"cannot read the sink {kind + '=...'!r}: {what} after #events=; "
            f"list one or more of {', '.join(NOTICE_EVENTS)}, comma-separated"
        )
    return url, tuple(e for e in NOTICE_EVENTS if e in names)


def _shown(text: str) -> str:
    """As much of a malformed sink text as is safe to echo (not a URL-looking one)."""
    return text if "/" not in text and len(text) <= 40 else text[:8] + "..."


class GateNotice(BaseModel):
    """A gated node is parked: the review, and the exact commands that decide it."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["gate"] = "gate"
    run_id: str
    node: str
    attempt: int
    gate: str
    digest: str
    review: str
    """The diff or review payload (may be long)."""
    approve: str
    """The exact command a person types to approve, e.g. ``orchestrator approve RUN GATE``."""
    reject: str
    parked_at: str
    """ISO-8601 time at which the run parked."""


class OutcomeNotice(BaseModel):
    """A run ended or stopped: aborted (resumable with a fresh budget), failed or
    succeeded; why, and the exact command that acts on it."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["outcome"] = "outcome"
    run_id: str
    plan: str
    outcome: Literal["abort", "failure", "success"]
    reason: str
    command: str
    """What to type next: ``orchestrator --home H resume RUN --budget ...`` after an abort,
    ``orchestrator --home H status RUN`` otherwise."""
    at: str
    """ISO-8601 time of the event that ended or stopped the run."""
    text: str
    """The whole notice in a few plain lines, for sinks that show text."""


class ReceiptNotice(BaseModel):
    """A signed budget receipt. ``body`` is opaque JSON except for a few well-known keys."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["receipt"] = "receipt"
    run_id: str
    number: int
    body: dict[str, Any]
    signature: str
    key: str


class SummaryNotice(BaseModel):
    """What a run (or one of its agents) reports when it is done: a title and plain text."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["summary"] = "summary"
    run_id: str
    name: str
    title: str
    text: str


Notice = Annotated[
    GateNotice | OutcomeNotice | ReceiptNotice | SummaryNotice, Field(discriminator="kind")
]
NOTICE: TypeAdapter[GateNotice | OutcomeNotice | ReceiptNotice | SummaryNotice] = TypeAdapter(
    Notice
)
"""Validates a notice's JSON form back into a :data:`Notice` (``NOTICE.validate_json``)."""


class Delivery(BaseModel):
    """The outcome of delivering one notice to one sink. ``error`` never holds a secret."""

    model_config = ConfigDict(frozen=True)

    sink: str
    """The sink as :meth:`SinkConfig.describe` puts it."""
    ok: bool
    attempts: int
    error: str | None = None
