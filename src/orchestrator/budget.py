"""Budgets: the value type, the price table, the meters, and the envelope with its
reservations.

A run's envelope is a ceiling on tokens, compute-hours and spend (USD). Before a node is
dispatched its declared worst case is reserved; a node whose worst case does not fit
what remains is refused before it starts. Inside a node, a model call whose maximum
cost would pass the attempt's limit (its reservation, or its declared worst case when
the run has no ceiling) is refused before it is sent. Because every attempt stays
within its reservation and the reservations never exceed the ceiling, usage never
passes the ceiling. An attempt that uses up its reservation (its sandbox's compute, or
what its model calls have left) is stopped and the run aborts as at the ceiling; resumed
with a fresh envelope, the attempt goes on with a fresh reservation (``renew``).

Everything here is derived from ledger events by :class:`BudgetBook`, part of the
RunState fold: meters (tokens by model from the journaled ``llm`` effects' usage,
sandbox wall-clock x vCPUs), reservations and the envelope.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import BudgetExceeded

# What a dimension no one limits holds (a ceiling's unnamed dimension, an undeclared one):
# more than any run can use, so it never binds, yet a plain number in the ledger.
UNLIMITED_TOKENS = 2**62
UNLIMITED_AMOUNT = 1e18


def is_unlimited(value: float) -> bool:
    """Whether an amount (a ceiling's, or what is left of one) stands for "no limit"."""
    return value >= UNLIMITED_AMOUNT / 10


# The ``--budget`` flag's names for the dimensions, by field.
FLAG_NAMES = {"tokens": "tokens", "compute_h": "compute_h", "spend_usd": "spend"}


def in_flag_names(text: str) -> str:
    """A recorded description (``spend_usd 2 > 1``) in the ``--budget`` flag's words."""
    return text.replace("spend_usd", FLAG_NAMES["spend_usd"])


# Marks a model call's recorded usage when no price matched its model, so it was priced at
# the fallback list price (``DEFAULT_MODEL_PRICES["*"]``); receipts list such models.
FALLBACK_PRICE = "fallback_price"


class Budget(BaseModel):
    """A worst case or a ceiling: model tokens, compute-hours and spend in USD."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = Field(default=0, ge=0)
    compute_h: float = Field(default=0.0, ge=0)
    spend_usd: float = Field(default=0.0, ge=0)

    def __add__(self, other: Budget) -> Budget:
        return Budget(
            tokens=self.tokens + other.tokens,
            compute_h=self.compute_h + other.compute_h,
            spend_usd=self.spend_usd + other.spend_usd,
        )

    def __mul__(self, times: int) -> Budget:
        return Budget(
            tokens=self.tokens * times,
            compute_h=self.compute_h * times,
            spend_usd=self.spend_usd * times,
        )

    def over(self, ceiling: Budget) -> list[str]:
        """The dimensions in which this budget exceeds ``ceiling``, described.

        Float dimensions (sums of fractions) that differ from the ceiling only by rounding
        error are not over it: 3 x 0.1 compute-hours fits a ceiling of 0.3.
        """
        out = [f"tokens {self.tokens} > {ceiling.tokens}"] if self.tokens > ceiling.tokens else []
        for dim in ("compute_h", "spend_usd"):
            mine, cap = getattr(self, dim), getattr(ceiling, dim)
            if mine > cap and not math.isclose(mine, cap, rel_tol=1e-9):
                out.append(f"{dim} {mine:.12g} > {cap:.12g}")
        return out


class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


# Public list prices (USD per million tokens) as of 2026; override per run in config.
# Patterns are shell globs, matched in order; "*" prices an unknown model conservatively.
DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    "scripted/*": ModelPrice(input_per_mtok=0, output_per_mtok=0),
    "claude-opus-4-5*": ModelPrice(input_per_mtok=5, output_per_mtok=25),
    "claude-opus-4*": ModelPrice(input_per_mtok=15, output_per_mtok=75),
    "claude-sonnet-4*": ModelPrice(input_per_mtok=3, output_per_mtok=15),
    "claude-haiku-4*": ModelPrice(input_per_mtok=1, output_per_mtok=5),
    "claude-3-5-haiku*": ModelPrice(input_per_mtok=0.8, output_per_mtok=4),
    "gpt-4o-mini*": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6),
    "gpt-4o*": ModelPrice(input_per_mtok=2.5, output_per_mtok=10),
    "gpt-4.1-mini*": ModelPrice(input_per_mtok=0.4, output_per_mtok=1.6),
    "gpt-4.1*": ModelPrice(input_per_mtok=2, output_per_mtok=8),
    "gpt-5*": ModelPrice(input_per_mtok=1.25, output_per_mtok=10),
    "*": ModelPrice(input_per_mtok=15, output_per_mtok=75),
}


class Prices(BaseModel):
    """The price table spend is computed from: per model per token, per compute-hour.

    ``models`` given in config are consulted before the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: dict[str, ModelPrice] = Field(default_factory=dict)
    compute_h_usd: float = Field(default=0.10, ge=0)

    def for_model(self, model: str) -> ModelPrice:
        for table in (self.models, DEFAULT_MODEL_PRICES):
            for pattern, price in table.items():
                if fnmatch.fnmatchcase(model, pattern):
                    return price
        return DEFAULT_MODEL_PRICES["*"]

    def listed(self, model: str) -> bool:
        """Whether a price is known for ``model``: a pattern of this table, or a default
        other than the fallback ``"*"`` (which prices an unknown model conservatively)."""
        defaults = (p for p in DEFAULT_MODEL_PRICES if p != "*")
        return any(fnmatch.fnmatchcase(model, p) for p in (*self.models, *defaults))

    def llm_spend(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.for_model(model)
        return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6

    def compute_spend(self, compute_h: float) -> float:
        return compute_h * self.compute_h_usd


@dataclass
class Spent:
    """A running total: tokens, compute-hours, spend."""

    tokens: int = 0
    compute_h: float = 0.0
    spend_usd: float = 0.0

    def add(self, tokens: int = 0, compute_h: float = 0.0, spend_usd: float = 0.0) -> None:
        self.tokens += tokens
        self.compute_h += compute_h
        self.spend_usd += spend_usd

    def as_budget(self) -> Budget:
        return Budget(tokens=self.tokens, compute_h=self.compute_h, spend_usd=self.spend_usd)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "compute_h": round(self.compute_h, 9),
            "spend_usd": round(self.spend_usd, 9),
        }


@dataclass
class NodeMeter:
    """One node instance's usage: all attempts, and the attempt in flight."""

    total: Spent = field(default_factory=Spent)
    attempt: Spent = field(default_factory=Spent)
    reserved: Budget | None = None
    wall_s: dict[str, float] = field(default_factory=dict)


@dataclass
class BudgetBook:
    """Meters, reservations and the envelope of one run (part of the RunState fold)."""

    ceiling: Budget | None
    prices: Prices
    total: Spent = field(default_factory=Spent)
    epoch: Spent = field(default_factory=Spent)
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, NodeMeter] = field(default_factory=dict)
    # models whose calls were priced at the fallback list price, none matching a price
    fallback_priced: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BudgetBook:
        ceiling = config.get("budget")
        prices = config.get("prices")
        return cls(
            ceiling=None if ceiling is None else Budget.model_validate(ceiling),
            prices=Prices() if prices is None else Prices.model_validate(prices),
        )

    def meter(self, node: str) -> NodeMeter:
        return self.nodes.setdefault(node, NodeMeter())

    # ---- events ---------------------------------------------------------------------

    def dispatched(self, node: str) -> None:
        meter = self.meter(node)
        meter.attempt, meter.reserved = Spent(), None

    def reserve(self, node: str, amount: Budget) -> None:
        self.meter(node).reserved = amount

    def release(self, node: str) -> None:
        """The attempt is over: its reservation gives way to what it actually used."""
        self.meter(node).reserved = None

    def charge_llm(self, node: str, model: str, usage: dict[str, float]) -> None:
        tokens = int(usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
        spend = float(usage.get("spend_usd", 0.0))
        self.tokens_by_model[model] = self.tokens_by_model.get(model, 0) + tokens
        if usage.get(FALLBACK_PRICE):
            self.fallback_priced.add(model)
        self._charge(node, tokens=tokens, spend_usd=spend)

    def charge_compute(self, node: str, sandbox: str, wall_s: float, vcpus: float) -> None:
        compute_h = wall_s * vcpus / 3600
        meter = self.meter(node)
        meter.wall_s[sandbox] = meter.wall_s.get(sandbox, 0.0) + wall_s
        self._charge(node, compute_h=compute_h, spend_usd=self.prices.compute_spend(compute_h))

    def _charge(
        self, node: str, tokens: int = 0, compute_h: float = 0.0, spend_usd: float = 0.0
    ) -> None:
        meter = self.meter(node)
        for spent in (self.total, self.epoch, meter.total, meter.attempt):
            spent.add(tokens, compute_h, spend_usd)

    def renew(self, node: str) -> None:
        """An attempt that used up its allowance goes on with a fresh one (its next
        reservation): its usage so far no longer counts against it."""
        self.meter(node).attempt = Spent()

    def replace(self, ceiling: Budget | None) -> None:
        """A fresh envelope: usage counts against the new ceiling from now on."""
        self.ceiling, self.epoch = ceiling, Spent()

    # ---- questions ------------------------------------------------------------------

    def committed(self) -> Budget:
        """Used in this envelope, plus what in-flight reservations may still use."""
        tokens, compute_h, spend = self.epoch.tokens, self.epoch.compute_h, self.epoch.spend_usd
        for meter in self.nodes.values():
            if meter.reserved is not None:
                tokens += max(0, meter.reserved.tokens - meter.attempt.tokens)
                compute_h += max(0.0, meter.reserved.compute_h - meter.attempt.compute_h)
                spend += max(0.0, meter.reserved.spend_usd - meter.attempt.spend_usd)
        return Budget(tokens=tokens, compute_h=compute_h, spend_usd=spend)

    def held(self) -> Budget:
        """What in-flight reservations may still use beyond what their attempts used:
        the part of :meth:`committed` that is reserved, not spent."""
        tokens, compute_h, spend = 0, 0.0, 0.0
        for meter in self.nodes.values():
            if meter.reserved is not None:
                tokens += max(0, meter.reserved.tokens - meter.attempt.tokens)
                compute_h += max(0.0, meter.reserved.compute_h - meter.attempt.compute_h)
                spend += max(0.0, meter.reserved.spend_usd - meter.attempt.spend_usd)
        return Budget(tokens=tokens, compute_h=compute_h, spend_usd=spend)

    def remaining(self) -> Budget | None:
        """What the envelope still admits (None: the run has no ceiling)."""
        if self.ceiling is None:
            return None
        used = self.committed()
        return Budget(
            tokens=max(0, self.ceiling.tokens - used.tokens),
            compute_h=max(0.0, self.ceiling.compute_h - used.compute_h),
            spend_usd=max(0.0, self.ceiling.spend_usd - used.spend_usd),
        )

    def admits(self, worst_case: Budget) -> list[str]:
        """Why ``worst_case`` cannot be reserved now (empty: it can)."""
        remaining = self.remaining()
        return [] if remaining is None else worst_case.over(remaining)


_UNDECLARED = Budget()


def attempt_limit(declared: Budget, reserved: bool) -> Budget | None:
    """What one attempt may use: its reservation when the run has a ceiling; otherwise its
    declared worst case in each dimension it declares (zero means "not declared")."""
    if reserved:
        return declared
    if declared == _UNDECLARED:
        return None
    return Budget(
        tokens=declared.tokens or UNLIMITED_TOKENS,
        # kept as declared, not widened: model calls keep room in the spend limit for a
        # declared compute_h's charge, and undeclared compute needs none (a widened one
        # would leave no room at all, refusing every priced call)
        compute_h=declared.compute_h,
        spend_usd=declared.spend_usd or UNLIMITED_AMOUNT,
    )


def check_call(
    node: str,
    limit: Budget | None,
    used: Spent,
    prices: Prices,
    model: str,
    max_input: int,
    max_output: int,
) -> None:
    """Refuse (BudgetExceeded) a model call whose maximum cost would pass ``limit``."""
    if limit is None:
        return
    max_tokens = max_input + max_output
    price = prices.for_model(model)
    max_spend = (max_input * price.input_per_mtok + max_output * price.output_per_mtok) / 1e6
    problems, over = [], []
    if used.tokens + max_tokens > limit.tokens:
        left = max(0, limit.tokens - used.tokens)
        problems.append(f"up to {max_tokens} tokens, {left} left of {limit.tokens}")
        over.append("tokens")
    spend_left = limit.spend_usd - used.spend_usd
    if max_spend > spend_left and not math.isclose(max_spend, spend_left, rel_tol=1e-9):
        problems.append(
            f"up to ${max_spend:.6f}, ${max(0.0, spend_left):.6f} left of ${limit.spend_usd:g}"
        )
        over.append("spend_usd")
    if problems:
        alone_fits = max_tokens <= limit.tokens and (
            max_spend <= limit.spend_usd or math.isclose(max_spend, limit.spend_usd, rel_tol=1e-9)
        )
        raise BudgetExceeded(
            f"node {node} refused a call to {model} before sending it: "
            + "; ".join(problems)
            + " (raise the node's declared budget, or lower max_tokens)",
            over=tuple(over),
            used_up=alone_fits,
        )
