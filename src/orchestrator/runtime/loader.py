"""Load a Plan from ``FILE.py:ATTR`` or ``package.module:ATTR``.

Importing a plan runs the user's module code; whatever escapes it (an exception,
``SystemExit``, ``KeyboardInterrupt``) becomes a PlanLoadError naming the module, so a plan
that calls ``sys.exit(0)`` at import cannot end the command as if it had succeeded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from orchestrator.errors import PlanLoadError
from orchestrator.plan import Plan

MOVED = {
    "orchestrator.workloads.flaky:plan": "orchestrator.workloads.flaky_hunt:plan",
    "orchestrator.workloads.flaky:reviewed": "orchestrator.workloads.flaky_hunt:reviewed",
}
"""Plan refs that older versions recorded, and where those plans live now, so runs they
started still resume and replay."""


def plan_ref_of(plan: Plan) -> str:
    """The ref that loads ``plan`` again: the module-level name that holds it in the module
    that built it, as ``package.module:ATTR`` (``FILE.py:ATTR`` for a script or a file
    loaded by path); "" when no such name holds it (a plan built inside a function)."""
    module = sys.modules.get(plan.defined_in or "")
    if module is None:
        return ""
    attr = next((name for name, value in vars(module).items() if value is plan), None)
    if attr is None:
        return ""
    file = getattr(module, "__file__", None)
    by_path = module.__name__ == "__main__" or module.__name__.startswith("orchestrator_plan_")
    if by_path:
        return f"{Path(file).resolve()}:{attr}" if file else ""
    return f"{module.__name__}:{attr}"


def normalize_ref(ref: str) -> str:
    """A ref that still resolves from another working directory (files made absolute)."""
    target, sep, attr = ref.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).resolve()}:{attr}"
    return ref


def load_plan(ref: str) -> Plan:
    """Import the module or file named by ``ref`` and return its Plan attribute."""
    target, sep, attr = MOVED.get(ref, ref).rpartition(":")
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        raise PlanLoadError(
            f"cannot load plan {ref!a}: the reference is not UTF-8 text "
            "(the ledger records it); rename the file or module"
        ) from None
    if not sep or not target or not attr:
        raise PlanLoadError(
            f"cannot load plan {ref!r}: expected FILE.py:ATTR or package.module:ATTR, "
            "for example `plans/migrate.py:plan`"
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise PlanLoadError(f"cannot load plan {ref!r}: there is no file {target!r}")
        name = "orchestrator_plan_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise PlanLoadError(f"cannot load plan {ref!r}: {target!r} is not importable")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                del sys.modules[name]
                raise _escaped(ref, f"importing {target!r}", exc) from exc
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise _escaped(ref, f"importing module {target!r}", exc) from exc
    if not hasattr(module, attr):
        raise PlanLoadError(f"cannot load plan {ref!r}: {target!r} has no attribute {attr!r}")
    value = getattr(module, attr)
    if callable(value) and not isinstance(value, Plan):
        try:
            value = value()
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise _escaped(ref, f"calling {attr}()", exc) from exc
    if not isinstance(value, Plan):
        raise PlanLoadError(
            f"cannot load plan {ref!r}: {attr!r} is a {type(value).__name__}, not a Plan "
            "(build one with orchestrator.Plan)"
        )
    return value


def _escaped(ref: str, doing: str, exc: BaseException) -> PlanLoadError:
    """The error for user code that raised (or exited) while a plan was loaded."""
    if isinstance(exc, SystemExit):
        what = f"called exit({exc.code!r}); a plan module must define a plan, not exit"
    else:
        what = f"raised {type(exc).__name__}: {exc}"
    return PlanLoadError(f"cannot load plan {ref!r}: {doing} {what}")
