"""Model providers: one request shape, one completion shape, several backends.

``open_provider(spec)`` picks a backend from a spec string (``anthropic``,
``openai@http://127.0.0.1:8000/v1``, ``scripted:answers.jsonl``); each vendor SDK is
imported only when its provider is opened, so importing this package stays cheap.
"""

from orchestrator.errors import ProviderError
from orchestrator.models.anthropic import AnthropicProvider
from orchestrator.models.base import Completion, CompletionRequest, Message, Provider, Usage
from orchestrator.models.factory import open_provider
from orchestrator.models.openai_compat import OpenAICompatProvider
from orchestrator.models.scripted import ScriptedProvider

__all__ = [
    # The request and its answer
    "Message",
    "CompletionRequest",
    "Completion",
    "Usage",
    # The contract and its error
    "Provider",
    "ProviderError",
    # Backends
    "open_provider",
    "AnthropicProvider",
    "OpenAICompatProvider",
    "ScriptedProvider",
]
