"""The hash chain: each event's hash is ``sha256(prev_hash || canonical_bytes)`` in hex,
the genesis ``prev_hash`` being 32 zero bytes (canonical bytes: :mod:`orchestrator.codec`).
"""

from __future__ import annotations

import hashlib

GENESIS = "0" * 64


def chain_hash(prev_hash: str, body: bytes) -> str:
    """The hash of an event whose canonical body is ``body``, chained to ``prev_hash``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()
