"""Bisection that tolerates commits that do not build, for failures that are flaky.

Pure and async: the caller's ``probe`` checks out a commit, runs the test as many times as
the measured failure rate needs (see :func:`.stats.trials_to_detect`) and answers
``good``, ``bad`` or ``skip``. A ``bad`` is certain (the failure was seen); a
``good`` is right with the probability the caller chose, so every probe counts and no
commit is probed twice.

Skipped commits are handled like ``git bisect skip``: the next probe is the untested
commit nearest the midpoint (right, then left, alternating). When only skipped commits
separate the last good from the first bad, the answer is the set of candidates, not a guess.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, get_args

from pydantic import BaseModel

__all__ = ["BisectResult", "Probe", "Step", "Verdict", "bisect", "find_good"]

Verdict = Literal["good", "bad", "skip"]
Probe = Callable[[str], Awaitable[tuple[Verdict, int]]]
_VERDICTS = frozenset(get_args(Verdict))


class Step(BaseModel):
    """One probe: the commit, its verdict, the trials it used, and the search range
    ``lo``/``hi`` (indices into the searched list) before the probe."""

    commit: str
    verdict: Verdict
    trials: int
    lo: int
    hi: int


class BisectResult(BaseModel):
    """The first bad commit (None when skips hide it) and the last good one before it."""

    first_bad: str | None
    last_good: str | None
    steps: list[Step]
    skipped: list[str]
    message: str


async def _ask(probe: Probe, commit: str) -> tuple[Verdict, int]:
    verdict, trials = await probe(commit)
    if verdict not in _VERDICTS:
        raise ValueError(f"probe({commit!r}) returned verdict {verdict!r}")
    if trials < 0:
        raise ValueError(f"probe({commit!r}) reported {trials} trials")
    return verdict, trials


def _nearest(lo: int, hi: int, tested: set[int]) -> int | None:
    """The untested index strictly inside (lo, hi) nearest the midpoint, right first."""
    mid = (lo + hi) // 2
    for offset in range(hi - lo):
        for index in (mid + offset, mid - offset) if offset else (mid,):
            if lo < index < hi and index not in tested:
                return index
    return None


async def bisect(commits: list[str], probe: Probe) -> BisectResult:
    """Find the first bad commit in ``commits`` (oldest to newest; the first is known good,
    the last known bad, neither is probed) with about log2(len) probes."""
    if len(commits) < 2:
        raise ValueError("bisect needs at least a good and a bad commit")
    lo, hi = 0, len(commits) - 1
    steps: list[Step] = []
    skipped: set[int] = set()
    while (index := _nearest(lo, hi, skipped)) is not None:
        verdict, trials = await _ask(probe, commits[index])
        steps.append(Step(commit=commits[index], verdict=verdict, trials=trials, lo=lo, hi=hi))
        if verdict == "good":
            lo = index
        elif verdict == "bad":
            hi = index
        else:
            skipped.add(index)
    skipped_commits = [commits[i] for i in sorted(skipped)]
    if hi - lo == 1:
        return BisectResult(
            first_bad=commits[hi],
            last_good=commits[lo],
            steps=steps,
            skipped=skipped_commits,
            message=f"{commits[hi]} is the first bad commit (last good: {commits[lo]})",
        )
    candidates = [commits[i] for i in range(lo + 1, hi + 1)]
    return BisectResult(
        first_bad=None,
        last_good=commits[lo],
        steps=steps,
        skipped=skipped_commits,
        message=(
            "only skipped commits are left to test; the first bad commit is one of "
            + ", ".join(candidates)
        ),
    )


async def find_good(history: list[str], probe: Probe) -> tuple[str | None, list[Step]]:
    """Step back from a bad commit to a good ancestor, 1, 2, 4, 8, ... commits back and
    then the root, and return it (None when even the root is bad or skipped).

    ``history`` is newest to oldest, starting with the bad commit's parent. ``lo``/``hi``
    of each step are indices into it: the nearest commit not known bad, and the root. The
    oldest ``bad`` step, if any, is a tighter bad end for the bisection that follows.
    """
    steps: list[Step] = []
    if not history:
        return None, steps
    root = len(history) - 1
    indices: list[int] = []
    distance = 1
    while distance - 1 < root:
        indices.append(distance - 1)
        distance *= 2
    indices.append(root)
    newest_unknown = 0
    for index in indices:
        verdict, trials = await _ask(probe, history[index])
        steps.append(
            Step(commit=history[index], verdict=verdict, trials=trials, lo=newest_unknown, hi=root)
        )
        if verdict == "good":
            return history[index], steps
        if verdict == "bad":
            newest_unknown = index + 1
    return None, steps
