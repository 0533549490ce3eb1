"""RunConfig: what a run allows, what it may spend, and where it reports."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from orchestrator.budget import Budget, Prices
from orchestrator.node import KNOWN_EFFECTS
from orchestrator.sandbox.base import BACKENDS, BackendName
from orchestrator.sinks.base import SinkConfig

SandboxChoice = Literal["auto", BackendName]
SANDBOX_CHOICES: tuple[SandboxChoice, ...] = ("auto", *BACKENDS)


class RunConfig(BaseModel):
    """What a run allows and where it reports: effects, approvers (Ed25519 public keys,
    hex) per gate, a budget ceiling and prices, concurrency, sandbox, checkpoint and
    receipt intervals, the sinks for gate notices and receipts, the model provider.

    The config is recorded in the ledger: nothing secret belongs here (sink URLs may
    name an environment variable as ``env:NAME``; API keys come from the environment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_effects: frozenset[str] = KNOWN_EFFECTS
    approvers: dict[str, list[str]] = Field(default_factory=dict)
    budget: Budget | None = None
    prices: Prices = Field(default_factory=Prices)
    concurrency: int = Field(default=256, ge=1)
    sandbox: SandboxChoice = "auto"
    warm: int = Field(default=2, ge=0)
    checkpoint_interval: float = Field(default=60.0, gt=0)
    receipt_interval: float = Field(default=3600.0, gt=0)
    notify: list[SinkConfig] = Field(default_factory=list)
    receipts: list[SinkConfig] = Field(default_factory=list)
    delivery_attempts: int = Field(default=5, ge=1, le=20)
    delivery_backoff: float = Field(default=0.5, ge=0, le=60)
    llm: str | None = None
    model: str | None = None
    workspace_roots: list[str] | None = None
    """Directories nodes may work on (resolved); filled in when the run starts."""
    objects: str | None = None
    """The object store the run's checkpoints go to (a URL or an absolute directory);
    filled in when the run starts, so later commands find them without being told."""

    @field_serializer("allow_effects")
    def _sorted(self, effects: frozenset[str]) -> list[str]:
        return sorted(effects)
