"""Slack incoming-webhook payloads (Block Kit) for gate and receipt notices.

Every text object is kept within Slack's limits (a header's plain text at most 150
characters, a section's text at most 3,000, at most 10 fields of at most 2,000), since
Slack rejects the whole message otherwise and the notice would be lost. Text from the
run (a diff, node names) is escaped for mrkdwn: ``&``, ``<`` and ``>`` become entities,
so a diff line such as ``<!channel>`` cannot ping anyone, and a run of backticks is
broken up so it cannot end the code block it is shown in.
"""

from __future__ import annotations

from typing import Any

from orchestrator.budget import is_unlimited
from orchestrator.sinks.base import (
    GateNotice,
    Notice,
    OutcomeNotice,
    ReceiptNotice,
    SummaryNotice,
)

__all__ = [
    "HEADER_LIMIT",
    "SECTION_LIMIT",
    "FIELD_LIMIT",
    "MAX_FIELDS",
    "slack_payload",
    "gate_blocks",
    "outcome_blocks",
    "receipt_blocks",
]

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
FALLBACK_LIMIT = 3000
"""The top-level ``text`` is only a notification fallback when blocks are given."""
LINE_LIMIT = 200
"""A diff line longer than this is shortened in the excerpt, so one line cannot fill it."""

_ELLIPSIS = "…"
_ZWSP = "\u200b"

Block = dict[str, Any]


def slack_payload(notice: Notice) -> dict[str, Any]:
    """The JSON body to POST to an incoming webhook: ``text`` (fallback) and ``blocks``."""
    if isinstance(notice, GateNotice):
        text = f"Approval needed: gate {notice.gate} on node {notice.node} (run {notice.run_id})"
        blocks = gate_blocks(notice)
    elif isinstance(notice, OutcomeNotice):
        text = f"{_OUTCOME_TITLES[notice.outcome]}: run {notice.run_id}"
        blocks = outcome_blocks(notice)
    elif isinstance(notice, SummaryNotice):
        text = f"{notice.title} (run {notice.run_id})"
        blocks = [
            _header(notice.title),
            _section(f"```{_code(notice.text, SECTION_LIMIT - 200)}```"),
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": _cut(f"run `{_code(notice.run_id, 200)}`", 2000)}
                ],
            },
        ]
    else:
        text = f"Budget receipt #{notice.number} for run {notice.run_id}"
        totals = notice.body.get("totals")
        if isinstance(totals, dict):
            text += f": {_amounts(totals)}"
        blocks = receipt_blocks(notice)
    return {"text": _cut(_escape(text), FALLBACK_LIMIT), "blocks": blocks}


# --------------------------------------------------------------------------- outcomes

_OUTCOME_TITLES = {
    "abort": "Run aborted",
    "failure": "Run failed",
    "success": "Run succeeded",
}


def outcome_blocks(notice: OutcomeNotice) -> list[Block]:
    """How the run ended or stopped, why, and the command to type next."""
    return [
        _header(f"{_OUTCOME_TITLES[notice.outcome]}: {notice.plan}"),
        _section(_cut(_escape(notice.reason), SECTION_LIMIT)),
        _section(f"*Next:*\n```{_code(notice.command, 1400)}```"),
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": _cut(f"run `{_code(notice.run_id, 200)}`", 2000)}
            ],
        },
    ]


# --------------------------------------------------------------------------- gates


def gate_blocks(notice: GateNotice) -> list[Block]:
    commands = (
        f"*To approve:*\n```{_code(notice.approve, 1400)}```\n"
        f"*To reject:*\n```{_code(notice.reject, 1400)}```"
    )
    return [
        _header(f"Approval needed: gate {notice.gate}"),
        {
            "type": "section",
            "fields": [
                _field("Run", f"`{_code(notice.run_id, 1900)}`"),
                _field("Node", f"`{_code(notice.node, 1900)}`"),
                _field("Attempt", str(notice.attempt)),
                _field("Parked at", _escape(notice.parked_at)),
            ],
        },
        _section(_review(notice)),
        _section(commands),
    ]


