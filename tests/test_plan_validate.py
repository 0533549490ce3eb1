"""Plan.validate: one test per problem kind, all problems at once, type compatibility."""

from pathlib import Path
from typing import Any, Literal, Optional

import pytest
from pydantic import BaseModel

from orchestrator import (
    Budget,
    Const,
    NodeContext,
    Plan,
    PlanInvalid,
    PlanProblem,
    Ref,
    RunConfig,
    Runtime,
    define_node,
    node,
)
from orchestrator.typecheck import assignable

# ---- models and specs ---------------------------------------------------------------------


class TextIn(BaseModel):
    inp: str


class TextOut(BaseModel):
    out: str


class IntIn(BaseModel):
    value: int


class IntOut(BaseModel):
    value: int


class FloatIn(BaseModel):
    value: float


class ListOut(BaseModel):
    items: list[str]


class IntListOut(BaseModel):
    items: list[int]


class ItemIn(BaseModel):
    item: str
    prefix: str = ""


class CollectIn(BaseModel):
    texts: list[str]


class Empty(BaseModel):
    pass


class RunInputs(BaseModel):
    topic: str
    count: int
    label: str


async def _text(ctx: NodeContext, inputs: TextIn) -> TextOut:
    return TextOut(out=inputs.inp)


async def _int(ctx: NodeContext, inputs: IntIn) -> IntOut:
    return IntOut(value=inputs.value)


async def _float(ctx: NodeContext, inputs: FloatIn) -> IntOut:
    return IntOut(value=int(inputs.value))


async def _list(ctx: NodeContext, inputs: Empty) -> ListOut:
    return ListOut(items=["a", "b"])


async def _int_list(ctx: NodeContext, inputs: Empty) -> IntListOut:
    return IntListOut(items=[1, 2])


async def _item(ctx: NodeContext, inputs: ItemIn) -> TextOut:
    return TextOut(out=inputs.prefix + inputs.item)


async def _split(ctx: NodeContext, inputs: TextIn) -> ListOut:
    return ListOut(items=inputs.inp.split())


async def _collect(ctx: NodeContext, inputs: CollectIn) -> TextOut:
    return TextOut(out=",".join(inputs.texts))


text = define_node("text", _text)
ints = define_node("ints", _int)
floats = define_node("floats", _float)
lister = define_node("lister", _list)
int_lister = define_node("int-lister", _int_list)
per_item = define_node("per-item", _item)
collect = define_node("collect", _collect)
splitter = define_node("splitter", _split)


def kinds(problems: list[PlanProblem]) -> set[tuple[str, str | None, str | None]]:
    return {(p.kind, p.node, p.port) for p in problems}


def only(problems: list[PlanProblem]) -> PlanProblem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# ---- a valid plan -------------------------------------------------------------------------


def test_valid_plan_has_no_problems() -> None:
    plan = Plan("ok", inputs=RunInputs)
    src = plan.add(lister)
    mapped = plan.map(per_item, over=src.out.items, item="item", max_items=10, prefix="> ")
    plan.add(collect, texts=mapped.out.out)
    plan.add(text, inp=plan.input("topic"))
    plan.add(ints, value=plan.input("count"))
    plan.add(floats, value=Ref("ints", "value"))  # int feeds float
    plan.add(text, name="const-text", inp=Const("hello"))
    assert plan.validate() == []
    assert plan.validate(RunConfig(budget=Budget())) == []  # all budgets are zero


def test_empty_plan() -> None:
    problem = only(Plan("nothing").validate())
    assert (problem.kind, problem.node, problem.port) == ("empty_plan", None, None)


# ---- cycles -------------------------------------------------------------------------------


def test_cycle_with_forward_references() -> None:
    plan = Plan("loop")
    plan.add(text, name="a")
    plan.add(text, name="b")
    plan.connect("a.out", "b.inp")
    plan.connect("b.out", "a.inp")
    problem = only(plan.validate())
    assert problem.kind == "cycle"
    assert (problem.node, problem.port) == ("a", "inp")
    assert "a -> b -> a" in problem.message


def test_cycle_with_refs() -> None:
    plan = Plan("loop")
    plan.add(text, name="a", inp=Ref("c", "out"))
    plan.add(text, name="b", inp=Ref("a", "out"))
    plan.add(text, name="c", inp=Ref("b", "out"))
    plan.add(text, name="outside", inp=Ref("c", "out"))
    problem = only(plan.validate())
    assert problem.kind == "cycle"
    assert (problem.node, problem.port) == ("a", "inp")
    assert "a -> b -> c -> a" in problem.message
    assert "outside" not in problem.message


