"""The sandbox backends tests run on, each skipped where its binary is not installed.

Every test that starts a real gVisor or bubblewrap sandbox takes its backends from here:
``backends(...)`` as a parameter list, ``needs(...)`` as a mark for a test (or module)
that names its backend itself, ``require(...)`` inside a fixture that does.
"""

from __future__ import annotations

import shutil

import pytest

from orchestrator.sandbox.base import BackendName

BINARIES: dict[BackendName, str] = {"gvisor": "runsc", "bwrap": "bwrap"}


def missing(*names: BackendName) -> str | None:
    """Why these backends cannot all run here (whose binary is not installed), or None;
    ``local`` needs nothing."""
    reasons = [
        f"{name}: `{binary}` is not installed"
        for name in names
        if (binary := BINARIES.get(name)) is not None and shutil.which(binary) is None
    ]
    return "; ".join(reasons) or None


def backends(*names: BackendName) -> list[object]:
    """``names`` (by default gvisor and bwrap) as pytest params with those ids, each
    skipped where its binary is missing."""
    return [pytest.param(name, id=name, marks=needs(name)) for name in names or ("gvisor", "bwrap")]


def needs(*names: BackendName) -> pytest.MarkDecorator:
    """Skip unless every one of these backends can run here."""
    why = missing(*names)
    return pytest.mark.skipif(why is not None, reason=why or "")


def require(*names: BackendName) -> None:
    """Skip the calling test (or fixture) unless every one of these backends can run here."""
    why = missing(*names)
    if why is not None:
        pytest.skip(why)
