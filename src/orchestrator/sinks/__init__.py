"""Delivery sinks for run notices (a gate parked, the run aborted, failed or succeeded)
and budget receipts: a file, a webhook, Slack, S3.

``SinkConfig.parse("slack=env:SLACK_URL")`` names a sink; ``await deliver(sink, notice)``
sends a :class:`GateNotice` or :class:`ReceiptNotice` to it with retries and returns a
:class:`Delivery` (it never raises for a failed delivery: a lost notification must never
lose a gate or stop a run).

``deliver``, ``notice_key`` and ``slack_payload`` load on first use (PEP 562): a run
configuration names sinks (``SinkConfig``) long before, or without, sending to one, and
delivery brings in the retry library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.lazy import lazy_exports
from orchestrator.sinks.base import (
    NOTICE,
    NOTICE_EVENTS,
    Delivery,
    GateNotice,
    Notice,
    NoticeEvent,
    OutcomeNotice,
    ReceiptNotice,
    SinkConfig,
    SummaryNotice,
)

if TYPE_CHECKING:
    from orchestrator.sinks.deliver import deliver, notice_key
    from orchestrator.sinks.slack import slack_payload

__all__ = [
    # configuration
    "SinkConfig",
    "NoticeEvent",
    "NOTICE_EVENTS",
    # what is sent
    "GateNotice",
    "OutcomeNotice",
    "ReceiptNotice",
    "SummaryNotice",
    "Notice",
    "NOTICE",
    # sending it
    "deliver",
    "Delivery",
    # formats
    "slack_payload",
    "notice_key",
]

_HOMES = {
    "orchestrator.sinks.deliver": ("deliver", "notice_key"),
    "orchestrator.sinks.slack": ("slack_payload",),
}
if not TYPE_CHECKING:  # type checkers read the imports above, and flag unknown names
    __getattr__ = lazy_exports(__name__, _HOMES)