def test_self_loop() -> None:
    plan = Plan("self")
    plan.add(text, name="a", inp=Ref("a", "out"))
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("cycle", "a", "inp")
    assert "a -> a" in problem.message


def test_cycle_through_a_map() -> None:
    plan = Plan("map-loop")
    plan.map(per_item, name="m", over=Ref("split", "items"), item="item", max_items=3)
    plan.add(collect, name="join", texts=Ref("m", "out"))
    plan.add(splitter, name="split")
    plan.connect("join.out", "split.inp")
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("cycle", "m", "item")
    assert "m -> join -> split -> m" in problem.message


# ---- unwired inputs -----------------------------------------------------------------------


def test_unwired_required_input() -> None:
    plan = Plan("unwired")
    plan.add(per_item, name="p")  # item is required, prefix has a default
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("unwired_input", "p", "item")
    assert "'item'" in problem.message
    assert "str" in problem.message


# ---- type mismatches ----------------------------------------------------------------------


def test_type_mismatch_between_output_and_input() -> None:
    plan = Plan("mismatch")
    plan.add(text, name="t", inp="x")
    plan.add(ints, name="i", value=Ref("t", "out"))
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("type_mismatch", "i", "value")
    assert "expects int" in problem.message
    assert "t.out gives str" in problem.message


def test_float_output_does_not_feed_int_input() -> None:
    class FloatOut(BaseModel):
        value: float

    async def run(ctx: NodeContext, inputs: Empty) -> FloatOut:
        return FloatOut(value=1.5)

    plan = Plan("narrowing")
    plan.add(define_node("f", run))
    plan.add(ints, name="i", value=Ref("f", "value"))
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("type_mismatch", "i", "value")


def test_mapped_output_is_a_list() -> None:
    plan = Plan("mapped")
    plan.add(lister, name="src")
    plan.map(per_item, name="m", over=Ref("src", "items"), item="item", max_items=4)
    plan.add(text, name="wants-one", inp=Ref("m", "out"))  # gets list[str]
    plan.add(collect, name="wants-list", texts=Ref("m", "out"))
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("type_mismatch", "wants-one", "inp")
    assert "list[str]" in problem.message


def test_constant_of_the_wrong_type() -> None:
    plan = Plan("const")
    plan.add(ints, name="i", value=Const("not a number"))
    plan.add(ints, name="j", value="12")  # lax validation: a numeric string is an int
    plan.add(text, name="t", inp=12)  # Pydantic does not turn an int into a str
    got = plan.validate()
    assert kinds(got) == {("type_mismatch", "i", "value"), ("type_mismatch", "t", "inp")}
    by_node = {p.node: p for p in got}
    assert "'not a number'" in by_node["i"].message
    assert "expects int" in by_node["i"].message


def test_run_input_of_the_wrong_type() -> None:
    plan = Plan("run-input", inputs=RunInputs)
    plan.add(ints, name="i", value=plan.input("topic"))  # str into int
    plan.add(floats, name="f", value=plan.input("count"))  # int into float: fine
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("type_mismatch", "i", "value")
    assert "run input 'topic' is str" in problem.message


def test_unknown_run_input() -> None:
    plan = Plan("run-input", inputs=RunInputs)
    plan.add(ints, name="i", value=plan.input("missing"))
    no_inputs = Plan("no-inputs")
    no_inputs.add(ints, name="i", value=no_inputs.input("count"))
    for p in (plan, no_inputs):
        problem = only(p.validate())
        assert (problem.kind, problem.node, problem.port) == ("unknown_input", "i", "value")


# ---- maps ---------------------------------------------------------------------------------


def test_map_over_a_non_list() -> None:
    plan = Plan("map-scalar")
    plan.add(text, name="one", inp="x")
    plan.map(per_item, name="m", over=Ref("one", "out"), item="item", max_items=5)
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("map_not_list", "m", "item")
    assert "one.out" in problem.message


def test_map_item_type_mismatch() -> None:
    plan = Plan("map-items")
    plan.add(int_lister, name="nums")
    plan.map(per_item, name="m", over=Ref("nums", "items"), item="item", max_items=5)
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("type_mismatch", "m", "item")
    assert "expects str" in problem.message
    assert "are int" in problem.message


def test_map_item_int_into_float_is_fine() -> None:
    plan = Plan("map-widen")
    plan.add(int_lister, name="nums")
    plan.map(floats, name="m", over=Ref("nums", "items"), item="value", max_items=5)
    assert plan.validate() == []