def _review(notice: GateNotice) -> str:
    """The review as a code-block excerpt that fits one section, saying what was cut."""
    head = f"*Review* (digest `{_code(notice.digest, 100)}`)\n"
    lines = notice.review.splitlines()
    if not lines:
        return head + "_(no review text)_"
    # room for the fences and the longest possible note about cut lines
    room = SECTION_LIMIT - len(head) - len("```\n```") - 80
    shown: list[str] = []
    used = 0
    for line in lines:
        text = _code(line, LINE_LIMIT)
        if used + len(text) + 1 > room:
            break
        shown.append(text)
        used += len(text) + 1
    block = f"{head}```\n" + "\n".join(shown) + "```"
    cut = len(lines) - len(shown)
    if cut:
        block += f"\n_{cut:,} more line{'s' if cut != 1 else ''} not shown ({len(lines):,} in all)_"
    return block


# --------------------------------------------------------------------------- receipts


def receipt_blocks(notice: ReceiptNotice) -> list[Block]:
    body = notice.body
    fields = [_field("Run", f"`{_code(notice.run_id, 1900)}`")]
    period = body.get("period")
    if isinstance(period, dict):
        fields.append(
            _field("Period", f"{_value(period.get('from'))} → {_value(period.get('to'))}")
        )
    totals = body.get("totals")
    if isinstance(totals, dict):
        fields += [
            _field("Tokens", _tokens(totals.get("tokens"))),
            _field("Compute-hours", _hours(totals.get("compute_h"))),
            _field("Spend", _usd(totals.get("spend_usd"))),
        ]
    if "remaining" in body:
        remaining = body["remaining"]
        fields.append(
            _field(
                "Remaining",
                _amounts(remaining) if isinstance(remaining, dict) else "no ceiling",
            )
        )
    context = f"Signed with key `{_code(notice.key, 200)}`"
    return [
        _header(f"Budget receipt #{notice.number}"),
        {"type": "section", "fields": fields[:MAX_FIELDS]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]


def _amounts(totals: dict[str, Any]) -> str:
    """Each dimension with a limit; one a ceiling leaves unlimited is left out."""
    shown = [
        text
        for name, text in (
            ("tokens", f"{_tokens(totals.get('tokens'))} tokens"),
            ("compute_h", _hours(totals.get("compute_h"))),
            ("spend_usd", _usd(totals.get("spend_usd"))),
        )
        if not _unlimited(totals.get(name))
    ]
    return " · ".join(shown) or "unlimited"


def _unlimited(value: Any) -> bool:
    number = _number(value)
    return number is not None and is_unlimited(number)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _tokens(value: Any) -> str:
    number = _number(value)
    return f"{number:,.0f}" if number is not None else _value(value)


def _hours(value: Any) -> str:
    number = _number(value)
    return f"{number:,.2f} h" if number is not None else _value(value)


def _usd(value: Any) -> str:
    number = _number(value)
    return f"${number:,.2f}" if number is not None else _value(value)


def _value(value: Any) -> str:
    return "—" if value is None else _cut(_escape(str(value)), 200)


# --------------------------------------------------------------------------- text objects


def _header(text: str) -> Block:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _cut(text, HEADER_LIMIT), "emoji": True},
    }


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, SECTION_LIMIT)}}


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", FIELD_LIMIT)}


def _escape(text: str) -> str:
    """Text made literal for mrkdwn: Slack's three control characters as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str, limit: int) -> str:
    """Text for inside a code span or block: escaped, with no backtick run that could end
    the block, at most ``limit`` characters (cut on a character, never inside an entity)."""
    text = text.replace("``", "`" + _ZWSP + "`")
    if text.startswith("`"):
        text = _ZWSP + text
    if text.endswith("`"):
        text += _ZWSP
    escaped = _escape(text)
    if len(escaped) <= limit:
        return escaped
    out: list[str] = []
    used = 0
    for char in text:
        piece = _escape(char)
        if used + len(piece) > limit - 1:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + _ELLIPSIS


def _cut(text: str, limit: int) -> str:
    """``text`` if it fits ``limit`` characters, else its start and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS
