"""The hunt's findings in words, as soon as each is on the record: the measured rate,
the first failing commit and the repro. The CLI prints each when its node succeeds, and
all that is known when the run ends, whatever failed after."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.ledger.state import RunState

FINDINGS = ("flake-report", "bisector", "repro-builder")
"""The nodes whose outputs are the hunt's results, in the order they are found."""


def finding(node: str, outputs: dict[str, Any] | None) -> str | None:
    """What ``node`` found, in one line (the wording of the hunt's summary), or None."""
    if not outputs:
        return None
    if node == "flake-report":
        return _rate(outputs.get("report") or {})
    from orchestrator.workloads.flaky_hunt.pull_request import first_bad_line, repro_line

    if node == "bisector":
        found = outputs.get("bisected") or {}
        return first_bad_line(found.get("first_bad"), str(found.get("subject") or ""))
    if node == "repro-builder":
        repro = outputs.get("repro") or {}
        command = str(repro.get("command"))
        if repro.get("fails_on_bad"):
            return repro_line(command)
        return repro_line(str(repro.get("whole_command") or command), command)
    return None


def known(state: RunState) -> list[str]:
    """Every finding the run has made so far."""
    lines = []
    for node in FINDINGS:
        ns = state.nodes.get(node)
        line = None if ns is None or ns.status != "succeeded" else finding(node, ns.outputs)
        if line is not None:
            lines.append(line)
    return lines


def _rate(report: dict[str, Any]) -> str:
    target = report.get("target")
    if target is None:
        return f"no test failed in {report.get('runs')} runs"
    rate = next((r for r in report.get("rates", []) if r.get("test") == target), None)
    if rate is None:
        return f"flaky test: {target}"
    from orchestrator.workloads.flaky_hunt.pull_request import rate_line

    return rate_line(
        target, rate["failures"], rate["runs"], rate["rate"], rate["low"], rate["high"]
    )
