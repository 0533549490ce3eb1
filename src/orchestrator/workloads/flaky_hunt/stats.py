"""Failure rates with honest uncertainty, and how many trials a verdict needs.

The Wilson score interval is used rather than the normal approximation because flaky
tests live at the edges: 0 or 3 failures in 1000 runs, where the normal interval collapses
to a point or dips below zero.
"""

from __future__ import annotations

import math
from collections import Counter

from pydantic import BaseModel

__all__ = ["Rate", "rates", "trials_to_detect", "wilson"]


def wilson(failures: int, runs: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at the default ``z``) for ``failures`` out of
    ``runs``; ``(0.0, 1.0)`` when there were no runs."""
    if runs < 0 or not 0 <= failures <= max(runs, 0):
        raise ValueError(f"need 0 <= failures <= runs, got {failures} of {runs}")
    if runs == 0:
        return 0.0, 1.0
    p = failures / runs
    z2 = z * z
    denominator = 1 + z2 / runs
    center = (p + z2 / (2 * runs)) / denominator
    half = z * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs * runs)) / denominator
    low = 0.0 if failures == 0 else max(0.0, center - half)
    high = 1.0 if failures == runs else min(1.0, center + half)
    return low, high


class Rate(BaseModel):
    """One test's failure count and rate over the runs, with its 95% Wilson interval."""

    test: str
    failures: int
    runs: int
    rate: float
    low: float
    high: float


def rates(per_run_failures: list[list[str]], runs: int) -> list[Rate]:
    """Per-test failure rates from each run's failing test ids (a test counts once per
    run). ``runs`` is the total number of runs, including any not listed. Sorted by rate,
    highest first, then by test id."""
    if runs < len(per_run_failures):
        raise ValueError(f"{len(per_run_failures)} runs listed but runs={runs}")
    counts: Counter[str] = Counter()
    for failed in per_run_failures:
        counts.update(set(failed))
    out = []
    for test, failures in counts.items():
        low, high = wilson(failures, runs)
        out.append(
            Rate(test=test, failures=failures, runs=runs, rate=failures / runs, low=low, high=high)
        )
    out.sort(key=lambda r: (-r.rate, r.test))
    return out


def trials_to_detect(rate_low: float, miss: float = 0.01, cap: int = 500) -> int:
    """The fewest trials ``k`` with ``(1 - rate_low) ** k <= miss``, at most ``cap``.

    If the failure's true rate on a bad commit is at least ``rate_low``, then ``k`` passing
    trials wrongly call that commit good with probability at most ``miss``. ``rate_low >= 1``
    gives 1; ``rate_low <= 0`` (nothing to lean on) gives ``cap``.
    """
    if not 0 < miss < 1:
        raise ValueError(f"miss must be between 0 and 1, got {miss}")
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if rate_low >= 1:
        return 1
    if rate_low <= 0:
        return cap
    log_keep, log_miss = math.log1p(-rate_low), math.log(miss)
    k = max(1, math.ceil(log_miss / log_keep))
    if k > cap:
        return cap
    while k > 1 and (k - 1) * log_keep <= log_miss:
        k -= 1
    while k < cap and k * log_keep > log_miss:
        k += 1
    return k