def test_bad_maps() -> None:
    plan = Plan("bad-maps")
    plan.add(lister, name="src")
    plan.map(per_item, name="zero", over=Ref("src", "items"), item="item", max_items=0)
    plan.map(per_item, name="both", over=Ref("src", "items"), item="item", max_items=2)
    plan.connect("src.items", "both.item")  # the item port wired as well
    plan.map(per_item, name="noport", over=Ref("src", "items"), item="nope", max_items=2)
    got = kinds(plan.validate())
    assert ("bad_map", "zero", "item") in got
    assert ("bad_map", "both", "item") in got
    assert ("unknown_port", "noport", "nope") in got
    assert ("unwired_input", "noport", "item") in got


def test_negative_map_size_is_reported_not_raised() -> None:
    plan = Plan("negative")
    plan.add(lister, name="src")
    plan.map(
        define_node("costly", _item, budget=Budget(tokens=10)),
        name="m",
        over=Ref("src", "items"),
        item="item",
        max_items=-1,
    )
    got = plan.validate(RunConfig(budget=Budget(tokens=100)))
    assert kinds(got) == {("bad_map", "m", "item")}


# ---- effects ------------------------------------------------------------------------------


def test_unknown_effect() -> None:
    plan = Plan("effects")
    plan.add(define_node("gpu-job", _text, effects={"gpu", "fs"}), inp="x")
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("unknown_effect", "gpu-job", None)
    assert "'gpu'" in problem.message


def test_effect_the_run_does_not_allow() -> None:
    plan = Plan("effects")
    plan.add(define_node("fetch", _text, effects={"fs", "net"}), inp="x")
    assert plan.validate() == []  # every known effect is allowed by default
    assert plan.validate(RunConfig(allow_effects=frozenset({"fs", "net"}))) == []
    problem = only(plan.validate(RunConfig(allow_effects=frozenset({"fs", "llm"}))))
    assert (problem.kind, problem.node, problem.port) == ("effect_not_allowed", "fetch", None)
    assert "'net'" in problem.message
    both = plan.validate(RunConfig(allow_effects=frozenset()))
    assert [p.kind for p in both] == ["effect_not_allowed", "effect_not_allowed"]
    assert "allowed: none" in both[0].message


def test_host_net_is_an_effect_of_its_own_and_implies_net() -> None:
    spec = define_node("probe", _text, effects={"host-net"})
    assert spec.effects == {"host-net", "net"}
    plan = Plan("effects")
    plan.add(spec, inp="x")
    assert plan.validate() == []
    problem = only(plan.validate(RunConfig(allow_effects=frozenset({"net"}))))
    assert problem.kind == "effect_not_allowed" and "'host-net'" in problem.message


# ---- gates --------------------------------------------------------------------------------


def test_gate_needs_an_approver() -> None:
    @node("merge", gate="merge-approval")
    async def merge(ctx: NodeContext, inputs: TextIn) -> TextOut:
        return TextOut(out=inputs.inp)

    plan = Plan("gated")
    plan.add(merge, inp="x")
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("gate_without_approver", "merge", None)
    assert "'merge-approval'" in problem.message
    wrong_gate = RunConfig(approvers={"deploy-approval": ["ed25519:AAAA"]})
    assert only(plan.validate(wrong_gate)).kind == "gate_without_approver"
    no_keys = RunConfig(approvers={"merge-approval": []})
    assert only(plan.validate(no_keys)).kind == "gate_without_approver"
    assert plan.validate(RunConfig(approvers={"merge-approval": ["ed25519:AAAA"]})) == []


# ---- budgets ------------------------------------------------------------------------------


def _budget_plan(max_items: int) -> Plan:
    plan = Plan("budget")
    plan.add(define_node("src", _list, budget=Budget(tokens=100_000, compute_h=0.5)))
    plan.map(
        define_node("work", _item, budget=Budget(tokens=200_000, compute_h=0.1)),
        over=Ref("src", "items"),
        item="item",
        max_items=max_items,
    )
    plan.add(collect, name="join", texts=Ref("work", "out"))  # no budget
    return plan


def test_over_budget_only_because_of_fan_out() -> None:
    # one of each node is 300k tokens / 0.6 h; ten work items make it 2.1M / 1.5 h
    ceiling = RunConfig(budget=Budget(tokens=2_000_000, compute_h=2))
    plan = _budget_plan(max_items=10)
    assert plan.worst_case_budget() == Budget(tokens=2_100_000, compute_h=1.5)
    problem = only(plan.validate(ceiling))
    assert (problem.kind, problem.node, problem.port) == ("over_budget", None, None)
    assert "tokens 2100000 > 2000000" in problem.message
    assert "compute_h" not in problem.message
    assert "work x10" in problem.message
    # the same plan without fan-out fits with room to spare
    assert _budget_plan(max_items=1).validate(ceiling) == []


