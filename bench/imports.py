"""Benchmark: how long ``import orchestrator`` and ``orchestrator --help`` take.

Each command runs ``--rounds`` times (default 15) in a fresh interpreter, the commands
interleaved round by round so a busy machine weighs on all of them alike:

* ``python -c pass`` (bare interpreter start, the baseline);
* ``python -c "import orchestrator"`` (the library; its public names load on first use);
* ``from orchestrator import Plan, node`` and ``from orchestrator import Runtime`` (what a
  program defining, or running, a plan pays: no target, shown so the lazy package is not
  mistaken for a faster library);
* ``python -m orchestrator.cli --help`` (the command line);
* ``.venv/bin/orchestrator --help`` (the console script), when it is installed.

With ``--base DIR`` (another checkout, e.g. ``git archive main | tar -x -C DIR``) the
three orchestrator commands also run with ``PYTHONPATH=DIR/src``, in the same rounds, so
the two trees are compared side by side on the same load.

Bytecode: ``PYTHONDONTWRITEBYTECODE`` is dropped from their environment, and a first,
untimed run of each writes the ``.pyc`` files that the timed runs then read — as an
installed tool does (pip and uv compile on install). The report's first line says so and
gives the load average before and after, since a busy machine slows every figure.

Reported per command: median and minimum wall time, their difference over bare python,
and the median CPU time (user + system; steadier than wall time on a loaded machine);
for the library and the CLI also the target (wall time, bare start included) and OK or
MISS against the median.

    uv run python bench/imports.py [--rounds 15] [--base /tmp/main-checkout]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BARE = "python -c pass"
TARGETS = {"import orchestrator": 0.12, "orchestrator.cli --help": 0.2, "orchestrator --help": 0.2}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

Command = tuple[list[str], dict[str, str]]


def commands(base: Path | None) -> dict[str, Command]:
    """The commands timed, by label (``base:`` labels run the other checkout)."""
    python = sys.executable
    argvs = {
        "import orchestrator": [python, "-c", "import orchestrator"],
        "import Plan, node": [python, "-c", "from orchestrator import Plan, node"],
        "import Runtime": [python, "-c", "from orchestrator import Runtime"],
        "orchestrator.cli --help": [python, "-m", "orchestrator.cli", "--help"],
    }
    script = Path(python).parent / "orchestrator"
    if script.exists():
        argvs["orchestrator --help"] = [str(script), "--help"]
    found: dict[str, Command] = {BARE: ([python, "-c", "pass"], ENV)}
    found.update({label: (argv, ENV) for label, argv in argvs.items()})
    if base is not None:
        env = {**ENV, "PYTHONPATH": str(base / "src")}
        found.update({f"base: {label}": (argv, env) for label, argv in argvs.items()})
    return found


def run(command: Command) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command``; a failing command stops the bench."""
    argv, env = command
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--base", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    base = args.base.resolve() if args.base is not None else None
    if base is not None and not (base / "src" / "orchestrator").is_dir():
        parser.error(f"{base} has no src/orchestrator")
    load_before = os.getloadavg()
    timed = commands(base)
    walls: dict[str, list[float]] = {label: [] for label in timed}
    cpus: dict[str, list[float]] = {label: [] for label in timed}
    for command in timed.values():  # warm the file cache and .pyc files, untimed
        run(command)
    for _ in range(args.rounds):
        for label, command in timed.items():
            wall, cpu = run(command)
            walls[label].append(wall)
            cpus[label].append(cpu)

    bare_median, bare_min = statistics.median(walls[BARE]), min(walls[BARE])
    load = " ".join(f"{x:.2f}" for x in load_before) + " -> "
    load += " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.rounds} rounds, {sys.executable}" + (f", base {base}" if base else ""))
    print(f"bytecode: .pyc files warmed and read; load average (1, 5, 15 min) {load}")
    print(f"{'command':<32}{'median':>8}{'min':>8}{'+median':>9}{'+min':>8}{'cpu':>8}  target")
    for label, samples in walls.items():
        median, low = statistics.median(samples), min(samples)
        line = f"{label:<32}{median:8.3f}{low:8.3f}"
        line += (
            f"{'':>17}" if label == BARE else f"{median - bare_median:+9.3f}{low - bare_min:+8.3f}"
        )
        line += f"{statistics.median(cpus[label]):8.3f}"
        target = TARGETS.get(label.removeprefix("base: "))
        if target is not None:
            line += f"  <= {target:.2f} s {'OK' if median <= target else 'MISS'}"
        print(line)


if __name__ == "__main__":
    main()
