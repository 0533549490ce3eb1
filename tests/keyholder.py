"""What the holder of a run's private key can do that no one else can: sign a new head for
whatever the run's ledger now holds, so ``ledger verify`` passes again."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from orchestrator import signing
from orchestrator.ledger.head import SignedHead
from orchestrator.trust import TrustStore

KEEP = -1
"""For ``checkpoint``: keep the cut the ledger's current signed head names."""


def resign_head(home: Path, run_id: str, trust: Path, checkpoint: int | None = KEEP) -> SignedHead:
    """Sign the last event of the run's ledger in ``home`` as its head, with the run's key
    from the key directory, and store that head in the ledger's ``heads`` table and in the
    trust directory ``trust``, as the key holder could after rewriting or truncating the
    ledger. ``checkpoint`` is the cut the head names (by default the one it named)."""
    signer = signing.load(signing.key_dir() / "runs" / f"{run_id}.key")
    with contextlib.closing(sqlite3.connect(home / "ledger.db")) as db:
        seq, hash_ = db.execute(
            "SELECT seq, hash FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1", (run_id,)
        ).fetchone()
        if checkpoint == KEEP:
            (text,) = db.execute("SELECT head FROM heads WHERE run_id=?", (run_id,)).fetchone()
            old = SignedHead.from_json(text)
            assert old is not None, f"run {run_id}'s signed head does not parse"
            checkpoint = old.checkpoint
        head = SignedHead.sign(signer, run_id, seq, hash_, checkpoint)
        db.execute("UPDATE heads SET head=? WHERE run_id=?", (head.to_json(), run_id))
        db.commit()
    kept = TrustStore(trust)
    try:
        kept.put_head(head)
    finally:
        kept.close()
    return head
