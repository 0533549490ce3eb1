"""What one sandbox may use: the :class:`Limits` value nodes declare.

Enforcement lives in :mod:`orchestrator.sandbox.cgroups` (memory, process count, CPU
share), :mod:`orchestrator.sandbox.disk` (``disk_mb``) and the callers (``timeout_s``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_DISK_MB", "Limits"]

DEFAULT_DISK_MB = 10 << 10  # 10 GiB


class Limits(BaseModel):
    """What one sandbox may use. ``None`` means unlimited.

    ``cpu_share`` is a fraction of one CPU (cfs quota / period; 2.0 is two full CPUs).
    ``timeout_s`` is wall-clock and enforced by callers; it is only carried here.
    ``disk_mb`` bounds what a node attempt writes (its workspace's writable layer, see
    :mod:`orchestrator.sandbox.disk`, and the sandbox's ``/tmp``). The default, 10 GiB,
    holds a large checkout's build outputs and dependency trees (a big ``node_modules``
    is 1-2 GB) many times over, yet stops a runaway writer long before it fills a
    host's disk; the image is sparse, so an attempt pays only for what it writes.
    """

    model_config = ConfigDict(frozen=True)

    memory_mb: int | None = Field(default=1024, gt=0)
    pids: int | None = Field(default=256, gt=0)
    cpu_share: float | None = Field(default=1.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    disk_mb: int | None = Field(default=DEFAULT_DISK_MB, gt=0)

    def describe(self) -> dict[str, object]:
        """As canonical data for a plan's digest; the default ``disk_mb`` is left out so
        that plans written before it existed keep their digests."""
        data = self.model_dump()
        if data["disk_mb"] == DEFAULT_DISK_MB:
            del data["disk_mb"]
        return data
