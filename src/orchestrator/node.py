"""Node specifications: typed inputs and outputs, effects, budget, retry, gate, timeout.

A node is an ``async def run(ctx, inputs) -> Outputs`` whose ``inputs`` and return value
are Pydantic models. ``@node(...)`` and ``define_node(...)`` build the same
:class:`NodeSpec`; the spec is plain data plus the function, and knows nothing of plans,
ledgers or sandboxes.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import textwrap
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from types import CodeType
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.budget import Budget
from orchestrator.sandbox.limits import Limits

if TYPE_CHECKING:
    from orchestrator.runtime.context import NodeContext

KNOWN_EFFECTS: frozenset[str] = frozenset({"fs", "net", "host-net", "llm"})
"""``net``: outbound network from a namespace of the sandbox's own; ``host-net``: the
host's network itself, its loopback services included (implies ``net``)."""

NodeFn = Callable[["NodeContext", Any], Awaitable[BaseModel]]


class Retry(BaseModel):
    """How a failed attempt is retried. ``on`` lists the retryable exception types;
    ``never`` the ones no attempt could fix (a refusal), not retried even when ``on``
    matches them.

    ``exhausted`` is what a failure the policy does not retry (any more) does: ``fail``
    the node, and so the run; or ``park`` the run with the node due to run again, so a
    person can fix the cause and ``resume`` (for a last step, such as publishing, whose
    failure must not throw away the work before it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    max_attempts: int = Field(default=1, ge=1)
    backoff: Literal["exp", "fixed", "none"] = "exp"
    base_delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=300.0, ge=0)
    jitter: float = Field(default=0.2, ge=0, le=1)
    on: tuple[type[BaseException], ...] = (Exception,)
    never: tuple[type[BaseException], ...] = ()
    exhausted: Literal["fail", "park"] = "fail"

    @field_validator("on", "never", mode="before")
    @classmethod
    def _tuple(cls, value: Any) -> Any:
        return (value,) if isinstance(value, type) else tuple(value)

    def delay(self, attempt: int, unit_random: float) -> float:
        """Delay before the attempt after ``attempt``; jitter from ``unit_random`` in [0,1)."""
        if self.backoff == "none":
            return 0.0
        # the exponent is capped so that huge attempt numbers saturate instead of overflowing
        doubling = 2 ** min(attempt - 1, 1000)
        base = self.base_delay if self.backoff == "fixed" else self.base_delay * doubling
        base = min(base, self.max_delay)
        jittered = base * (1 - self.jitter + 2 * self.jitter * unit_random)
        return round(min(jittered, self.max_delay), 6)

    def retries(self, class_names: Iterable[str]) -> bool:
        """Whether an error whose classes are ``class_names`` is retryable."""
        names = set(class_names)
        if not names.isdisjoint(c.__name__ for c in self.never):
            return False
        wanted = {c.__name__ for c in self.on}
        # recorded class names leave out BaseException (ErrorInfo.of), which matches all
        return "BaseException" in wanted or not wanted.isdisjoint(names)

    def describe(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"on", "never", "exhausted"})
        data["on"] = sorted(c.__name__ for c in self.on)
        # absent at their defaults: plans that use neither keep their digest
        if self.never:
            data["never"] = sorted(c.__name__ for c in self.never)
        if self.exhausted != "fail":
            data["exhausted"] = self.exhausted
        return data


@dataclass(frozen=True, eq=False)
class NodeSpec:
    """A typed node: what it consumes, produces, may do, may cost, and how it retries.

    ``workspace`` names an input port holding a host directory (a repository): the
    node's sandbox then works on a copy-on-write view of it at ``/workspace``.
    """

    name: str
    fn: NodeFn
    inputs: type[BaseModel]
    outputs: type[BaseModel]
    effects: frozenset[str] = frozenset()
    budget: Budget = field(default_factory=Budget)
    retry: Retry = field(default_factory=Retry)
    gate: str | None = None
    timeout: float | None = None
    limits: Limits | None = None
    workspace: str | None = None

    def __post_init__(self) -> None:
        for label, model in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"node {self.name!r}: {label} must be a Pydantic model class")
        if not inspect.iscoroutinefunction(self.fn):
            raise TypeError(f"node {self.name!r}: run must be an async function")
        timeout = self.timeout
        if timeout is not None and not (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and timeout > 0
            and math.isfinite(timeout)
        ):
            raise TypeError(f"node {self.name!r}: timeout must be a positive number of seconds")

    @cached_property
    def code_digest(self) -> str:
        """Digest of the node's code: its body's source, or bytecode when none is at hand."""
        try:
            code = textwrap.dedent(inspect.getsource(self.fn)).encode()
        except (OSError, TypeError):
            code = _code_bytes(self.fn.__code__)
        return hashlib.sha256(self.name.encode() + b"\0" + code).hexdigest()[:16]

    @cached_property
    def description(self) -> dict[str, Any]:
        """The spec as canonical data (part of a plan's digest)."""
        return {
            "spec": self.name,
            "code": self.code_digest,
            "inputs": self.inputs.model_json_schema(),
            "outputs": self.outputs.model_json_schema(),
            "effects": sorted(self.effects),
            "budget": self.budget.model_dump(),
            "retry": self.retry.describe(),
            "gate": self.gate,
            "timeout": self.timeout,
            "limits": None if self.limits is None else self.limits.describe(),
            "workspace": self.workspace,
        }


def _implied(effects: frozenset[str]) -> frozenset[str]:
    return effects | {"net"} if "host-net" in effects else effects


def define_node(
    name: str,
    run: NodeFn,
    *,
    inputs: type[BaseModel] | None = None,
    outputs: type[BaseModel] | None = None,
    effects: Iterable[str] = (),
    budget: Budget | None = None,
    retry: Retry | None = None,
    gate: str | None = None,
    timeout: float | None = None,
    limits: Limits | None = None,
    workspace: str | None = None,
) -> NodeSpec:
    """Build a :class:`NodeSpec`; input and output models default to ``run``'s annotations."""
    if inputs is None or outputs is None:
        hinted_in, hinted_out = _annotated_models(name, run)
        inputs = inputs or hinted_in
        outputs = outputs or hinted_out
    return NodeSpec(
        name=name,
        fn=run,
        inputs=inputs,
        outputs=outputs,
        effects=_implied(frozenset(effects)),
        budget=budget or Budget(),
        retry=retry or Retry(),
        gate=gate,
        timeout=timeout,
        limits=limits,
        workspace=workspace,
    )


@overload
def node(name: NodeFn, /) -> NodeSpec: ...
@overload
def node(
    name: str | None = None,
    *,
    effects: Iterable[str] = (),
    budget: Budget | None = None,
    retry: Retry | None = None,
    gate: str | None = None,
    timeout: float | None = None,
    limits: Limits | None = None,
    workspace: str | None = None,
) -> Callable[[NodeFn], NodeSpec]: ...
def node(
    name: str | NodeFn | None = None,
    *,
    effects: Iterable[str] = (),
    budget: Budget | None = None,
    retry: Retry | None = None,
    gate: str | None = None,
    timeout: float | None = None,
    limits: Limits | None = None,
    workspace: str | None = None,
) -> NodeSpec | Callable[[NodeFn], NodeSpec]:
    """Decorate ``async def run(ctx, inputs: In) -> Out`` into a :class:`NodeSpec`.

    Use as ``@node("name", ...)``, ``@node(...)`` or bare ``@node``.
    """
    if callable(name):
        return node()(name)

    def wrap(fn: NodeFn) -> NodeSpec:
        return define_node(
            name if isinstance(name, str) else fn.__name__.replace("_", "-"),
            fn,
            effects=effects,
            budget=budget,
            retry=retry,
            gate=gate,
            timeout=timeout,
            limits=limits,
            workspace=workspace,
        )

    return wrap


def _code_bytes(c: CodeType) -> bytes:
    """Bytecode, constants and names, recursively, with nothing that varies by process."""
    return b"\0".join(
        [c.co_code, *(_const_bytes(k) for k in c.co_consts), repr(c.co_names).encode()]
    )


def _const_bytes(value: Any) -> bytes:
    # a nested code object's repr holds its address, a frozenset's order varies by hash seed
    if isinstance(value, CodeType):
        return b"code(" + _code_bytes(value) + b")"
    if isinstance(value, tuple | frozenset):
        items = [_const_bytes(v) for v in value]
        if isinstance(value, frozenset):
            items.sort()
        return type(value).__name__.encode() + b"(" + b",".join(items) + b")"
    return repr(value).encode()


def _annotated_models(name: str, fn: NodeFn) -> tuple[type[BaseModel], type[BaseModel]]:
    """The inputs and return annotations, resolved on their own.

    Only these two are evaluated, so ``ctx: NodeContext`` may be imported under
    ``TYPE_CHECKING`` without breaking node definition.
    """
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise TypeError(f"node {name!r}: run must take exactly (ctx, inputs)")
    annotations = inspect.get_annotations(fn)
    resolved: list[Any] = []
    for key in (params[1], "return"):
        hint = annotations.get(key)
        if isinstance(hint, str):
            try:
                hint = eval(hint, getattr(fn, "__globals__", {}))
            except Exception as exc:
                raise TypeError(
                    f"node {name!r}: cannot resolve the annotation {hint!r} of run: {exc}"
                ) from exc
        resolved.append(hint)
    inputs, outputs = resolved
    if inputs is None or outputs is None:
        raise TypeError(
            f"node {name!r}: annotate run's inputs parameter and return type with Pydantic "
            "models, or pass inputs=/outputs= to define_node"
        )
    return inputs, outputs
