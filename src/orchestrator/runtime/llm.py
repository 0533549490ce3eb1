"""The run's model provider, opened on the first live model call and closed at the end.

Resume and replay serve recorded calls from the journal, so a run that never makes a
new call never opens a provider (and never needs its API key).
"""

from __future__ import annotations

from orchestrator.models.base import Provider
from orchestrator.models.factory import open_provider


class RunModels:
    """``ModelSource`` for one run: provider spec (no secrets) and default model."""

    def __init__(self, spec: str, model: str | None) -> None:
        self.spec = spec
        self.name = spec.split("@", 1)[0].split(":", 1)[0]
        self.model = model
        self._provider: Provider | None = None

    def billed_as(self, model: str) -> str:
        """Answers name the model that gave them; the scripted provider labels its own
        ``scripted/<model>``, so a call is checked at the price it will be charged."""
        return f"scripted/{model}" if self.name == "scripted" else model

    async def get(self) -> Provider:
        if self._provider is None:
            self._provider = open_provider(self.spec)
        return self._provider

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()
            self._provider = None
