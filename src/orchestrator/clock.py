"""Clocks: the real one, and a manual one so tests skip time instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        import asyncio  # loaded already when a loop runs; kept out of the import of clocks

        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that jumps: ``sleep`` advances time at once instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        import asyncio

        await asyncio.sleep(0)


def iso(moment: datetime) -> str:
    """The ledger's timestamp form: ISO-8601 UTC with microseconds."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    # isoformat is the same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ"), several times faster
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
