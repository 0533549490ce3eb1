"""SignedHead: the run key's signature over the head of a run's chain.

A signed head is Ed25519 over the canonical JSON of ``{"kind": "orchestrator-head/1",
"run_id", "seq", "hash", "checkpoint"}``. The ledger keeps the newest one in the same
transaction as the events it covers; the trust directory (:mod:`orchestrator.trust`)
keeps one too, outside the ledger, so a ledger rolled back or truncated to an older
state (with its older signed head) is caught.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from orchestrator import signing

HEAD_KIND = "orchestrator-head/1"
_PLAIN = re.compile(r"[A-Za-z0-9:._-]*")  # strings JSON writes as they are


@dataclass(frozen=True, slots=True)
class SignedHead:
    """The run key's signature over the head of the run's chain."""

    run_id: str
    seq: int
    hash: str
    checkpoint: int | None
    key: str
    signature: str = ""

    def payload(self) -> bytes:
        """The canonical JSON (keys sorted) of what is signed, built directly: this runs
        at every commit."""
        checkpoint = "null" if self.checkpoint is None else str(int(self.checkpoint))
        text = (
            f'{{"checkpoint":{checkpoint},"hash":{_text(self.hash)},"kind":"{HEAD_KIND}",'
            f'"run_id":{_text(self.run_id)},"seq":{int(self.seq)}}}'
        )
        return text.encode()

    @classmethod
    def sign(
        cls, signer: signing.Signer, run_id: str, seq: int, hash: str, checkpoint: int | None
    ) -> SignedHead:
        unsigned = cls(run_id, seq, hash, checkpoint, signer.public)
        return cls(run_id, seq, hash, checkpoint, signer.public, signer.sign(unsigned.payload()))

    def verifies(self, keys: list[str]) -> bool:
        """Whether it is signed by its key, and that key is one of ``keys``."""
        return self.key in keys and signing.verify(self.key, self.payload(), self.signature)

    def to_json(self) -> str:
        checkpoint = "null" if self.checkpoint is None else str(int(self.checkpoint))
        return (
            f'{{"run_id":{_text(self.run_id)},"seq":{int(self.seq)},"hash":{_text(self.hash)},'
            f'"checkpoint":{checkpoint},"key":{_text(self.key)},'
            f'"signature":{_text(self.signature)}}}'
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedHead | None:
        """The head a JSON text holds, or None if it is not one (damaged, torn)."""
        try:
            data = json.loads(text)
            head = cls(**data)
        except (ValueError, TypeError):
            return None
        texts = (head.run_id, head.hash, head.key, head.signature)
        numbers = (head.seq, 0 if head.checkpoint is None else head.checkpoint)
        if not all(isinstance(v, str) for v in texts) or not all(type(n) is int for n in numbers):
            return None
        return head


def _text(value: str) -> str:
    """``value`` as a JSON string; hex digests and run ids need no escaping (per commit)."""
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)
