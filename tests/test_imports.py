"""What importing the package loads: no HTTP client, cloud or model SDK, compressor or
crypto library until a run uses one (they cost most of a short command's start-up); and
the lazy boundaries: ``import orchestrator`` loads none of its submodules nor pydantic
(public names load on first use), ``orchestrator --help`` loads the commands but not
what their bodies run (pydantic, asyncio, the runtime, the event models).

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


LIGHT = {
    "orchestrator",
    "orchestrator.errors",
    "orchestrator.lazy",
    "orchestrator.ledger",
    "orchestrator.ledger.head",
    "orchestrator.ledger.store",
    "orchestrator.runid",
    "orchestrator.sandbox",
    "orchestrator.sandbox.roots",
    "orchestrator.signing",
}
"""The package modules besides ``orchestrator.cli.*`` that ``--help`` may load: leaves
without pydantic."""

HELP = "import sys\nsys.argv = ['orchestrator', '--help']\nfrom orchestrator.cli import main\n"
HELP += "try:\n    main()\nexcept SystemExit:\n    pass"


def test_importing_the_package_loads_none_of_the_deferred_libraries() -> None:
    assert loaded_after("import orchestrator") & set(DEFERRED) == set()


def test_importing_the_package_loads_no_submodule_nor_pydantic_nor_asyncio() -> None:
    loaded = loaded_after("import orchestrator", whole=True)
    assert {m for m in loaded if m.startswith("orchestrator.")} == {"orchestrator.lazy"}
    assert {m.split(".")[0] for m in loaded} & {"pydantic", "pydantic_core", "asyncio"} == set()


def test_a_public_name_loads_its_module_on_first_use_and_is_that_module_s_object() -> None:
    check = (
        "import importlib, orchestrator\n"
        "homes = {n: m for m, names in orchestrator._HOMES.items() for n in names}\n"
        "assert set(homes) == set(orchestrator.__all__)\n"
        "from orchestrator import Plan\n"
        "assert 'orchestrator.plan' in sys.modules\n"
        "assert 'orchestrator.runtime.engine' not in sys.modules\n"
        "for name, home in homes.items():\n"
        "    assert getattr(orchestrator, name) is getattr(importlib.import_module(home), name)"
    )
    loaded_after(f"import sys\n{check}")


@pytest.mark.parametrize(
    ("package", "name"), [("orchestrator", "node"), ("orchestrator.sinks", "deliver")]
)
@pytest.mark.parametrize("first", ["import {package}.{name}", "from {package}.{name} import *"])
def test_a_public_name_that_is_also_a_submodule_s_stays_the_public_object(
    package: str, name: str, first: str
) -> None:
    check = f"import {package} as p, inspect\nassert inspect.isfunction(p.{name})\n"
    check += f"from {package} import {name}\n"
    check += f"assert {name} is sys.modules['{package}.{name}'].{name}"
    loaded_after(f"import sys\n{first.format(package=package, name=name)}\n{check}")


def test_a_run_configuration_does_not_load_delivery_nor_snapshots() -> None:
    loaded = loaded_after("import orchestrator.config", whole=True)
    assert {m.split(".")[0] for m in loaded} & {"tenacity", "asyncio"} == set()
    assert loaded & {"orchestrator.sinks.deliver", "orchestrator.sandbox.snapshot.store"} == set()


def test_clocks_do_not_load_asyncio() -> None:
    assert "asyncio" not in loaded_after("import orchestrator.clock")


@pytest.mark.parametrize(
    "module",
    ["orchestrator.sinks", "orchestrator.signing", "orchestrator.sandbox.snapshot.store"],
)
def test_the_modules_that_use_them_do_not_load_them_either(module: str) -> None:
    assert loaded_after(f"import {module}") & {"httpx", "cryptography", "zstandard"} == set()


def test_the_help_loads_no_command_module_nor_rich_nor_any_deferred_library() -> None:
    loaded = loaded_after(HELP, whole=True)
    assert {m for m in loaded if m.startswith("orchestrator.cli.")} == {
        "orchestrator.cli.commands",
        "orchestrator.cli.root",
    }
    assert {m.split(".")[0] for m in loaded} & (set(DEFERRED) - {"typer", "click"}) == set()
    assert "rich" not in {m.split(".")[0] for m in loaded}


def test_the_help_loads_none_of_what_the_commands_run() -> None:
    loaded = loaded_after(HELP, whole=True)
    ours = {
        m for m in loaded if m.startswith("orchestrator") and not m.startswith("orchestrator.cli")
    }
    assert ours - LIGHT == set()
    assert {m.split(".")[0] for m in loaded} & {"pydantic", "pydantic_core", "asyncio"} == set()


def test_a_command_s_help_loads_the_commands() -> None:
    run_help = HELP.replace("'--help'", "'run', '--help'")
    loaded = loaded_after(run_help, whole=True)
    assert {"orchestrator.cli.runs", "orchestrator.cli.hunt", "orchestrator.cli.plans"} <= loaded
    assert loaded & {"rich.live", "rich.progress_bar"} == set()
