"""The in-sandbox rerun driver: one test command, many seeds, a fresh process per run.

:data:`DRIVER` is the source of a stdlib-only Python 3 script run inside the sandbox as
``python3 -c DRIVER SPEC`` (under the system ``python3`` even for JavaScript and Go
repositories, so it must not depend on the project's toolchain). For each seed, in order, it
starts the command in a new session, merges stdout and stderr into one pipe, kills the
whole process group at the timeout *and* after a normal exit (so a run's stray background
processes never leak into the next run), and prints one JSON line per run, flushed at once
so a driver killed part-way still reports what it finished. A command ``python`` that is
not on the run's ``PATH`` (a base system with only ``python3``, no venv) runs as the
driver's own interpreter.

Output is read from a pipe by a thread that keeps only a bounded tail, rather than spooled
to a file: the sandbox may have no writable filesystem outside a tmpfs of unknown size, and
a grandchild that escaped the process group and holds the pipe open cannot hang the driver
(the reader is abandoned after a short grace period).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from orchestrator.errors import ConfigError

__all__ = ["DRIVER", "TAIL_CHARS", "RunRecord", "command", "parse_driver_output", "spec"]

TAIL_CHARS = 4000

DRIVER = r"""
import json, os, shutil, signal, subprocess, sys, threading, time

TAIL = 4000
spec = json.loads(sys.argv[1])
base = dict(os.environ)
base.update(spec.get("env", {}))
seed_args = spec.get("seed_args", {})
timeout = float(spec.get("timeout", 600))
current = []


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def on_signal(signum, frame):
    for proc in current:
        kill_group(proc)
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def drain(stream, chunks):
    kept = 0
    while True:
        data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not data:
            return
        chunks.append(data)
        kept += len(data)
        while kept - len(chunks[0]) >= TAIL * 4:
            kept -= len(chunks.pop(0))


for seed in spec["seeds"]:
    env = dict(base)
    for name in spec.get("seed_env", []):
        env[name] = str(seed)
    argv = list(spec["argv"]) + list(seed_args.get(str(seed), []))
    if argv[0] == "python" and shutil.which("python", path=env.get("PATH")) is None:
        argv[0] = sys.executable  # a base system with only python3
    chunks = []
    timed_out = False
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        code = 127
        chunks.append(("driver: cannot run %r: %s" % (argv[0], exc)).encode())
    else:
        current.append(proc)
        reader = threading.Thread(target=drain, args=(proc.stdout, chunks), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            proc.wait()
            code = -9
        kill_group(proc)
        reader.join(2.0)
        current.remove(proc)
    duration = time.monotonic() - start
    tail = b"".join(chunks)[-TAIL * 4 :].decode("utf-8", "replace")[-TAIL:]
    record = {
        "seed": seed,
        "code": code,
        "duration": round(duration, 6),
        "output_tail": tail,
        "timed_out": timed_out,
    }
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
"""


class RunRecord(BaseModel):
    """One run of the command: its seed, exit code (-9 on timeout), wall time in seconds
    and the last :data:`TAIL_CHARS` characters of its merged output."""

    seed: int
    code: int
    duration: float
    output_tail: str
    timed_out: bool = False


def spec(
    argv: Sequence[str],
    env: Mapping[str, str],
    seed_env: Sequence[str],
    seeds: Sequence[int],
    timeout: float,
    seed_args_fn: Callable[[int], list[str]] | None = None,
) -> str:
    """The JSON spec for :data:`DRIVER`: run ``argv`` once per seed with ``env`` added, each
    ``seed_env`` variable set to the seed and ``seed_args_fn(seed)`` appended, each run
    limited to ``timeout`` seconds."""
    if not argv:
        raise ConfigError("the test command is empty")
    if timeout <= 0:
        raise ConfigError(f"the per-run timeout must be positive, got {timeout}")
    extra = {str(s): list(seed_args_fn(s)) for s in seeds} if seed_args_fn else {}
    body = {
        "argv": list(argv),
        "env": dict(env),
        "seed_env": list(seed_env),
        "seed_args": {k: v for k, v in extra.items() if v},
        "seeds": list(seeds),
        "timeout": float(timeout),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def command(spec_json: str, python: str = "python3") -> list[str]:
    """The argv that runs :data:`DRIVER` on ``spec_json`` inside the sandbox."""
    return [python, "-c", DRIVER, spec_json]


def parse_driver_output(stdout: str) -> list[RunRecord]:
    """The run records in the driver's stdout, in order; other lines are ignored."""
    records: list[RunRecord] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            records.append(RunRecord.model_validate_json(line))
        except ValidationError:
            continue
    return records
