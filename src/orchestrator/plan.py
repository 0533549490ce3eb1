"""Plans: typed nodes wired output-port to input-port, with map fan-out, checked up front.

``Plan.validate(config)`` reports every problem at once, each naming node and port, so a
30-hour run never discovers at hour 19 that a port was left unwired.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from orchestrator.budget import Budget
from orchestrator.codec import canonical_bytes
from orchestrator.config import RunConfig
from orchestrator.ids import Ref
from orchestrator.node import KNOWN_EFFECTS, NodeSpec
from orchestrator.typecheck import assignable, list_item, type_name

ProblemKind = Literal[
    "cycle",
    "unwired_input",
    "type_mismatch",
    "map_not_list",
    "unknown_effect",
    "effect_not_allowed",
    "gate_without_approver",
    "over_budget",
    "unknown_node",
    "unknown_port",
    "unknown_input",
    "duplicate_node",
    "bad_map",
    "bad_constant",
    "bad_workspace",
    "empty_plan",
]


@dataclass(frozen=True, slots=True)
class Input:
    """A field of the run's inputs model."""

    name: str


@dataclass(frozen=True, slots=True)
class Const:
    """A constant value (any plain value passed as wiring is one)."""

    value: Any


Source = Ref | Input | Const


@dataclass(frozen=True, slots=True)
class MapSpec:
    """Dynamic fan-out: one instance per item of ``over``, the item fed to ``item``."""

    over: Ref
    item: str
    max_items: int


class PlanProblem(BaseModel):
    """One reason a plan cannot run, naming the node and port where it lies."""

    model_config = ConfigDict(frozen=True)

    kind: ProblemKind
    node: str | None = None
    port: str | None = None
    message: str

    def __str__(self) -> str:
        where = ".".join(p for p in (self.node, self.port) if p)
        return (
            f"[{self.kind}] {where}: {self.message}" if where else f"[{self.kind}] {self.message}"
        )


@dataclass(eq=False)
class PlanNode:
    """A spec placed in a plan under a unique name, with its wiring."""

    name: str
    spec: NodeSpec
    wiring: dict[str, Source] = field(default_factory=dict)
    map: MapSpec | None = None

    def upstream(self) -> Iterator[tuple[str, Ref]]:
        """(input port, source ref) for every edge into this node, the map source included."""
        for port, src in self.wiring.items():
            if isinstance(src, Ref):
                yield port, src
        if self.map is not None and isinstance(self.map.over, Ref):
            yield self.map.item, self.map.over


class NodeHandle:
    """What ``Plan.add`` returns: ``handle.out.PORT`` (or ``handle["PORT"]``) is a Ref."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.out = _Ports(name)

    def __getitem__(self, port: str) -> Ref:
        return Ref(self.name, port)


class _Ports:
    def __init__(self, node: str) -> None:
        self._node = node

    def __getattr__(self, port: str) -> Ref:
        if port.startswith("__"):
            raise AttributeError(port)
        return Ref(self._node, port)


class Plan:
    """A typed DAG of nodes. Build with ``add``/``map``/``connect``, check with ``validate``."""

    def __init__(self, name: str, inputs: type[BaseModel] | None = None) -> None:
        self.name = name
        self.inputs = inputs
        self.nodes: dict[str, PlanNode] = {}
        self.defined_in: str | None = sys._getframe(1).f_globals.get("__name__")
        """The module that built the plan, where a run looks for the name it is bound to."""
        self._duplicates: list[str] = []

    def input(self, name: str) -> Input:
        return Input(name)

    def add(
        self,
        spec: NodeSpec,
        *,
        name: str | None = None,
        map_over: Ref | None = None,
        item: str | None = None,
        max_items: int | None = None,
        **wiring: Any,
    ) -> NodeHandle:
        """Place ``spec`` in the plan; keyword arguments wire its input ports."""
        name = name or spec.name
        if name in self.nodes:
            self._duplicates.append(name)
            return NodeHandle(name)
        mapping = None
        if map_over is not None:
            mapping = MapSpec(map_over, item or "", max_items if max_items is not None else 0)
        wired = {port: _as_source(v) for port, v in wiring.items()}
        self.nodes[name] = PlanNode(name, spec, wired, mapping)
        return NodeHandle(name)

    def map(
        self,
        spec: NodeSpec,
        *,
        over: Ref,
        item: str,
        max_items: int,
        name: str | None = None,
        **wiring: Any,
    ) -> NodeHandle:
        """One instance of ``spec`` per item of ``over`` (at most ``max_items``)."""
        return self.add(spec, name=name, map_over=over, item=item, max_items=max_items, **wiring)

    def connect(self, src: str | Ref, dst: str) -> None:
        """Wire ``"node.port"`` (an output) into ``"node.port"`` (an input)."""
        target = Ref.parse(dst)
        source = src if isinstance(src, Ref) else Ref.parse(src)
        if target.node not in self.nodes:
            raise KeyError(f"connect: no node named {target.node!r} in plan {self.name!r}")
        self.nodes[target.node].wiring[target.port] = source

    # ---- checking -------------------------------------------------------------------

    def validate(self, config: RunConfig | None = None) -> list[PlanProblem]:
        """Every reason this plan cannot run under ``config``, all at once."""
        return _Validator(self, config or RunConfig()).run()

    def worst_case_budget(self) -> Budget:
        """The sum over nodes of the declared budget times the node's map fan-out."""
        total = Budget()
        for pn in self.nodes.values():
            # a map with max_items < 1 is reported as bad_map; here it must not go negative
            total = total + pn.spec.budget * (max(pn.map.max_items, 0) if pn.map else 1)
        return total

    # ---- canonical form -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Canonical data for the plan: specs, nodes, wiring, maps, inputs."""
        specs: dict[str, Any] = {}
        nodes: dict[str, Any] = {}
        for pn in self.nodes.values():
            specs.setdefault(pn.spec.name, pn.spec.description)
            nodes[pn.name] = {
                "spec": pn.spec.name,
                "wiring": {p: _describe_source(s) for p, s in sorted(pn.wiring.items())},
                "map": None
                if pn.map is None
                else {"over": str(pn.map.over), "item": pn.map.item, "max": pn.map.max_items},
            }
        return {
            "name": self.name,
            "inputs": None if self.inputs is None else self.inputs.model_json_schema(),
            "specs": specs,
            "nodes": nodes,
        }

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(canonical_bytes(self.describe())).hexdigest()


