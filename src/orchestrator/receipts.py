"""Budget receipts: signed summaries of what a run used, built from the ledger fold.

A receipt covers the period since the previous one: tokens by model, wall-clock per
sandbox, a line item per node, the period's usage, totals and what the envelope has
left. Its body is canonical JSON signed with the run's Ed25519 key; the ReceiptIssued
event records body and signature, and sinks get copies. Because the body is a function
of the fold, replay rebuilds it and compares.

What a body's amounts mean (the signed bytes keep this meaning): ``totals`` is what the
run has spent since it started; ``ceiling`` its envelope; ``remaining`` what the envelope
still admits, that is the ceiling less what was spent since the ceiling was set *and less
what in-flight reservations may still use* (a node's reserved worst case beyond what its
attempt has used). The reserved part is not in the body; :func:`held_when_issued`
derives it from the ledger, and ``orchestrator receipts`` shows spent, reserved and
remaining apart.

``fallback_priced`` (present only when non-empty) lists the models whose calls matched
no price and were charged at the fallback list price (``DEFAULT_MODEL_PRICES["*"]``).

Receipts form a chain: each body names the previous receipt's number and the digest of
its body (``previous``, null for receipt 1), so a copy with a receipt deleted,
duplicated or moved does not verify; the last one is checked against the ledger's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator import signing
from orchestrator.budget import Budget
from orchestrator.codec import canonical_bytes, digest
from orchestrator.ledger.events import BaseEvent, ReceiptIssued, RunStarted
from orchestrator.ledger.state import RunState


def build(state: RunState, number: int, period_end: str) -> dict[str, Any]:
    """The body of receipt ``number``, for the period ending at ``period_end``."""
    book = state.book
    previous = state.receipts[-1].body if state.receipts else None
    start = previous["period"]["to"] if previous else state.started_at
    totals = book.total.to_json()
    before = previous["totals"] if previous else {"tokens": 0, "compute_h": 0.0, "spend_usd": 0.0}
    remaining = book.remaining()
    sandboxes = {
        name: round(wall, 6) for meter in book.nodes.values() for name, wall in meter.wall_s.items()
    }
    return {
        "run_id": state.run_id,
        "number": number,
        "period": {"from": start, "to": period_end},
        "tokens_by_model": dict(sorted(book.tokens_by_model.items())),
        "sandbox_wall_s": dict(sorted(sandboxes.items())),
        "nodes": [
            {"node": node, **meter.total.to_json()}
            for node, meter in sorted(book.nodes.items())
            if meter.total.tokens or meter.total.compute_h or meter.total.spend_usd
        ],
        "period_usage": {
            "tokens": totals["tokens"] - before["tokens"],
            "compute_h": round(totals["compute_h"] - before["compute_h"], 9),
            "spend_usd": round(totals["spend_usd"] - before["spend_usd"], 9),
        },
        "totals": totals,
        "ceiling": None if book.ceiling is None else book.ceiling.model_dump(),
        "remaining": None if remaining is None else _rounded(remaining.model_dump()),
        "previous": link(previous),
    } | _fallback_priced(book.fallback_priced)


def _fallback_priced(models: set[str]) -> dict[str, Any]:
    """Models no price matched, priced at the fallback list price; the key is left out
    when there are none, so receipts recorded before it existed rebuild the same."""
    return {"fallback_priced": sorted(models)} if models else {}


def held_when_issued(events: Iterable[BaseEvent]) -> dict[int, Budget]:
    """By receipt number: what in-flight reservations held (beyond what their attempts had
    used) when the receipt was issued, folding a run's events in order."""
    state: RunState | None = None
    held: dict[int, Budget] = {}
    for event in events:
        if isinstance(event, RunStarted):
            state = RunState.start(event)
            continue
        if state is None:
            continue
        if isinstance(event, ReceiptIssued):
            held[event.number] = state.book.held()
        state.apply(event)
    return held


def link(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a receipt names the one before it (``body``): its number and body digest."""
    return None if body is None else {"number": body.get("number"), "digest": digest(body)}


def chain_problems(
    found: Sequence[dict[str, Any]], last: dict[str, Any] | None = None
) -> list[str]:
    """What is wrong with the order of a run's receipts: they must be numbered 1, 2, …
    with each naming the one before it, and end with ``last`` (the body of the ledger's
    newest receipt) when it is known. Receipts recorded before chaining (no ``previous``
    key) are checked by number only."""
    problems: list[str] = []
    before: dict[str, Any] | None = None
    for position, receipt in enumerate(found, 1):
        body = receipt.get("body")
        if not isinstance(body, dict):
            continue  # reported as not a receipt
        number = body.get("number")
        if number != position:
            problems.append(
                f"receipt #{number} is in position {position}: a receipt was deleted, "
                "duplicated or moved"
            )
        elif "previous" in body and body["previous"] != link(before):
            problems.append(
                f"receipt #{number} does not name the receipt before it: a receipt was "
                "replaced or moved"
            )
        before = body
    if last is not None and (before is None or link(before) != link(last)):
        have = "none" if before is None else f"#{before.get('number')}"
        problems.append(
            f"the ledger's newest receipt is #{last['number']}, but the last one here is "
            f"{have}: receipts were deleted from the end, or this copy is not the run's"
        )
    return problems


def sign(body: dict[str, Any], signer: signing.Signer) -> str:
    return signer.sign(canonical_bytes(body))


def problem(receipt: dict[str, Any], key: str | None) -> str | None:
    """Why a receipt (as recorded or as a sink received it) fails to verify, if it does.

    ``key`` is the run's public key as this home knows it; without one, the key the
    receipt names is used (which proves integrity, not origin)."""
    body, signature, named = receipt.get("body"), receipt.get("signature"), receipt.get("key")
    if not isinstance(body, dict) or not isinstance(signature, str) or not isinstance(named, str):
        return "not a receipt (body, signature and key are required)"
    if key is not None and named != key:
        return f"signed by {named[:16]}…, not by the run's key {key[:16]}…"
    if not signing.verify(named, canonical_bytes(body), signature):
        return "the signature does not match the body (altered or forged)"
    return None


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 9) if isinstance(v, float) else v for k, v in values.items()}
