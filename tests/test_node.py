"""Node specifications: the seed example both ways, definition errors, Retry, Budget, digests."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import (
    Budget,
    NodeContext,
    NodeSpec,
    Plan,
    Retry,
    RunConfig,
    Runtime,
    define_node,
    node,
)
from orchestrator.ledger.events import ErrorInfo

# ---- the seed example ---------------------------------------------------------------------


class MigrateIn(BaseModel):
    # ``from`` is a keyword, so the field is ``from_`` with the alias "from". The plan wires
    # ports by *field name* (``from_=``) and the runtime validates inputs by field name, so
    # an alias-only model runs too (test_alias_port_without_populate_by_name_runs below);
    # populate_by_name lets code outside the runtime build this model by field name as well.
    model_config = ConfigDict(populate_by_name=True)

    repo: str
    package: str
    from_: str = Field(alias="from")
    to: str


class MigrateOut(BaseModel):
    diff: str
    coverage: float


SEED_BUDGET = Budget(tokens=2_000_000, compute_h=2)
SEED_RETRY = Retry(max_attempts=3, backoff="exp")


@node(
    "migrate-package",
    effects={"fs", "net"},
    budget=SEED_BUDGET,
    retry=SEED_RETRY,
    gate="merge-approval",
)
async def migrate_package(ctx: NodeContext, inputs: MigrateIn) -> MigrateOut:
    return MigrateOut(
        diff=f"{inputs.repo}:{inputs.package} {inputs.from_} -> {inputs.to}", coverage=0.9
    )


async def _migrate_body(ctx: NodeContext, inputs: MigrateIn) -> MigrateOut:
    return MigrateOut(
        diff=f"{inputs.repo}:{inputs.package} {inputs.from_} -> {inputs.to}", coverage=0.9
    )


migrate_package_fn = define_node(
    "migrate-package",
    _migrate_body,
    inputs=MigrateIn,
    outputs=MigrateOut,
    effects=["fs", "net"],
    budget=Budget(tokens=2_000_000, compute_h=2.0),
    retry=Retry(max_attempts=3, backoff="exp"),
    gate="merge-approval",
)


def test_seed_decorator_builds_the_declared_spec() -> None:
    spec = migrate_package
    assert isinstance(spec, NodeSpec)
    assert spec.name == "migrate-package"
    assert spec.inputs is MigrateIn
    assert spec.outputs is MigrateOut
    assert list(spec.inputs.model_fields) == ["repo", "package", "from_", "to"]
    assert {k: f.annotation for k, f in spec.outputs.model_fields.items()} == {
        "diff": str,
        "coverage": float,
    }
    assert spec.effects == frozenset({"fs", "net"})
    assert spec.budget.tokens == 2_000_000
    assert spec.budget.compute_h == 2.0
    assert spec.budget.spend_usd == 0.0
    assert spec.retry.max_attempts == 3
    assert spec.retry.backoff == "exp"
    assert spec.gate == "merge-approval"
    assert spec.timeout is None


def test_seed_decorator_and_define_node_are_equivalent() -> None:
    a, b = migrate_package, migrate_package_fn
    assert a.name == b.name
    assert a.inputs is b.inputs
    assert a.outputs is b.outputs
    assert a.effects == b.effects
    assert a.budget == b.budget
    assert a.retry == b.retry
    assert a.gate == b.gate
    assert a.timeout == b.timeout
    # different function source (the decorator lines are part of it), so a different digest
    assert a.code_digest != b.code_digest

    def without_code(spec: NodeSpec) -> dict[str, Any]:
        return {k: v for k, v in spec.description.items() if k != "code"}

    assert without_code(a) == without_code(b)
    assert set(a.description) == {
        "spec",
        "code",
        "inputs",
        "outputs",
        "effects",
        "budget",
        "retry",
        "gate",
        "timeout",
        "limits",
        "workspace",
    }
    assert a.description["effects"] == ["fs", "net"]
    assert a.description["retry"]["on"] == ["Exception"]


async def test_seed_body_reads_the_aliased_input() -> None:
    inputs = MigrateIn.model_validate({"repo": "r", "package": "p", "from": "1.0", "to": "2.0"})
    out = await migrate_package.fn(None, inputs)  # type: ignore[arg-type]
    assert out == MigrateOut(diff="r:p 1.0 -> 2.0", coverage=0.9)


def test_seed_wiring_port_is_the_field_name_not_the_alias() -> None:
    config = RunConfig(approvers={"merge-approval": ["ed25519:reviewer"]})
    plan = Plan("migrate")
    plan.add(migrate_package, repo="r", package="p", from_="1.0", to="2.0")
    assert plan.validate(config) == []
    # the JSON schema (and so the plan description) shows the alias
    assert "from" in migrate_package.description["inputs"]["properties"]

    by_alias = Plan("migrate")
    by_alias.add(migrate_package, repo="r", package="p", to="2.0", **{"from": "1.0"})
    got = {(p.kind, p.node, p.port) for p in by_alias.validate(config)}
    assert got == {
        ("unknown_port", "migrate-package", "from"),
        ("unwired_input", "migrate-package", "from_"),
    }


class AliasOnlyIn(BaseModel):
    from_: str = Field(alias="from")


class AliasOut(BaseModel):
    got: str


async def _alias_only(ctx: NodeContext, inputs: AliasOnlyIn) -> AliasOut:
    return AliasOut(got=inputs.from_)


def test_alias_only_model_rejects_the_port_name() -> None:
    # plain Pydantic validation of {port: value} needs populate_by_name (the runtime's does not)
    with pytest.raises(ValidationError):
        AliasOnlyIn.model_validate({"from_": "1.0"})
    assert MigrateIn.model_validate(
        {"repo": "r", "package": "p", "from_": "1.0", "to": "2"}
    ).from_ == ("1.0")


async def test_alias_port_without_populate_by_name_runs(tmp_path: Path) -> None:
    plan = Plan("alias")
    plan.add(define_node("alias", _alias_only), from_="1.0")
    assert plan.validate() == []
    with Runtime(home=tmp_path) as rt:
        state = await rt.start(plan)
    assert state.status == "succeeded"
    assert state.nodes["alias"].outputs == {"got": "1.0"}


# ---- definition errors --------------------------------------------------------------------


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


def test_sync_run_is_rejected() -> None:
    def run(ctx: NodeContext, inputs: In) -> Out:
        return Out(y=inputs.x)

    with pytest.raises(TypeError, match=r"node 'sync-node': run must be an async function"):
        define_node("sync-node", run)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'sync-node'"):
        node("sync-node")(run)  # type: ignore[arg-type]


def test_missing_annotations_are_rejected() -> None:
    async def bare(ctx, inputs):  # type: ignore[no-untyped-def]
        return Out(y=1)

    async def no_return(ctx: NodeContext, inputs: In):  # type: ignore[no-untyped-def]
        return Out(y=1)

    async def no_inputs(ctx: NodeContext, inputs) -> Out:  # type: ignore[no-untyped-def]
        return Out(y=1)

    for fn in (bare, no_return, no_inputs):
        with pytest.raises(TypeError, match=r"node 'unannotated': annotate run's inputs"):
            define_node("unannotated", fn)
    # either model may still be given explicitly
    assert define_node("unannotated", bare, inputs=In, outputs=Out).inputs is In


def test_unresolvable_annotations_are_rejected() -> None:
    async def run(ctx: NodeContext, inputs: "NoSuchModel") -> Out:  # type: ignore[name-defined]  # noqa: F821
        return Out(y=1)

    with pytest.raises(TypeError, match=r"node 'unresolved': cannot resolve the annotation"):
        define_node("unresolved", run)


def test_wrong_arity_is_rejected() -> None:
    async def run(inputs: In) -> Out:
        return Out(y=1)

    with pytest.raises(TypeError, match=r"node 'arity': run must take exactly \(ctx, inputs\)"):
        define_node("arity", run)  # type: ignore[arg-type]


def test_non_pydantic_models_are_rejected() -> None:
    async def dict_in(ctx: NodeContext, inputs: dict[str, int]) -> Out:
        return Out(y=1)

    async def int_out(ctx: NodeContext, inputs: In) -> int:
        return 1

    async def list_in(ctx: NodeContext, inputs: list[In]) -> Out:
        return Out(y=1)

    class Plain:
        x: int

    with pytest.raises(TypeError, match=r"node 'dict-in': inputs must be a Pydantic model"):
        define_node("dict-in", dict_in)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"node 'int-out': outputs must be a Pydantic model"):
        define_node("int-out", int_out)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"node 'list-in': inputs must be a Pydantic model"):
        define_node("list-in", list_in)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"node 'plain': inputs must be a Pydantic model"):
        define_node("plain", _ok_run, inputs=Plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"node 'plain': outputs must be a Pydantic model"):
        define_node("plain", _ok_run, outputs=Out(y=1))  # type: ignore[arg-type]


async def _ok_run(ctx: NodeContext, inputs: In) -> Out:
    return Out(y=inputs.x)


@pytest.mark.parametrize("timeout", [0, -1, -0.5, math.nan, math.inf, "30", True])
def test_bad_timeout_is_rejected(timeout: Any) -> None:
    with pytest.raises(TypeError, match=r"node 'timed': timeout must be a positive number"):
        define_node("timed", _ok_run, timeout=timeout)
    with pytest.raises(TypeError, match=r"node 'timed'"):
        node("timed", timeout=timeout)(_ok_run)


@pytest.mark.parametrize("timeout", [0.001, 1, 30.5, None])
def test_good_timeout_is_kept(timeout: float | None) -> None:
    assert define_node("timed", _ok_run, timeout=timeout).timeout == timeout


def test_decorator_defaults_name_from_function() -> None:
    @node()
    async def fetch_page_text(ctx: NodeContext, inputs: In) -> Out:
        return Out(y=inputs.x)

    assert fetch_page_text.name == "fetch-page-text"
    assert fetch_page_text.effects == frozenset()
    assert fetch_page_text.budget == Budget()
    assert fetch_page_text.retry == Retry()
    assert fetch_page_text.gate is None


# ---- Retry --------------------------------------------------------------------------------


def test_exponential_delay_doubles() -> None:
    r = Retry(backoff="exp", base_delay=1.5, jitter=0, max_delay=1000)
    assert [r.delay(a, 0.7) for a in range(1, 7)] == [1.5, 3.0, 6.0, 12.0, 24.0, 48.0]


def test_fixed_delay_is_constant() -> None:
    r = Retry(backoff="fixed", base_delay=5, jitter=0)
    assert {r.delay(a, 0.3) for a in range(1, 20)} == {5.0}


def test_no_backoff_is_zero_even_with_jitter() -> None:
    r = Retry(backoff="none", base_delay=5, jitter=1.0)
    assert {r.delay(a, u) for a in range(1, 10) for u in (0.0, 0.5, 0.99)} == {0.0}


def test_jitter_stays_within_bounds() -> None:
    r = Retry(backoff="fixed", base_delay=10, jitter=0.2, max_delay=1000)
    assert r.delay(1, 0.0) == pytest.approx(8.0)
    assert r.delay(1, 0.5) == pytest.approx(10.0)
    assert r.delay(1, 0.999999) == pytest.approx(12.0, abs=1e-4)
    delays = [r.delay(1, i / 1000) for i in range(1000)]
    assert all(8.0 <= d < 12.0 for d in delays)
    assert min(delays) == pytest.approx(8.0)
    assert max(delays) > 11.9
    # jitter scales the exponential base, not a fixed amount
    e = Retry(backoff="exp", base_delay=10, jitter=0.2, max_delay=1000)
    assert 8.0 * 4 <= e.delay(3, 0.0) <= e.delay(3, 0.999) < 12.0 * 4


def test_max_delay_caps() -> None:
    r = Retry(backoff="exp", base_delay=1, jitter=0, max_delay=10)
    assert [r.delay(a, 0.5) for a in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert Retry(backoff="fixed", base_delay=60, jitter=0, max_delay=10).delay(1, 0.5) == 10.0
    # the cap is a true maximum: jitter does not push a capped delay above it
    jittered = Retry(backoff="exp", base_delay=1, jitter=0.5, max_delay=10)
    assert all(jittered.delay(a, u) <= 10.0 for a in range(1, 40) for u in (0.0, 0.5, 0.999))
    assert jittered.delay(30, 0.0) == pytest.approx(5.0)


def test_huge_attempt_numbers_saturate_instead_of_overflowing() -> None:
    r = Retry(backoff="exp", base_delay=1, jitter=0, max_delay=60, max_attempts=5000)
    assert r.delay(1100, 0.5) == 60.0
    assert r.delay(5000, 0.5) == 60.0


class Flaky(ConnectionResetError):
    pass


class Unrelated(Exception):
    pass


def test_retry_matches_exception_class_names_including_subclasses() -> None:
    flaky = ErrorInfo.of(Flaky("reset")).classes
    assert flaky[0] == "Flaky"
    assert {"ConnectionResetError", "ConnectionError", "OSError", "Exception"} <= set(flaky)

    assert Retry(on=OSError).retries(flaky)
    assert Retry(on=ConnectionError).retries(flaky)
    assert Retry(on=Flaky).retries(flaky)
    assert Retry(on=(ValueError, ConnectionError)).retries(flaky)
    assert not Retry(on=ValueError).retries(flaky)
    assert not Retry(on=(ValueError, KeyError)).retries(flaky)
    assert not Retry(on=Flaky).retries(ErrorInfo.of(OSError("base class")).classes)
    assert not Retry(on=Unrelated).retries(ErrorInfo.of(RuntimeError()).classes)

    # the default retries any Exception
    assert Retry().retries(ErrorInfo.of(Unrelated()).classes)
    assert Retry().retries(ErrorInfo.of(KeyError("k")).classes)
    # BaseException is left out of recorded class names, yet on=BaseException means "all"
    assert Retry(on=BaseException).retries(ErrorInfo.of(ValueError()).classes)
    assert Retry(on=BaseException).retries(ErrorInfo.of(KeyboardInterrupt()).classes)
    assert not Retry(on=ValueError).retries(ErrorInfo.of(KeyboardInterrupt()).classes)


def test_retry_describe_lists_class_names_sorted() -> None:
    described = Retry(on=(ValueError, KeyError)).describe()
    assert described["on"] == ["KeyError", "ValueError"]
    assert described["max_attempts"] == 1


def test_retry_rejects_bad_values() -> None:
    with pytest.raises(ValidationError):
        Retry(max_attempts=0)
    with pytest.raises(ValidationError):
        Retry(jitter=1.5)
    with pytest.raises(ValidationError):
        Retry(backoff="linear")  # type: ignore[arg-type]


# ---- Budget -------------------------------------------------------------------------------


def test_budget_arithmetic() -> None:
    a = Budget(tokens=1000, compute_h=0.5, spend_usd=1.25)
    b = Budget(tokens=250, compute_h=2, spend_usd=0.75)
    assert a + b == Budget(tokens=1250, compute_h=2.5, spend_usd=2.0)
    assert a * 4 == Budget(tokens=4000, compute_h=2.0, spend_usd=5.0)
    assert a * 0 == Budget()
    assert Budget() + Budget() == Budget()
    with pytest.raises(ValidationError):
        Budget(tokens=-1)
    with pytest.raises(ValidationError):
        Budget(gpu_h=1)  # type: ignore[call-arg]


def test_budget_over_names_each_dimension_exceeded() -> None:
    ceiling = Budget(tokens=2_000_000, compute_h=2, spend_usd=10)
    assert Budget(tokens=2_000_000, compute_h=2, spend_usd=10).over(ceiling) == []
    assert Budget(tokens=1, compute_h=0.1).over(ceiling) == []
    assert Budget(tokens=2_000_001).over(ceiling) == ["tokens 2000001 > 2000000"]
    over = Budget(tokens=5_000_000, compute_h=2.5, spend_usd=11).over(ceiling)
    assert [o.split()[0] for o in over] == ["tokens", "compute_h", "spend_usd"]
    assert over[1] == "compute_h 2.5 > 2"
    assert Budget(spend_usd=10.01).over(ceiling) == ["spend_usd 10.01 > 10"]
    # a zero ceiling allows nothing
    assert Budget(compute_h=0.001).over(Budget()) == ["compute_h 0.001 > 0"]


def test_budget_sum_of_fractions_fits_an_exact_ceiling() -> None:
    worst = Budget(compute_h=0.1, spend_usd=0.1) * 3
    assert worst.compute_h > 0.3  # 0.30000000000000004
    assert worst.over(Budget(compute_h=0.3, spend_usd=0.3)) == []
    assert Budget(compute_h=0.1) + Budget(compute_h=0.2) != Budget(compute_h=0.3)
    assert (Budget(compute_h=0.1) + Budget(compute_h=0.2)).over(Budget(compute_h=0.3)) == []


# ---- code digest --------------------------------------------------------------------------


async def _body_one(ctx: NodeContext, inputs: In) -> Out:
    return Out(y=inputs.x + 1)


async def _body_two(ctx: NodeContext, inputs: In) -> Out:
    return Out(y=inputs.x + 2)


def test_code_digest_changes_with_the_source() -> None:
    one = define_node("same-name", _body_one)
    two = define_node("same-name", _body_two)
    assert one.code_digest != two.code_digest
    # stable for the same function, and part of the description
    assert define_node("same-name", _body_one).code_digest == one.code_digest
    assert one.description["code"] == one.code_digest
    assert len(one.code_digest) == 16
    # the node name is part of it too
    assert define_node("other-name", _body_one).code_digest != one.code_digest


def test_code_digest_ignores_declarations_outside_the_body() -> None:
    a = define_node("n", _body_one, budget=Budget(tokens=1))
    b = define_node("n", _body_one, budget=Budget(tokens=2), timeout=5)
    assert a.code_digest == b.code_digest
    assert a.description != b.description


_NO_SOURCE_PROBE = textwrap.dedent(
    """
    from pydantic import BaseModel
    from orchestrator import define_node

    class M(BaseModel):
        x: int = 0

    body = '''
    async def run(ctx, inputs):
        doubled = [i * 2 for i in range(inputs.x)]
        helper = lambda v: v + 1
        if str(inputs.x) in {"alpha", "beta", "gamma", "delta"}:
            return M(x=helper(len(doubled)))
        return M(x=VARIANT)
    '''
    import sys
    scope = {"M": M}
    exec(body.replace("VARIANT", sys.argv[1]), scope)
    print(define_node("no-source", scope["run"], inputs=M, outputs=M).code_digest)
    """
)


def _no_source_digest(variant: str, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", _NO_SOURCE_PROBE, variant],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_code_digest_without_source_is_stable_across_processes() -> None:
    # no source to read (exec'd code): the digest comes from bytecode, whose nested code
    # objects and frozenset constants must not leak addresses or hash order into it
    first = _no_source_digest("1", "1")
    assert len(first) == 16
    assert _no_source_digest("1", "2") == first
    assert _no_source_digest("1", "3") == first
    assert _no_source_digest("2", "1") != first


def test_retry_never_retries_a_refusal_even_when_on_matches_it() -> None:
    from orchestrator.errors import BranchRefused, NodeError

    refused = ErrorInfo.of(BranchRefused("branch x exists")).classes
    assert Retry(max_attempts=3).retries(refused)
    assert not Retry(max_attempts=3, never=BranchRefused).retries(refused)
    assert not Retry(on=BaseException, never=(NodeError,)).retries(refused)
    assert Retry(never=BranchRefused).retries(ErrorInfo.of(OSError()).classes)
    # a policy without `never` describes itself as before (plan digests unchanged)
    assert "never" not in Retry().describe()
    assert Retry(never=BranchRefused).describe()["never"] == ["BranchRefused"]
