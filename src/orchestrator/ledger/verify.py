"""Re-hash a run's chain and name the first event that does not fit; then check that the
run key's signed heads cover the chain, to its last event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from orchestrator.errors import LedgerCorrupt
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.ledger.events import Event, decode
from orchestrator.ledger.head import SignedHead
from orchestrator.ledger.store import StoredEvent
from orchestrator.signing import fingerprint


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of verifying a chain: head when whole, else the first bad event."""

    ok: bool
    events: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None
    decoded: tuple[Event, ...] = ()
    signed_by: str | None = None
    checkpoint: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_hash": self.head_hash,
            "bad_seq": self.bad_seq,
            "problem": self.problem,
            "signed_by": self.signed_by,
            "checkpoint": self.checkpoint,
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


def verify_signed(
    events: Sequence[StoredEvent],
    keys: Sequence[str],
    stored: SignedHead | None,
    kept: SignedHead | None,
) -> ChainReport:
    """Verify the chain, then its signed heads: ``stored`` (kept with the events) must be
    signed by a key pinned for the run and name the chain's last event; ``kept`` (the trust
    directory's copy, which may lag by one commit after a crash) must be signed by a pinned
    key and name an event the chain still reaches. Any pinned key will do, as for
    checkpoints: a run restored into another home is pinned to the key vouched for and
    that home's key, and each home's ledger is signed by its own. Without pinned keys
    nothing authenticates the run, and that is reported as a failure."""
    report = verify_chain(events)
    if not report.ok:
        return report
    last = len(events) - 1
    if not keys:
        what = "has a signed head but" if stored is not None else "has no signed head and"
        return _bad(
            report,
            last,
            f"the run {what} no key pinned in the trust directory, so nothing "
            "authenticates its history (it predates signed heads, or was not started by "
            "this user; `resume --from DIR --signer KEY` pins a key you vouch for)",
        )
    if stored is None:
        return _bad(report, last, "the ledger holds no signed head for this run (removed?)")
    if not stored.verifies(list(keys)):
        pinned = ", ".join(fingerprint(k) for k in keys)
        return _bad(
            report,
            last,
            f"the ledger's signed head (seq {stored.seq}) is not signed by a key pinned for "
            f"the run ({pinned}); the ledger was rewritten",
        )
    for name, head in (("the ledger's", stored), ("the trust directory's", kept)):
        if head is None:
            continue
        if not head.verifies(list(keys)):
            return _bad(report, last, f"{name} signed head does not verify")
        if head.seq > last:
            return _bad(
                report,
                last,
                f"truncated: {name} signed head names seq {head.seq}, but the ledger ends at "
                f"seq {last}; events were deleted",
            )
        if events[head.seq].hash != head.hash:
            return _bad(
                report,
                head.seq,
                f"{name} signed head names hash {head.hash[:16]}… at seq {head.seq}, but the "
                f"ledger has {events[head.seq].hash[:16]}… there; the ledger was rewritten",
            )
    if stored.seq != last:
        return _bad(
            report,
            stored.seq + 1,
            f"events after seq {stored.seq} are not covered by the run's signed head; "
            "someone without the run key appended them",
        )
    newest = stored if kept is None or kept.seq <= stored.seq else kept
    return replace(report, signed_by=stored.key, checkpoint=newest.checkpoint)


def _bad(report: ChainReport, seq: int, problem: str) -> ChainReport:
    return replace(report, ok=False, bad_seq=seq, problem=problem, decoded=())
