"""The package's layering, read from the source: the ledger imports only leaves.

Imports are found with ``ast`` over each file (those under ``TYPE_CHECKING`` and inside
functions included), not from ``sys.modules``, so a lazy or type-only import upward is
caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import orchestrator

PACKAGE = Path(orchestrator.__file__).parent

LEAVES = frozenset(
    {
        "orchestrator.errors",
        "orchestrator.codec",
        "orchestrator.clock",
        "orchestrator.ids",
        "orchestrator.budget",
        "orchestrator.signing",
    }
)
"""Modules anything may import: each imports nothing of the package but other leaves."""

TYPE_ONLY = {"orchestrator.errors": {"orchestrator.plan"}}
"""Known exceptions, for type checking only: PlanInvalid carries PlanProblems."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def imported(path: Path, name: str | None = None) -> set[str]:
    """The ``orchestrator`` modules that ``path`` (the module ``name``) imports; ``from
    orchestrator import x`` counts as ``orchestrator.x`` when x is a module, else as the
    package itself."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if is_module(candidate) else base)
    return {m for m in found if m == "orchestrator" or m.startswith("orchestrator.")}


def files(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).glob("*.py"))


LEDGER = files("ledger")


def test_the_ledger_and_the_leaves_are_found() -> None:
    names = {module_name(p) for p in LEDGER}
    assert {"orchestrator.ledger.events", "orchestrator.ledger.writer"} <= names
    assert all(is_module(leaf) for leaf in LEAVES)


@pytest.mark.parametrize("path", LEDGER, ids=lambda p: p.stem)
def test_ledger_modules_import_only_the_ledger_and_leaves(path: Path) -> None:
    importlib.import_module(module_name(path))
    upward = {
        m for m in imported(path) if m not in LEAVES and not m.startswith("orchestrator.ledger")
    }
    assert upward == set(), f"{module_name(path)} imports {sorted(upward)}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_only_leaves(leaf: str) -> None:
    path = (PACKAGE / Path(*leaf.split(".")[1:])).with_suffix(".py")
    upward = imported(path) - LEAVES - TYPE_ONLY.get(leaf, set())
    assert upward == set(), f"{leaf} imports {sorted(upward)}"


def test_the_check_sees_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    """Imports inside functions, under TYPE_CHECKING, relative, or through the package
    itself are all reported."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from orchestrator import signing, Budget\n"
        "from .. import plan\n"
        "if TYPE_CHECKING:\n"
        "    from orchestrator.runtime.engine import Runtime\n"
        "def f():\n"
        "    import orchestrator.trust\n"
    )
    assert imported(probe, "orchestrator.ledger.probe") == {
        "orchestrator.signing",
        "orchestrator",
        "orchestrator.plan",
        "orchestrator.runtime.engine",
        "orchestrator.trust",
    }


def test_every_public_error_is_defined_in_errors_py() -> None:
    """One tree: an exception class the package raises for callers to catch lives in
    errors.py (private helpers and control-flow signals are exempt)."""
    errors = ast.parse((PACKAGE / "errors.py").read_text())
    tree = {node.name for node in errors.body if isinstance(node, ast.ClassDef)}
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & (tree | {"Exception"}):
                stray.append(f"{module_name(path)}.{node.name}")
    assert stray == []
    documented = errors.body[0].value.value if isinstance(errors.body[0], ast.Expr) else ""
    assert isinstance(documented, str)
    assert [name for name in sorted(tree) if name not in documented] == []
