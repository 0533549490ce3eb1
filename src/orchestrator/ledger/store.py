"""The ledger store protocol, and picking a backend from a URL.

A store keeps, per run, the ordered canonical event bodies with their chained hashes,
plus a small control inbox (pause requests from other processes). It knows nothing of
event types: encoding lives in :mod:`orchestrator.codec`, the hash chain in
:mod:`orchestrator.ledger.chain`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from orchestrator.errors import ConfigError, LedgerCorrupt
from orchestrator.ledger.head import SignedHead


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the ledger: position, kind, canonical body and chained hash."""

    seq: int
    kind: str
    body: bytes
    hash: str


def parse(body: bytes, where: str) -> dict[str, Any]:
    """A stored event's JSON object; bytes that are not one raise LedgerCorrupt naming
    ``where``."""
    try:
        value = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise LedgerCorrupt(
            f"{where}: a stored event is not JSON ({exc}); "
            "`orchestrator ledger verify RUN` names the first damaged event"
        ) from exc
    if not isinstance(value, dict):
        raise LedgerCorrupt(
            f"{where}: a stored event is a JSON {type(value).__name__}, not an object; "
            "`orchestrator ledger verify RUN` names the first damaged event"
        )
    return value


@dataclass(frozen=True, slots=True)
class RunRow:
    """What ``ls`` shows without folding a whole run."""

    run_id: str
    plan_name: str
    created_at: str
    last_seq: int
    last_ts: str
    status_kind: str
    status_event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Control:
    """A request to a run's owning process, e.g. ``pause``."""

    id: int
    command: str
    source: str


class LedgerStore(Protocol):
    """Append-only per-run event storage. One writer per run at a time."""

    url: str

    def create_run(
        self,
        run_id: str,
        plan_name: str,
        created_at: str,
        first: Sequence[StoredEvent],
        head: SignedHead | None = None,
    ) -> None:
        """Register a run and append its first events in one transaction."""

    def append(
        self, run_id: str, events: Sequence[StoredEvent], head: SignedHead | None = None
    ) -> None:
        """Durably append events in one transaction, replacing the run's signed head with
        ``head`` (if given) in the same transaction; a seq clash raises LedgerConflict."""

    def signed_head(self, run_id: str) -> SignedHead | None:
        """The newest signed head stored with the run's events, if any."""

    def read_signed(self, run_id: str) -> tuple[list[StoredEvent], SignedHead | None]:
        """The run's events and its signed head, as of one moment."""

    def read(self, run_id: str, after_seq: int = -1) -> list[StoredEvent]: ...

    def head(self, run_id: str) -> StoredEvent | None: ...

    def runs(self) -> list[RunRow]: ...

    def has_run(self, run_id: str) -> bool: ...

    def send_control(self, run_id: str, command: str, source: str) -> None: ...

    def take_controls(self, run_id: str) -> list[Control]:
        """Return and mark handled the run's pending control requests."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def open_store(url: str, *, create: bool = True) -> LedgerStore:
    """Open a ledger store from a URL: ``sqlite:///path/to/ledger.db`` (the default).
    With ``create=False`` a ledger that does not exist yet reads as empty and is not made."""
    if url.startswith("sqlite:///"):
        from orchestrator.ledger.sqlite import SqliteLedgerStore

        path, _, query = url.removeprefix("sqlite:///").partition("?")
        sync = "normal"
        for part in filter(None, query.split("&")):
            key, _, value = part.partition("=")
            if key != "synchronous" or value.lower() not in ("normal", "full"):
                raise ConfigError(f"unknown SQLite ledger option {part!r} in {url!r}")
            sync = value.lower()
        return SqliteLedgerStore(Path(path), sync, create=create)
    raise ConfigError(
        f"cannot open ledger {url!r}: the supported form is sqlite:///PATH "
        "(Postgres arrives with a later release)"
    )
