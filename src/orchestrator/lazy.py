"""Public names that a package's ``__init__`` imports on first use (PEP 562).

``__getattr__ = lazy_exports(__name__, {"pkg.module": ("Name", ...)})`` makes
``from pkg import Name`` load ``pkg.module`` only then, and keeps ``Name`` afterwards. The
package imports the same names under ``TYPE_CHECKING`` and assigns ``__getattr__`` only
when not type checking, so type checkers see every name and still reject unknown ones.
Where a name is also a submodule's (``orchestrator.node``, ``orchestrator.sinks.deliver``),
importing that submodule would set it on the package and hide the public object; the
package's class is swapped for one that keeps the public name instead, as the eager
``from pkg.node import node`` it replaces did.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any


class _LazyPackage(ModuleType):
    """A package whose public names win over its submodules of the same name."""

    _lazy_homes: dict[str, str]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._lazy_homes and value is sys.modules.get(f"{self.__name__}.{name}"):
            return  # the import system announcing the submodule: keep the public name
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._lazy_homes})


def lazy_exports(package: str, homes: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``, which serves the names in ``homes`` (module →
    names) from their modules on first use."""
    module = sys.modules[package]
    home_of = {name: home for home, names in homes.items() for name in names}
    module.__dict__["_lazy_homes"] = home_of
    module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        home = home_of.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        module.__dict__[name] = value
        return value

    return __getattr__
