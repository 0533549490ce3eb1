"""The content of a flaky-test pull request, made from plain data.

Everything here is a pure function of :class:`HuntFacts`: no clock, no randomness, no
environment, so a replayed run writes byte-identical text. The facts come from the
repository under test and are not trusted: commit subjects, test ids and logs are put
in code spans or fences (so ``@mentions`` and ``#refs`` in them ping nobody and their
Markdown does nothing), and the reproduction script runs the command from a quoted
string, never pasted into the script's own code.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata

from pydantic import BaseModel, Field, model_validator

from orchestrator.agents import runners

__all__ = [
    "BRANCH_PREFIX",
    "HuntFacts",
    "branch_name",
    "description",
    "first_bad_line",
    "rate_line",
    "repro_line",
    "repro_path",
    "repro_script",
    "title",
    "wilson_interval",
]

BRANCH_PREFIX = "orchestrator/flaky-"
SLUG_LIMIT = 40
TITLE_LIMIT = 120
BODY_LIMIT = 60_000
"""GitHub refuses a body over 65,536 characters; this leaves room for markers."""
DIFF_LIMIT = 30_000
DIFFSTAT_LIMIT = 4_000
LOG_LIMIT = 12_000
Z95 = 1.959963984540054


class HuntFacts(BaseModel):
    """Everything the hunt learned about one flaky test.

    Rates are fractions in [0, 1]: ``rate`` is the measured failure rate before any fix
    (``failures`` of ``runs``), ``low``/``high`` its 95% confidence interval.
    ``miss_chance`` is the bisection's stated bound on calling a bad commit good.
    ``repro_seed`` is the seed the repro pins (if any) and ``fails_every_run`` whether
    with it the test failed on every try at the first failing commit;
    ``unconfirmed_repro`` the command that was not confirmed to fail there (``repro`` is
    then the whole measured command, never an unconfirmed one-test command); ``review_gate``
    whether a person reviews the pull request before it is published.
    """

    repo: str
    test: str = Field(min_length=1)
    runner: str
    runs: int = Field(gt=0)
    failures: int = Field(ge=0)
    rate: float = Field(ge=0, le=1)
    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)
    first_bad: str | None = None
    first_bad_subject: str = ""
    first_bad_diffstat: str = ""
    parent: str | None = None
    repro: str = Field(min_length=1)
    repro_seed: int | None = None
    fails_every_run: bool = False
    unconfirmed_repro: str | None = None
    trials_per_commit: int = Field(gt=0)
    miss_chance: float = Field(gt=0, lt=1)
    fix_diff: str | None = None
    fix_verified: bool = False
    rate_after: tuple[int, int] | None = None
    bisect_log: list[str] = Field(default_factory=list)
    review_gate: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> HuntFacts:
        if self.failures > self.runs:
            raise ValueError(f"failures ({self.failures}) exceed runs ({self.runs})")
        if not self.low <= self.high:
            raise ValueError(f"the interval is upside down: low {self.low} > high {self.high}")
        if self.rate_after is not None:
            failed, ran = self.rate_after
            if ran <= 0 or not 0 <= failed <= ran:
                raise ValueError(f"rate_after must be (failures, runs), not {self.rate_after}")
        return self


def rate_line(test: str, failures: int, runs: int, rate: float, low: float, high: float) -> str:
    """The summary's line on the measured failure rate of ``test`` and its 95% interval."""
    return (
        f"flaky test: {test} ({failures}/{runs} runs failed, "
        f"{rate:.1%}, 95% CI {low:.1%} to {high:.1%})"
    )


def first_bad_line(first_bad: str | None, subject: str) -> str:
    """The summary's line on the first failing commit (``not found`` when there is none)."""
    return f"first failing commit: {first_bad or 'not found'} {subject}"


def repro_line(repro: str, unconfirmed: str | None = None) -> str:
    """The summary's line on how to reproduce: ``repro`` when it was confirmed to fail on
    the first failing commit (``unconfirmed`` None), else that no repro was confirmed."""
    if unconfirmed is None:
        return f"reproduce: {repro}"
    unseen = "not seen failing on the first failing commit"
    if unconfirmed != repro:
        return (
            f"reproduce: no single-test repro confirmed ({unseen}: {unconfirmed}); "
            f"run the whole measured command instead: {repro}"
        )
    return f"reproduce: not confirmed ({unseen}): {repro}"


# --------------------------------------------------------------------------- names


