"""The budget an agent node declares: its worst case, reserved only under a run ceiling."""

from __future__ import annotations

from orchestrator.budget import Budget, Prices


def worst_case(seconds: float, tokens: int = 0, llm_usd: float = 0.0) -> Budget:
    """A node's declared worst case: its whole timeout of one vCPU (priced at the default
    compute price) plus what its model calls may cost. Reserved only under a ceiling."""
    compute_h = seconds / 3600
    return Budget(
        tokens=tokens, compute_h=compute_h, spend_usd=Prices().compute_spend(compute_h) + llm_usd
    )
