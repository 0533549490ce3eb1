"""Canonical bytes and the hash chain.

The one encoding used for hashing, storage and replay comparison is canonical JSON:
keys sorted, no insignificant whitespace (``,`` and ``:`` separators), UTF-8 without
ASCII escaping, NaN and infinities refused, floats in Python's shortest round-trip
form. Each event's hash is ``sha256(prev_hash || canonical_bytes)`` in hex, with the
genesis ``prev_hash`` being 32 zero bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from orchestrator.errors import LedgerCorrupt

GENESIS = "0" * 64


def canonical_bytes(value: Any) -> bytes:
    """Encode a JSON-compatible value in the ledger's canonical form."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


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


def digest(value: Any) -> str:
    """Hex sha256 of a value's canonical bytes."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def chain_hash(prev_hash: str, body: bytes) -> str:
    """The hash of an event whose canonical body is ``body``, chained to ``prev_hash``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()
