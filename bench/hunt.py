"""Benchmark: a whole flaky hunt from the command line, intake to pull-request branch.

The fixture is the hunt tests' Python project (tests/flaky_repos.py) with a suite made
to take ``--test-seconds`` per run (default 0.4 s): a unittest case that fails for about
one PYTHONHASHSEED in ten, introduced at commit 17 of 30. For each sandbox backend the
script runs ``orchestrator flaky-hunt`` in a fresh home and prints the wall time, the
phases (from ledger timestamps: intake, reruns, bisection, repro to PR) and whether the
verdict is the fixture's truth (the test, the culprit commit, a branch written).

    uv run python bench/hunt.py [--runs 200] [--sandbox bwrap --sandbox gvisor]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.flaky_repos import git, python_repo

from orchestrator import Runtime
from orchestrator.clock import parse_iso
from orchestrator.ledger.events import NodeDispatched, NodeSucceeded, decode

PHASES = (
    ("intake", "repo-fetch", "repo-intake"),
    ("reruns", "rerun-probe", "flake-report"),
    ("bisect", "bisector", "bisector"),
    ("repro to PR", "repro-builder", "pr-open"),
)


def phases(home: Path) -> dict[str, float]:
    """Seconds from each phase's first dispatch to its last node's success."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    with Runtime(home=home) as rt:
        run = rt.store.runs()[-1].run_id
        for stored in rt.store.read(run):
            event = decode(stored.body)
            base = str(getattr(event, "node", "")).partition("[")[0]
            at = parse_iso(event.ts).timestamp()
            if isinstance(event, NodeDispatched):
                first.setdefault(base, at)
            elif isinstance(event, NodeSucceeded):
                last[base] = at
    out = {}
    for name, start, end in PHASES:
        if start in first and end in last:
            out[name] = last[end] - first[start]
    return out


def hunt(repo: Path, sandbox: str, runs: int, work: Path) -> dict[str, object]:
    home = work / f"home-{sandbox}"
    home.mkdir()
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "--home",
        str(home),
        "flaky-hunt",
        "--repo",
        str(repo),
        "--test",
        "python -m unittest",
        "--runs",
        str(runs),
        "--seed",
        "7",
        "--sandbox",
        sandbox,
        "-q",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    return {"code": done.returncode, "wall": wall, "out": done.stdout + done.stderr, "home": home}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--test-seconds", type=float, default=0.4)
    parser.add_argument("--sandbox", action="append", default=None)
    args = parser.parse_args()
    sandboxes = args.sandbox or ["bwrap", "gvisor"]
    print(
        f"load average {os.getloadavg()[0]:.1f}; {args.runs} runs of a "
        f"{args.test_seconds:.1f}-s suite; sandboxes {', '.join(sandboxes)}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-hunt-") as tmp:
        work = Path(tmp)
        fixture = python_repo(work, slow=max(0.0, args.test_seconds - 0.05))
        for sandbox in sandboxes:
            result = hunt(fixture.path, sandbox, args.runs, work)
            out = str(result["out"])
            branches = git(fixture.path, "branch", "--list", "orchestrator/*")
            found = fixture.culprit[:12] in out and fixture.test_id.rsplit(".", 1)[-1] in out
            verdict = "right" if found and branches else "WRONG"
            split = phases(Path(str(result["home"])))
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
            print(
                f"{sandbox:7} exit {result['code']}  wall {float(str(result['wall'])):.1f} s"
                f"  ({parts})  verdict {verdict}"
            )
            if verdict != "right" or result["code"] != 0:
                print("  " + "\n  ".join(out.strip().splitlines()[-15:]))
            for branch in branches.split():
                if branch.startswith("orchestrator/"):
                    git(fixture.path, "branch", "-D", branch)


if __name__ == "__main__":
    main()
