"""A run's plan source: stored with the run at start, loaded again for ``replay --recorded``.

The file a plan reference names (``FILE.py:ATTR``, or the module file of
``package.module:ATTR``) is stored content-addressed under the run in its object store,
``runs/RUN/sources/SHA256``, and a ``PlanSourceRecorded`` event right after RunStarted
holds its name and digest. Only that one file is kept: what it imports comes from the
environment replay runs in.

Rejected alternative: the shared ``blobs/`` area. Garbage collection keeps only what a
checkpoint manifest names, and manifests (signed, fixed format) do not name sources;
a key under the run is left alone by collection and still sits beside the checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib
import linecache
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import (
    CorruptObject,
    ObjectMissing,
    PlanLoadError,
    RunStateError,
    StorageError,
)
from orchestrator.plan import Plan
from orchestrator.storage.objects import ObjectStore

_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class PlanSource:
    """The plan module's file as it was when the run started."""

    path: str
    """The file's name (``plan.py``) or, for a module reference, its path in its package
    (``pkg/plans.py``): never a host path."""
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def source_key(run_id: str, digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest (64 lowercase hex digits)")
    return f"runs/{run_id}/sources/{digest}"


def read_source(plan_ref: str) -> PlanSource | None:
    """The file ``plan_ref`` names, as it is now; None when there is none to read (no
    reference, a module without a source file)."""
    target, sep, _ = plan_ref.rpartition(":")
    if not sep or not target:
        return None
    if target.endswith(".py"):
        file = Path(target)
        name = file.name
    else:
        module = sys.modules.get(target)
        found = getattr(module, "__file__", None)
        if not found or not str(found).endswith(".py"):
            return None
        file = Path(found)
        tail = "/__init__.py" if file.name == "__init__.py" else ".py"
        name = target.replace(".", "/") + tail
    try:
        return PlanSource(name, file.read_bytes())
    except OSError:
        return None


def store_source(objects: ObjectStore, run_id: str, source: PlanSource) -> str:
    """Store ``source`` under the run unless it is there already; return its digest.
    Raised before the event naming it is recorded, so the ledger never names a source
    the store lacks."""
    key = source_key(run_id, source.digest)
    try:
        if not objects.exists(key):
            objects.put(key, source.data)
    except StorageError as exc:
        raise StorageError(
            f"cannot store run {run_id}'s plan source {source.path} in {objects.url} "
            f"({exc}); nothing was recorded — retry when the store is reachable"
        ) from exc
    return source.digest


def fetch_source(objects: ObjectStore, run_id: str, path: str, digest: str) -> PlanSource:
    """The source the run recorded, verified against its digest."""
    key = source_key(run_id, digest)
    try:
        data = objects.get(key)
    except ObjectMissing:
        raise RunStateError(
            f"cannot replay run {run_id} against its recorded source: {path} "
            f"(sha256 {digest[:16]}) is missing from {objects.url} under {key}; replay "
            "it against today's code with `orchestrator replay RUN`, or point --objects at "
            "the store the run was started with"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CorruptObject(
            key,
            objects.url,
            f"the recorded plan source {path} hashes to {actual[:16]}…, not the "
            f"{digest[:16]}… the ledger recorded; refusing to replay run {run_id} "
            "against altered code",
        )
    return PlanSource(path, data)


def load_recorded(source: PlanSource, plan_ref: str) -> Plan:
    """Import ``source`` as a module of its own and return the plan ``plan_ref`` names.

    The module gets a name unique to the source's digest (in the original package for a
    module reference, so its relative imports resolve) and its text is registered with
    :mod:`linecache`, so node code digests are taken from the recorded text, as they were
    when the run started.
    """
    target, _, attr = plan_ref.rpartition(":")
    package = "" if target.endswith(".py") else target.rpartition(".")[0]
    if source.path.endswith("/__init__.py"):
        package = target
    stem = f"orchestrator_recorded_{source.digest[:16]}"
    name = f"{package}.{stem}" if package else stem
    module = sys.modules.get(name)
    if module is None:
        filename = f"<recorded {source.digest[:16]}>/{source.path}"
        text = source.data.decode("utf-8", errors="replace")
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        module = types.ModuleType(name)
        module.__file__ = filename
        module.__package__ = package
        sys.modules[name] = module
        try:
            if package:
                importlib.import_module(package)
            exec(compile(source.data, filename, "exec"), module.__dict__)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            del sys.modules[name]
            raise PlanLoadError(
                f"cannot load the recorded source of plan {plan_ref!r} ({source.path}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    value = getattr(module, attr, None)
    if callable(value) and not isinstance(value, Plan):
        try:
            value = value()
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise PlanLoadError(
                f"cannot load the recorded source of plan {plan_ref!r} ({source.path}): "
                f"calling {attr}() raised {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(value, Plan):
        raise PlanLoadError(
            f"the recorded source of plan {plan_ref!r} ({source.path}) defines no Plan {attr!r}"
        )
    return value
