"""What importing the package loads: no HTTP client, cloud or model SDK, compressor or
crypto library until a run uses one (they cost most of a short command's start-up).

Each check runs in a fresh interpreter, so modules this test process already holds do
not hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DEFERRED = (
    "httpx",
    "boto3",
    "botocore",
    "openai",
    "anthropic",
    "zstandard",
    "cryptography",
    "rich",
    "typer",
    "click",
)
"""Top-level packages ``import orchestrator`` must not load."""


def loaded_after(code: str, *, whole: bool = False) -> set[str]:
    """The top-level packages (with ``whole``, the modules) in ``sys.modules`` after
    running ``code`` afresh."""
    names = "set(sys.modules)" if whole else "{m.split('.')[0] for m in sys.modules}"
    report = f"import json, sys; print(json.dumps(sorted({names})))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_package_loads_none_of_the_deferred_libraries() -> None:
    assert loaded_after("import orchestrator") & set(DEFERRED) == set()


@pytest.mark.parametrize(
    "module",
    ["orchestrator.sinks", "orchestrator.signing", "orchestrator.sandbox.snapshot.store"],
)
def test_the_modules_that_use_them_do_not_load_them_either(module: str) -> None:
    assert loaded_after(f"import {module}") & {"httpx", "cryptography", "zstandard"} == set()


def test_the_help_loads_no_http_cloud_model_or_crypto_library_nor_live_displays() -> None:
    help_ = "import sys\nsys.argv = ['orchestrator', '--help']\nfrom orchestrator.cli import main\n"
    help_ += "try:\n    main()\nexcept SystemExit:\n    pass"
    loaded = loaded_after(help_, whole=True)
    assert "orchestrator.cli.runs" in loaded  # the commands were registered
    assert {m.split(".")[0] for m in loaded} & (set(DEFERRED) - {"rich", "typer", "click"}) == set()
    assert loaded & {"rich.live", "rich.progress_bar"} == set()
