"""Delivery sinks for gate notifications and budget receipts: a file, a webhook, Slack, S3.

``SinkConfig.parse("slack=env:SLACK_URL")`` names a sink; ``await deliver(sink, notice)``
sends a :class:`GateNotice` or :class:`ReceiptNotice` to it with retries and returns a
:class:`Delivery` (it never raises for a failed delivery: a lost notification must never
lose a gate or stop a run).
"""

from orchestrator.sinks.base import (
    NOTICE,
    Delivery,
    GateNotice,
    Notice,
    ReceiptNotice,
    SinkConfig,
    SummaryNotice,
)
from orchestrator.sinks.deliver import deliver, notice_key
from orchestrator.sinks.slack import slack_payload

__all__ = [
    # configuration
    "SinkConfig",
    # what is sent
    "GateNotice",
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
