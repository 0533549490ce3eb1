"""Re-hash a run's chain and name the first event that does not fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import LedgerCorrupt
from orchestrator.ledger.codec import GENESIS, chain_hash
from orchestrator.ledger.events import Event, decode
from orchestrator.ledger.store import StoredEvent


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of verifying a chain: head when whole, else the first bad event."""

    ok: bool
    events: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None
    decoded: tuple[Event, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_hash": self.head_hash,
            "bad_seq": self.bad_seq,
            "problem": self.problem,
        }


def verify_chain(events: Sequence[StoredEvent]) -> ChainReport:
    """Check sequence numbers, hashes, and that every body decodes to its recorded kind."""
    prev = GENESIS
    decoded: list[Event] = []
    for expected_seq, row in enumerate(events):
        problem = None
        if row.seq != expected_seq:
            problem = f"sequence gap: expected seq {expected_seq}, found {row.seq}"
        elif chain_hash(prev, row.body) != row.hash:
            problem = "hash mismatch: the stored body or hash was altered"
        else:
            try:
                event = decode(row.body)
            except LedgerCorrupt as exc:
                problem = f"body does not decode: {str(exc.__cause__).splitlines()[0]}"
            else:
                if event.seq != row.seq or event.kind != row.kind:
                    problem = (
                        f"body says seq {event.seq} {event.kind}, row says {row.seq} {row.kind}"
                    )
        if problem is not None:
            return ChainReport(False, len(events), prev, expected_seq, problem)
        decoded.append(event)
        prev = row.hash
    return ChainReport(True, len(events), prev, decoded=tuple(decoded))
