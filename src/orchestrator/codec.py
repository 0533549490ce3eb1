"""Canonical bytes: the one encoding used for hashing, storage and replay comparison.

Canonical JSON: keys sorted, no insignificant whitespace (``,`` and ``:`` separators),
UTF-8 without ASCII escaping, NaN and infinities refused, floats in Python's shortest
round-trip form. Plans, ledger events, receipts, gate decisions, sinks and snapshots all
encode through here; the ledger's hash chain over these bytes is
:mod:`orchestrator.ledger.chain`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_bytes(value: Any) -> bytes:
    """Encode a JSON-compatible value in the canonical form."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def digest(value: Any) -> str:
    """Hex sha256 of a value's canonical bytes."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()
