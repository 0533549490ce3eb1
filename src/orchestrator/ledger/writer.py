"""LedgerWriter: the single writer of one run's chain, with group commit.

Events are staged (sequence number, timestamp, canonical bytes, chained hash) and applied
to the run's state at once; ``commit()`` makes everything staged durable in one
transaction. Callers that stage in the same event-loop tick share one commit, so 200
parallel completions cost one SQLite transaction, not 200.

With a signer, every commit also signs the new head of the chain (see
:mod:`orchestrator.ledger.head`): the signed head is stored with the events in the same
transaction, then kept by a :class:`HeadKeeper` (the trust directory,
:mod:`orchestrator.trust`), outside the ledger.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, TypeVar

from orchestrator.clock import Clock, iso
from orchestrator.ledger.chain import GENESIS, chain_hash
from orchestrator.ledger.events import BaseEvent, encode
from orchestrator.ledger.head import SignedHead
from orchestrator.ledger.state import RunState
from orchestrator.ledger.store import LedgerStore, StoredEvent
from orchestrator.signing import Signer

E = TypeVar("E", bound=BaseEvent)


class HeadKeeper(Protocol):
    """Where committed signed heads are kept outside the ledger (a TrustStore)."""

    def put_head(self, head: SignedHead) -> None: ...


class LedgerWriter:
    """Stages, chains and group-commits the events of one run."""

    def __init__(
        self,
        store: LedgerStore,
        run_id: str,
        clock: Clock,
        head_seq: int = -1,
        head_hash: str | None = None,
        signer: Signer | None = None,
        trust: HeadKeeper | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.head_seq = head_seq
        self.head_hash = head_hash or GENESIS
        self.state: RunState | None = None
        self._staged: list[StoredEvent] = []
        self._pending: asyncio.Future[None] | None = None
        self.listeners: list[Any] = []
        self.signer = signer
        self.trust = trust

    def stage(self, cls: type[E], **fields: Any) -> E:
        """Build the next event, chain it, apply it to the state and buffer it."""
        fields.setdefault("ts", iso(self.clock.now()))
        event = cls(seq=self.head_seq + 1, **fields)
        body = encode(event)
        self.head_hash = chain_hash(self.head_hash, body)
        self.head_seq = event.seq
        self._staged.append(StoredEvent(event.seq, event.kind, body, self.head_hash))
        if self.state is not None:
            self.state.apply(event)
        for listener in self.listeners:
            listener(event)
        return event

    def take_staged(self) -> list[StoredEvent]:
        """Hand over what is staged, for a caller that writes it in its own transaction."""
        staged, self._staged = self._staged, []
        return staged

    def signed_head(self) -> SignedHead | None:
        """The current head, signed with the run key (None without a signer)."""
        if self.signer is None:
            return None
        last = self.state.checkpoint if self.state is not None else None
        checkpoint = None if last is None else last.cut
        return SignedHead.sign(self.signer, self.run_id, self.head_seq, self.head_hash, checkpoint)

    def publish(self, head: SignedHead | None) -> None:
        """Keep a committed signed head in the trust directory too."""
        if head is not None and self.trust is not None:
            self.trust.put_head(head)

    def flush(self) -> None:
        """Write everything staged, and the signed head, in one transaction, now."""
        if self._staged:
            batch, self._staged = self._staged, []
            head = self.signed_head()
            self.store.append(self.run_id, batch, head)
            self.publish(head)

    async def commit(self) -> None:
        """Durably commit what is staged, sharing the commit with this tick's other callers."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            loop.call_soon(self._commit_now)
        await asyncio.shield(self._pending)

    def _commit_now(self) -> None:
        future, self._pending = self._pending, None
        assert future is not None
        try:
            self.flush()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