def _as_source(value: Any) -> Source:
    if isinstance(value, Ref | Input | Const):
        return value
    return Const(value)


def _describe_source(src: Source) -> dict[str, Any]:
    if isinstance(src, Ref):
        return {"ref": str(src)}
    if isinstance(src, Input):
        return {"input": src.name}
    return {"const": to_jsonable_python(src.value)}


class _Validator:
    def __init__(self, plan: Plan, config: RunConfig) -> None:
        self.plan = plan
        self.config = config
        self.problems: list[PlanProblem] = []

    def add(self, kind: ProblemKind, node: str | None, port: str | None, message: str) -> None:
        self.problems.append(PlanProblem(kind=kind, node=node, port=port, message=message))

    def run(self) -> list[PlanProblem]:
        plan = self.plan
        if not plan.nodes:
            self.add("empty_plan", None, None, f"plan {plan.name!r} has no nodes")
        for name in plan._duplicates:
            self.add("duplicate_node", name, None, "two nodes share this name; pass name=")
        for pn in plan.nodes.values():
            self.check_node(pn)
        self.check_cycles()
        self.check_budget()
        return self.problems

    def output_type(self, ref: Ref, node: str, port: str) -> tuple[bool, Any]:
        """The type a ref delivers, or (False, None) after reporting why it delivers none."""
        src = self.plan.nodes.get(ref.node)
        if src is None:
            self.add(
                "unknown_node", node, port, f"wired from {ref}, but there is no node {ref.node!r}"
            )
            return False, None
        fields = src.spec.outputs.model_fields
        if ref.port not in fields:
            self.add(
                "unknown_port",
                node,
                port,
                f"wired from {ref}, but {ref.node!r} has no output {ref.port!r} "
                f"(outputs: {', '.join(fields) or 'none'})",
            )
            return False, None
        tp = fields[ref.port].annotation
        return True, (list[tp] if src.map is not None else tp)  # type: ignore[valid-type]

    def check_node(self, pn: PlanNode) -> None:
        spec, name = pn.spec, pn.name
        fields = spec.inputs.model_fields
        for port, src in pn.wiring.items():
            if port not in fields:
                self.add(
                    "unknown_port",
                    name,
                    port,
                    f"{spec.name!r} has no input {port!r} (inputs: {', '.join(fields) or 'none'})",
                )
                continue
            want = fields[port].annotation
            if isinstance(src, Ref):
                ok, got = self.output_type(src, name, port)
                if ok and not assignable(got, want):
                    self.add(
                        "type_mismatch",
                        name,
                        port,
                        f"expects {type_name(want)}, but {src} gives {type_name(got)}",
                    )
            elif isinstance(src, Input):
                self.check_run_input(src, name, port, want)
            else:
                try:
                    TypeAdapter(want or Any).validate_python(src.value)
                except ValidationError as exc:
                    first = exc.errors()[0]["msg"]
                    self.add(
                        "type_mismatch",
                        name,
                        port,
                        f"expects {type_name(want)}, "
                        f"but the constant {src.value!r} is not ({first})",
                    )
                    continue
                try:
                    canonical_bytes(to_jsonable_python(src.value))
                except (ValueError, TypeError) as exc:
                    self.add(
                        "bad_constant",
                        name,
                        port,
                        f"the constant {src.value!r} cannot be recorded in the ledger ({exc})",
                    )
        if pn.map is not None:
            self.check_map(pn)
        fed = set(pn.wiring) | ({pn.map.item} if pn.map else set())
        for port, info in fields.items():
            if info.is_required() and port not in fed:
                self.add(
                    "unwired_input",
                    name,
                    port,
                    f"required input {port!r} ({type_name(info.annotation)}) is not wired",
                )
        for effect in sorted(spec.effects):
            if effect not in KNOWN_EFFECTS:
                self.add(
                    "unknown_effect",
                    name,
                    None,
                    f"unknown effect {effect!r} (known: {', '.join(sorted(KNOWN_EFFECTS))})",
                )
            elif effect not in self.config.allow_effects:
                allowed = ", ".join(sorted(self.config.allow_effects)) or "none"
                self.add(
                    "effect_not_allowed",
                    name,
                    None,
                    f"declares effect {effect!r}, which this run does not allow "
                    f"(allowed: {allowed})",
                )
        if spec.workspace is not None and (
            spec.workspace not in fields or not assignable(fields[spec.workspace].annotation, str)
        ):
            self.add(
                "bad_workspace",
                name,
                spec.workspace,
                "the workspace must name a str input port holding a directory path",
            )
        if spec.gate is not None and not self.config.approvers.get(spec.gate):
            self.add(
                "gate_without_approver",
                name,
                None,
                f"gate {spec.gate!r} has no approver configured for this run",
            )

    def check_run_input(self, src: Input, node: str, port: str, want: Any) -> None:
        model = self.plan.inputs
        if model is None or src.name not in model.model_fields:
            self.add(
                "unknown_input",
                node,
                port,
                f"wired from run input {src.name!r}, which the plan does not declare",
            )
            return
        got = model.model_fields[src.name].annotation
        if not assignable(got, want):
            self.add(
                "type_mismatch",
                node,
                port,
                f"expects {type_name(want)}, but run input {src.name!r} is {type_name(got)}",
            )

    def check_map(self, pn: PlanNode) -> None:
        assert pn.map is not None
        m, fields = pn.map, pn.spec.inputs.model_fields
        if m.max_items < 1:
            self.add("bad_map", pn.name, m.item, "a map needs max_items >= 1 (worst-case budgets)")
        if m.item not in fields:
            self.add("unknown_port", pn.name, m.item, f"map item port {m.item!r} is not an input")
            return
        if m.item in pn.wiring:
            self.add("bad_map", pn.name, m.item, "the map item port is also wired")
        if not isinstance(m.over, Ref):
            self.add("bad_map", pn.name, m.item, f"maps over {m.over!r}; it must be an output port")
            return
        ok, got = self.output_type(m.over, pn.name, m.item)
        if not ok:
            return
        is_list, item_type = list_item(got)
        if not is_list:
            self.add(
                "map_not_list",
                pn.name,
                m.item,
                f"maps over {m.over}, which is {type_name(got)}, not a list",
            )
        elif not assignable(item_type, fields[m.item].annotation):
            self.add(
                "type_mismatch",
                pn.name,
                m.item,
                f"expects {type_name(fields[m.item].annotation)}, but items of {m.over} "
                f"are {type_name(item_type)}",
            )

    def check_cycles(self) -> None:
        nodes = self.plan.nodes
        edges: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
        for pn in nodes.values():
            for port, ref in pn.upstream():
                if ref.node in nodes:
                    edges[ref.node].append((pn.name, port))
        color = dict.fromkeys(nodes, 0)  # 0 new, 1 on stack, 2 done
        seen_cycles: set[frozenset[str]] = set()
        for root in nodes:
            if color[root]:
                continue
            stack: list[tuple[str, Iterator[tuple[str, str]]]] = [(root, iter(edges[root]))]
            path = [root]
            color[root] = 1
            while stack:
                current, it = stack[-1]
                step = next(it, None)
                if step is None:
                    color[current] = 2
                    stack.pop()
                    path.pop()
                    continue
                nxt, port = step
                if color[nxt] == 0:
                    color[nxt] = 1
                    stack.append((nxt, iter(edges[nxt])))
                    path.append(nxt)
                elif color[nxt] == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    key = frozenset(cycle)
                    if key not in seen_cycles:
                        seen_cycles.add(key)
                        self.add("cycle", nxt, port, "cycle: " + " -> ".join(cycle))

    def check_budget(self) -> None:
        ceiling = self.config.budget
        if ceiling is None:
            return
        worst = self.plan.worst_case_budget()
        over = worst.over(ceiling)
        if over:
            dim = over[0].split()[0]  # the first dimension over, e.g. "compute_h"
            biggest = sorted(
                self.plan.nodes.values(),
                key=lambda pn: getattr(pn.spec.budget, dim) * (pn.map.max_items if pn.map else 1),
                reverse=True,
            )[:3]
            self.add(
                "over_budget",
                None,
                None,
                "worst-case budget exceeds the run's ceiling: "
                + "; ".join(over)
                + " (largest: "
                + ", ".join(f"{pn.name} x{pn.map.max_items if pn.map else 1}" for pn in biggest)
                + ")",
            )