def test_budget_that_fits_exactly() -> None:
    plan = _budget_plan(max_items=10)
    exact = RunConfig(budget=Budget(tokens=2_100_000, compute_h=1.5))
    assert plan.validate(exact) == []
    assert only(plan.validate(RunConfig(budget=Budget(tokens=2_099_999, compute_h=1.5)))).kind == (
        "over_budget"
    )
    assert plan.validate() == []  # no ceiling, no check


def test_fractional_budgets_that_fit_exactly() -> None:
    plan = Plan("fractions")
    plan.add(define_node("src", _list, budget=Budget(compute_h=0.1, spend_usd=0.1)))
    plan.map(
        define_node("work", _item, budget=Budget(compute_h=0.1, spend_usd=0.1)),
        over=Ref("src", "items"),
        item="item",
        max_items=2,
    )
    assert plan.validate(RunConfig(budget=Budget(compute_h=0.3, spend_usd=0.3))) == []
    over = only(plan.validate(RunConfig(budget=Budget(compute_h=0.29, spend_usd=0.3))))
    assert over.kind == "over_budget"
    assert "compute_h 0.3 > 0.29" in over.message


# ---- unknown nodes and ports --------------------------------------------------------------


def test_unknown_node() -> None:
    plan = Plan("ghosts")
    plan.add(text, name="t", inp=Ref("ghost", "out"))
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("unknown_node", "t", "inp")
    assert "'ghost'" in problem.message


def test_unknown_output_port() -> None:
    plan = Plan("ports")
    plan.add(text, name="a", inp="x")
    plan.add(text, name="b", inp=Ref("a", "nope"))
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("unknown_port", "b", "inp")
    assert "no output 'nope'" in problem.message
    assert "outputs: out" in problem.message


def test_unknown_input_port() -> None:
    plan = Plan("ports")
    plan.add(text, name="a", inp="x", bogus="y")
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("unknown_port", "a", "bogus")
    assert "inputs: inp" in problem.message


def test_connect_needs_an_existing_target() -> None:
    plan = Plan("connect")
    plan.add(text, name="a", inp="x")
    with pytest.raises(KeyError, match="'missing'"):
        plan.connect("a.out", "missing.inp")
    with pytest.raises(ValueError, match=r"NODE\.PORT"):
        plan.connect("a", "a.inp")


# ---- duplicates ---------------------------------------------------------------------------


def test_duplicate_node_name() -> None:
    plan = Plan("dupes")
    plan.add(text, inp="first")
    plan.add(text, inp="second")
    problem = only(plan.validate())
    assert (problem.kind, problem.node, problem.port) == ("duplicate_node", "text", None)
    # the first placement is kept
    assert plan.nodes["text"].wiring["inp"] == Const("first")
    # distinct names are fine
    plan2 = Plan("named")
    plan2.add(text, name="one", inp="x")
    plan2.add(text, name="two", inp="y")
    assert plan2.validate() == []


# ---- everything at once -------------------------------------------------------------------


def test_all_problems_are_reported_in_one_call() -> None:
    gated = define_node(
        "gated",
        _text,
        effects={"net", "teleport"},
        gate="merge-approval",
        budget=Budget(tokens=1_000),
    )
    plan = Plan("broken", inputs=RunInputs)
    plan.add(text, name="a", inp=Ref("b", "out"))
    plan.add(text, name="b", inp=Ref("a", "out"))  # cycle a -> b -> a
    plan.add(ints, name="typed", value=Ref("a", "out"))  # str into int
    plan.add(ints, name="const", value="twelve")  # bad constant
    plan.add(ints, name="from-run", value=plan.input("label"))  # str run input into int
    plan.add(per_item, name="lonely")  # item unwired
    plan.add(text, name="ghostly", inp=Ref("ghost", "out"))
    plan.add(text, name="porty", inp=Ref("a", "missing"), extra=1)
    plan.map(per_item, name="scalar-map", over=Ref("a", "out"), item="item", max_items=3)
    plan.map(per_item, name="int-map", over=Ref("nums", "items"), item="item", max_items=3)
    plan.add(int_lister, name="nums")
    plan.add(gated, inp="x")
    plan.add(text, name="a", inp="dup")
    config = RunConfig(allow_effects=frozenset({"fs"}), budget=Budget(tokens=999))

    problems = plan.validate(config)

    assert kinds(problems) == {
        ("duplicate_node", "a", None),
        ("cycle", "a", "inp"),
        ("type_mismatch", "typed", "value"),
        ("type_mismatch", "const", "value"),
        ("type_mismatch", "from-run", "value"),
        ("unwired_input", "lonely", "item"),
        ("unknown_node", "ghostly", "inp"),
        ("unknown_port", "porty", "inp"),
        ("unknown_port", "porty", "extra"),
        ("map_not_list", "scalar-map", "item"),
        ("type_mismatch", "int-map", "item"),
        ("unknown_effect", "gated", None),
        ("effect_not_allowed", "gated", None),
        ("gate_without_approver", "gated", None),
        ("over_budget", None, None),
    }
    assert len(problems) == 15
    # the exception carries them all
    err = PlanInvalid(problems)
    assert err.problems == problems
    assert "15 problem(s)" in str(err)