def branch_name(test: str) -> str:
    """``orchestrator/flaky-<slug>-<8 hex>``: a readable slug of the test id (``[a-z0-9-]``,
    at most 40 characters) and the first 8 hex digits of the id's SHA-256, so two tests
    whose slugs agree still get different branches."""
    return f"{BRANCH_PREFIX}{_slug(test)}"


def repro_path(test: str) -> str:
    """Where on the branch the reproduction script for ``test`` goes:
    ``flaky-repro/flaky-<slug>-<8 hex>.sh``, named like :func:`branch_name`."""
    return f"flaky-repro/flaky-{_slug(test)}.sh"


def _slug(test: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", test).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    words = words[:SLUG_LIMIT].rstrip("-")
    digest = hashlib.sha256(test.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{words}-{digest}" if words else digest


# --------------------------------------------------------------------------- title


def title(f: HuntFacts) -> str:
    """One line: what the pull request does for which test."""
    if f.fix_diff is not None and f.fix_verified:
        head = "Fix flaky test"
    elif f.fix_diff is not None:
        head = "Proposed fix for flaky test"
    else:
        head = "Flaky test"
    tail = f" (fails {f.failures}/{f.runs}"
    tail += f", since {_short(f.first_bad)})" if f.first_bad else ")"
    room = TITLE_LIMIT - len(head) - len(tail) - 1
    return f"{head} {_clip(_one_line(f.test), max(room, 20))}{tail}"


# --------------------------------------------------------------------------- description


def description(f: HuntFacts, *, script_path: str | None = None) -> str:
    """The pull request's Markdown body.

    Sections: summary; first failing commit; flake rate before (and after a fix); how
    to reproduce (the command, and the script at ``script_path``, by default
    :func:`repro_path`); bisection (trials per commit, the stated bound on calling a
    bad commit good, the log); and the fix, or a note that a person decides.
    """
    path = script_path if script_path is not None else repro_path(f.test)
    parts = [
        _summary(f),
        _first_bad(f),
        _rates(f),
        _reproduce(f, path),
        _bisection(f),
        _fix(f),
        "---\n_Opened by the Orchestrator's flaky-test hunt. Nothing is merged without a "
        "person's review._\n",
    ]
    body = "\n".join(parts)
    if len(body) > BODY_LIMIT:
        body = body[: BODY_LIMIT - 80] + "\n\n_(description cut to fit GitHub's limit)_\n"
    return body


def _summary(f: HuntFacts) -> str:
    lines = [
        "## Summary",
        "",
        f"The test {_code(f.test)} in {_code(f.repo)} is flaky: run with "
        f"{_code(f.runner)}, it failed in {f.failures} of {f.runs} runs "
        f"({_pct(f.rate)}; 95% CI {_pct(f.low)} to {_pct(f.high)}).",
    ]
    if f.first_bad:
        lines.append(
            f"Bisection found the first failing commit: {_code(_short(f.first_bad))} "
            f"({_code(f.first_bad_subject or '(no subject)')})."
        )
    else:
        lines.append("Bisection did not isolate a first failing commit.")
    if f.fix_diff is None:
        lines.append("No fix is proposed; this pull request documents how to reproduce it.")
    elif f.fix_verified and f.rate_after is not None:
        failed, ran = f.rate_after
        lines.append(
            f"This pull request proposes a fix; with it the test failed {failed}/{ran} runs."
        )
    else:
        lines.append("This pull request proposes a fix that has not been verified.")
    return "\n".join(lines) + "\n"


def _first_bad(f: HuntFacts) -> str:
    lines = ["## First failing commit", ""]
    if not f.first_bad:
        lines.append(
            "Not found: the test failed at every commit tried, or at none, so bisection "
            "could not point at one."
        )
        return "\n".join(lines) + "\n"
    lines += [
        f"- Commit: {_code(f.first_bad)}",
        f"- Subject: {_code(f.first_bad_subject or '(no subject)')}",
        f"- Parent (last good): {_code(f.parent) if f.parent else 'none (a root commit)'}",
    ]
    if f.first_bad_diffstat.strip():
        lines += ["", _fence(_clip_block(f.first_bad_diffstat.rstrip(), DIFFSTAT_LIMIT))]
    return "\n".join(lines) + "\n"


def _rates(f: HuntFacts) -> str:
    lines = [
        "## Flake rate",
        "",
        f"- Before: {_ratio(f.failures, f.runs, f.rate)} (95% CI {_pct(f.low)} to {_pct(f.high)})",
    ]
    if f.fix_diff is not None and f.rate_after is not None:
        failed, ran = f.rate_after
        low, high = wilson_interval(failed, ran)
        lines.append(
            f"- After the fix: {_ratio(failed, ran, failed / ran)} "
            f"(95% CI {_pct(low)} to {_pct(high)})"
        )
    elif f.fix_diff is not None:
        lines.append("- After the fix: not measured")
    return "\n".join(lines) + "\n"


def _reproduce(f: HuntFacts, path: str) -> str:
    return (
        "\n".join(
            [
                "## How to reproduce",
                "",
                _run_what(f),
                "",
                _fence(f.repro, "sh"),
                "",
                _how_often(f, path),
                "",
                _fence(f"sh {_sh_word(path)}", "sh"),
            ]
        )
        + "\n"
    )


def _run_what(f: HuntFacts) -> str:
    if f.unconfirmed_repro is None:
        return "From the repository's root, run the test:"
    if f.unconfirmed_repro != f.repro:
        return (
            "No single-test command was confirmed: "
            f"{_code(f.unconfirmed_repro)} did not fail at the first failing commit (the "
            "failure may need the other tests). From the repository's root, run the whole "
            "measured command:"
        )
    return (
        "Not confirmed: this command did not fail at the first failing commit. From the "
        "repository's root, run:"
    )


def _how_often(f: HuntFacts, path: str) -> str:
    script = (
        f"The script {_code(path)} runs it up to {f.trials_per_commit} times and exits "
        "non-zero at the first failure:"
    )
    if f.fails_every_run and f.repro_seed is not None:
        return (
            f"The command pins the seed {f.repro_seed}, with which the test failed on every "
            "try at the first failing commit: it is deterministic, one run reproduces the "
            f"failure. With other seeds it fails about {_pct(f.rate)} of the time. " + script
        )
    odds = "one run usually passes" if f.rate < 0.5 else "a single run may pass"
    return f"It fails about {_pct(f.rate)} of the time, so {odds}. " + script


def _bisection(f: HuntFacts) -> str:
    n = f.trials_per_commit
    lines = [
        "## Bisection",
        "",
        f"Each commit was run {n} times and called good only if every run passed. A "
        "flaky failure can pass every run by chance, so the number of runs was chosen to "
        f"keep the chance of calling a bad commit good at ≤{_pct(f.miss_chance)}.",
    ]
    if 0 < f.rate < 1:
        chance = (1 - f.rate) ** n
        note = (
            f"At the measured rate of {_pct(f.rate)}, a bad commit passes all {n} runs "
            f"with probability {_pct(chance)}"
        )
        if chance > f.miss_chance:
            note += f", above the stated {_pct(f.miss_chance)}: treat the result with care"
        lines.append(note + ".")
    if f.bisect_log:
        log = _clip_block("\n".join(_one_line(line) for line in f.bisect_log), LOG_LIMIT)
        lines += [
            "",
            "<details>",
            f"<summary>Bisection log ({len(f.bisect_log)} lines)</summary>",
            "",
            _fence(log),
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def _fix(f: HuntFacts) -> str:
    if f.fix_diff is None:
        gate = ": a person decides at the review gate" if f.review_gate else ""
        return f"## Fix\n\nNo fix proposed{gate}.\n"
    lines = ["## Fix", ""]
    if f.fix_verified and f.rate_after is not None:
        failed, ran = f.rate_after
        lines.append(f"Verified: with this change the test failed {failed}/{ran} runs.")
    elif f.fix_verified:
        lines.append("Verified by the hunt.")
    else:
        gate = "; a person decides at the review gate" if f.review_gate else ""
        lines.append(f"Not verified: review it with care{gate}.")
    diff = _clip_block(f.fix_diff.rstrip(), DIFF_LIMIT, "the full change is on this branch")
    lines += ["", _fence(diff, "diff")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- script


def repro_script(f: HuntFacts) -> str:
    """A POSIX ``sh`` script that runs the reproduction command until it fails.

    It runs ``f.repro`` up to ``f.trials_per_commit`` times (or as many as its first
    argument says), from the root of the git work tree the script is in, if any. It exits
    with the command's status at the first failure (the flake reproduced), and 0 if every
    run passed. The command is kept in a single-quoted variable and run with ``sh -c``.
    """
    n = f.trials_per_commit
    facts = [
        f"Reproduces the flaky test {f.test}",
        f"in {f.repo}, run with {f.runner}.",
        "",
        f"Measured before any fix: failed in {f.failures} of {f.runs} runs",
        f"({_ratio(f.failures, f.runs, f.rate)}, 95% CI {_pct(f.low)} to {_pct(f.high)}).",
    ]
    if f.first_bad:
        facts += [
            f"First failing commit: {f.first_bad}",
            f"  {f.first_bad_subject}",
            f"Last good commit: {f.parent or 'none (a root commit)'}",
        ]
    facts += [
        "",
        *(
            [
                f"The command pins the seed {f.repro_seed}, with which the test failed on",
                "every try at the first failing commit: one run should reproduce it. Still,",
                "this runs the command up to N times (default",
            ]
            if f.fails_every_run and f.repro_seed is not None
            else ["One run usually passes, so this runs the command up to N times (default"]
        ),
        f"{n}, as many as each bisection step used; or the first argument). If a bad",
        f"commit fails at the measured rate, {n} runs all pass with probability",
        f"about {_pct((1 - f.rate) ** n) if f.rate < 1 else '0%'}.",
        "",
        "Exit status: the failing run's (non-zero) when the failure reproduces;",
        "0 when all N runs passed (not reproduced); 2 when the command cannot run",
        "(not found, or the tests could not be collected: import error, missing runner).",
    ]
    comment = "\n".join(f"# {_one_line(line)}".rstrip() for line in facts)
    return f"""#!/bin/sh
{comment}
set -eu

REPRO_COMMAND={_sh_quote(f.repro)}
NOT_RUN={_sh_quote(runners.not_run_pattern(f.runner))}
TRIALS="${{1:-{n}}}"
case "$TRIALS" in
    ''|*[!0-9]*) echo "usage: $0 [TRIALS]  (a number of runs, default {n})" >&2; exit 2 ;;
esac

# run from the root of the repository this script is in, if it is in one
here=$(dirname "$0")
if root=$(cd "$here" 2>/dev/null && git rev-parse --show-toplevel 2>/dev/null); then
    cd "$root"
fi

output=$(mktemp)
trap 'rm -f "$output"' EXIT
i=0
while [ "$i" -lt "$TRIALS" ]; do
    i=$((i + 1))
    echo "run $i of $TRIALS: $REPRO_COMMAND" >&2
    status=0
    /bin/sh -c "$REPRO_COMMAND" >"$output" 2>&1 || status=$?
    cat "$output" >&2
    # the test itself failing is a reproduction; a command that never reached it is not
    not_run=""
    if [ "$status" -eq 126 ] || [ "$status" -eq 127 ]; then
        not_run="command not found"
    elif [ "$status" -ne 0 ] && grep -Eq -- "$NOT_RUN" "$output"; then
        not_run=$(grep -E -- "$NOT_RUN" "$output" | tail -n 1)
    elif [ "$status" -eq 0 ] && grep -Eq -- "^Ran 0 tests|NO TESTS RAN" "$output"; then
        not_run="no tests ran"
    fi
    if [ -n "$not_run" ]; then
        echo "could not run (exit status $status): $not_run" >&2
        echo "the test was not reached: is the runner installed, with the dependencies?" >&2
        exit 2
    fi
    if [ "$status" -ne 0 ]; then
        echo "reproduced: run $i of $TRIALS failed (exit status $status)" >&2
        exit "$status"
    fi
done
echo "not reproduced: all $TRIALS runs passed" >&2
exit 0
"""


# --------------------------------------------------------------------------- statistics


def wilson_interval(failures: int, runs: int) -> tuple[float, float]:
    """The 95% Wilson score interval for ``failures`` out of ``runs`` (``(0, 1)`` if none)."""
    if runs <= 0:
        return 0.0, 1.0
    p = failures / runs
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * runs)) / (1 + z2 / runs)
    half = Z95 * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs * runs)) / (1 + z2 / runs)
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- formatting


def _pct(fraction: float) -> str:
    """A fraction as a percentage with three significant digits: 0.035 → ``3.5%``."""
    value = fraction * 100
    if value == 0 or not math.isfinite(value):
        return "0%" if value == 0 else f"{value}%"
    decimals = min(6, max(0, 2 - math.floor(math.log10(abs(value)))))
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def _ratio(failures: int, runs: int, rate: float) -> str:
    return f"{failures}/{runs} = {_pct(rate)}"


def _short(sha: str) -> str:
    return sha[:12]


def _one_line(text: str) -> str:
    """``text`` with control characters (newlines too) made into spaces."""
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text).strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_block(text: str, limit: int, where: str = "") -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit("\n", 1)[0]
    return f"{cut}\n… (cut at {limit} characters{'; ' + where if where else ''})"


def _code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    text = _one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(text: str, info: str = "") -> str:
    """``text`` in a fenced code block longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _sh_word(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else _sh_quote(text)
