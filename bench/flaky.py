"""Benchmark: 1,000 reruns of a fast flaky test, fanned out over sandboxes vs one by one.

The fixture is the hunt tests' Python project (tests/flaky_repos.py): a unittest case
that fails for about one PYTHONHASHSEED in ten. Three figures, side by side in one run
(fsync and CPU noise on this machine swing, so compare only within a run):

* host: the rerun driver runs the 1,000 processes one after another on the host, no
  sandbox (the floor: what the test itself costs);
* sequential: the hunt's rerun phase with one batch of 1,000 in one sandbox;
* parallel: the same phase fanned out as batches of 25 (40 sandboxes, all dispatched at
  once, as many running as the machine has cores to give).

Sandbox overhead per run = (sequential - host) / 1,000; speed-up = sequential / parallel.
Both orchestrated phases are measured from the first rerun batch's dispatch to the last
one's success, from ledger timestamps.

    uv run python bench/flaky.py [--runs 1000] [--sandbox bwrap]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.flaky_repos import python_repo

from orchestrator import Plan, RunConfig, Runtime
from orchestrator.clock import parse_iso
from orchestrator.ledger.events import NodeDispatched, NodeSucceeded, decode
from orchestrator.workloads.flaky_hunt import rerun_driver, rerun_stage
from orchestrator.workloads.flaky_hunt.ports import HuntInputs

TEST = "python -m unittest tests.test_calc.TestRegistry"


def rerun_plan() -> Plan:
    """The hunt's plan up to the rerun report (no bisection)."""
    plan = Plan("flaky-reruns", inputs=HuntInputs)
    rerun_stage(plan, max_batches=1000)
    return plan


async def phase(home: Path, repo: Path, runs: int, batch: int, sandbox: str) -> tuple[float, dict]:
    plan = rerun_plan()
    inputs = {
        "repo": str(repo),
        "test": TEST,
        "runs": runs,
        "batch": batch,
        "workdir": str(home / "hunt"),
        "seed": 7,
    }
    with Runtime(home=home) as rt:
        state = await rt.start(plan, inputs, RunConfig(sandbox=sandbox))  # type: ignore[arg-type]
        assert state.status == "succeeded", state.summary
        events = [decode(r.body) for r in rt.store.read(state.run_id)]
    starts = [
        parse_iso(e.ts)
        for e in events
        if isinstance(e, NodeDispatched) and e.node.startswith(("rerun-probe", "flake-rerunner"))
    ]
    ends = [
        parse_iso(e.ts)
        for e in events
        if isinstance(e, NodeSucceeded) and e.node.startswith(("rerun-probe", "flake-rerunner"))
    ]
    report = state.nodes["flake-report"].outputs
    assert report is not None
    return (max(ends) - min(starts)).total_seconds(), report["report"]


def host_floor(repo: Path, runs: int) -> float:
    """The same runs, one after another, on the host with no sandbox: the same interpreter
    the sandbox's venv copies (/usr/bin/python3), called directly, with the same env."""
    spec = rerun_driver.spec(
        ["/usr/bin/python3", *TEST.split()[1:]],
        {"PYTHONDONTWRITEBYTECODE": "1", "CI": "1"},
        ["PYTHONHASHSEED"],
        list(range(1, runs + 1)),
        60.0,
    )
    started = time.perf_counter()
    subprocess.run(
        ["/usr/bin/python3", "-c", rerun_driver.DRIVER, spec],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--sandbox", default="bwrap")
    args = parser.parse_args()
    runs = args.runs
    with tempfile.TemporaryDirectory(prefix="bench-flaky-") as scratch:
        root = Path(scratch)
        fixture = python_repo(root, commits=20, culprit=5)
        host = host_floor(fixture.path, runs)
        sequential, seq_report = asyncio.run(
            phase(root / "seq", fixture.path, runs, runs, args.sandbox)
        )
        parallel, par_report = asyncio.run(
            phase(root / "par", fixture.path, runs, 25, args.sandbox)
        )
    rate = par_report["rates"][0] if par_report["rates"] else None
    print(f"{runs} reruns of one fast flaky unittest ({args.sandbox}, {os.cpu_count()} cores)")
    for label, seconds in (
        ("host, one after another, no sandbox", host),
        ("one sandbox, one after another", sequential),
        (f"{-(-runs // 25)} sandboxes x 25 runs, in parallel", parallel),
    ):
        print(f"  {label:<38}: {seconds:7.2f} s  ({seconds / runs * 1000:.1f} ms/run)")
    print(f"  {'sandbox overhead per run':<38}: {(sequential - host) / runs * 1000:7.2f} ms")
    print(f"  {'speed-up of the fan-out':<38}: {sequential / parallel:7.2f}x")
    if rate:
        print(
            f"  measured: {rate['failures']}/{rate['runs']} failed = {rate['rate']:.1%} "
            f"(95% CI {rate['low']:.1%} to {rate['high']:.1%}); the fixture's true rate is 10%"
        )
    print(f"  sequential phase saw {seq_report['failures']} failures (same seeds)")


if __name__ == "__main__":
    main()
