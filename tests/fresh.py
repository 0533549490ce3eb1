"""Determinism across restarts: a function's result computed again in fresh interpreters.

Each interpreter gets its own ``PYTHONHASHSEED`` (0 turns string hashing's randomness off,
1 is another fixed order, and the test process has a random one), so a result that
depends on set order or ``hash()`` differs between them, as it would between a run and
its resume, though twice in one process it never does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

SEEDS = ("0", "1")

CALL = """
import importlib, json, sys
module, name = sys.argv[1].split(":")
args = json.load(sys.stdin)
print(json.dumps(getattr(importlib.import_module(module), name)(*args)))
"""


def in_fresh_processes(function: str, *args: Any) -> list[Any]:
    """``function`` (``"module:name"``) called with ``args`` (JSON) in one fresh
    interpreter per seed in :data:`SEEDS`: its JSON results, in that order."""
    results = []
    for seed in SEEDS:
        done = subprocess.run(
            [sys.executable, "-c", CALL, function],
            input=json.dumps(args),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    return results
