"""The public API as a type checker sees it: mypy (the project's strict settings) accepts
the uses in ``tests/typing/public_ok.py`` — a bare ``@node`` passed to ``plan.add``
among them, and the package found through its ``py.typed`` — and rejects the misuse in
``tests/typing/public_wrong.py`` with the expected message.

mypy runs from the project root so it shares the project's cache: warm after ``mypy``
has checked ``src/`` (as ``scripts/test`` does first), it takes a few seconds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).parent / "typing"

pytestmark = pytest.mark.timeout(600)  # a cold cache makes mypy check every dependency


def test_mypy_accepts_the_public_uses_and_rejects_a_plain_function() -> None:
    ok, wrong = (
        str((CASES / name).relative_to(ROOT)) for name in ("public_ok.py", "public_wrong.py")
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", ok, wrong],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=590,
    )
    errors = [line for line in done.stdout.splitlines() if re.search(r":\d+: error:", line)]
    assert done.returncode == 1, done.stdout + done.stderr
    assert not [e for e in errors if e.startswith(ok)], done.stdout
    (error,) = errors
    line = next(
        i
        for i, text in enumerate((ROOT / wrong).read_text().splitlines(), 1)
        if "plan.add(" in text
    )
    assert error.startswith(f'{wrong}:{line}: error: Argument 1 to "add" of "Plan"')
    assert error.endswith('expected "NodeSpec"  [arg-type]')