# ---- running an invalid plan --------------------------------------------------------------


async def test_invalid_plan_is_refused_before_the_ledger_is_touched(tmp_path: Path) -> None:
    bad = Plan("bad")
    bad.add(text, name="a", inp=Ref("b", "out"))
    bad.add(text, name="b", inp=Ref("a", "out"))
    bad.add(ints, name="i", value="nope")
    rt = Runtime(home=tmp_path)
    try:
        with pytest.raises(PlanInvalid) as caught:
            await rt.start(bad)
        assert kinds(caught.value.problems) == {
            ("cycle", "a", "inp"),
            ("type_mismatch", "i", "value"),
        }
        assert rt.store.runs() == []
        assert rt.runs() == []
        assert not (tmp_path / "runs").exists()
    finally:
        rt.close()


async def test_run_config_is_part_of_start_validation(tmp_path: Path) -> None:
    plan = Plan("needs-net")
    plan.add(define_node("fetch", _text, effects={"net"}), inp="x")
    with Runtime(home=tmp_path) as rt:
        with pytest.raises(PlanInvalid) as caught:
            await rt.start(plan, config=RunConfig(allow_effects=frozenset({"fs"})))
        assert kinds(caught.value.problems) == {("effect_not_allowed", "fetch", None)}
        assert rt.store.runs() == []


# ---- type compatibility -------------------------------------------------------------------


class Base(BaseModel):
    x: int


class Derived(Base):
    y: int = 0


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        (int, float, True),
        (float, int, False),
        (int, int, True),
        (str, int, False),
        (bool, int, True),
        (list[int], list[float], True),
        (list[float], list[int], False),
        (list[int], list[int], True),
        (list[str], str, False),
        (str, list[str], False),
        (list[int], list, True),
        (list, list[int], True),
        (dict[str, int], dict[str, float], True),
        (dict[str, int], dict, True),
        (str, Optional[str], True),  # noqa: UP045
        (str, str | None, True),
        (type(None), str | None, True),
        (Optional[str], str, False),  # noqa: UP045
        (str | None, str, False),
        (int | str, str | int | None, True),
        (int | str, str, False),
        (Derived, Base, True),
        (Base, Derived, False),
        (list[Derived], list[Base], True),
        (Literal["a"], str, True),
        (Literal["a", "b"], str, True),
        (Literal["a", 1], str, False),
        (str, Literal["a"], False),
        (Literal["a"], Literal["a", "b"], True),
        (Literal["a", "b"], Literal["a"], False),
        (Literal["a"], Optional[Literal["a", "b"]], True),  # noqa: UP045
        (Any, int, True),
        (int, Any, True),
    ],
)
def test_assignable(src: Any, dst: Any, ok: bool) -> None:
    assert assignable(src, dst) is ok


def test_a_constant_the_ledger_cannot_record_is_a_problem() -> None:
    import math

    class F(BaseModel):
        x: float

    @node("takes-float")
    async def takes_float(ctx: NodeContext, inputs: F) -> F:
        return inputs

    plan = Plan("nan")
    plan.add(takes_float, x=math.nan)
    problems = plan.validate()
    assert [(p.kind, p.node, p.port) for p in problems] == [("bad_constant", "takes-float", "x")]


async def test_a_run_input_the_ledger_cannot_record_is_refused(tmp_path: Path) -> None:
    from orchestrator.errors import InputError

    class F(BaseModel):
        x: float

    @node("echo-float")
    async def echo_float(ctx: NodeContext, inputs: F) -> F:
        return inputs

    plan = Plan("nan-input", inputs=F)
    plan.add(echo_float, x=plan.input("x"))
    with Runtime(home=tmp_path) as rt:
        with pytest.raises(InputError, match="NaN"):
            await rt.start(plan, {"x": "nan"})
        assert rt.store.runs() == []
