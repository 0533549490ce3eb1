"""Opening a provider from a spec string.

Specs are recorded in run config, so they name an endpoint and never carry a secret:
keys come from the environment (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``) and a URL
with a user or password in it is refused. Without a URL, the vendor's public endpoint is
pinned explicitly rather than left to the SDKs' ``*_BASE_URL`` environment variables, so
the recorded spec alone says where calls went.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, overload
from urllib.parse import urlsplit

from orchestrator.errors import ConfigError, MissingExtra
from orchestrator.extras import require
from orchestrator.models.base import Provider, redact

SPEC_FORMS = (
    "anthropic, anthropic@BASE_URL (key from ANTHROPIC_API_KEY), "
    "openai, openai@BASE_URL (key from OPENAI_API_KEY; optional when BASE_URL is given), "
    "scripted:PATH (canned answers from a JSONL file)"
)
KEY_VARIABLES = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def open_provider(spec: str) -> Provider:
    """Open the provider a spec names; bad specs and missing keys are ConfigErrors.

    Error messages quote the spec, with any key from the environment redacted: a key
    pasted in place of a spec must not come back out in an error.
    """
    try:
        return _open(spec)
    except MissingExtra:
        raise
    except ConfigError as exc:
        secrets = tuple(os.environ.get(name, "") for name in KEY_VARIABLES)
        raise ConfigError(redact(str(exc), secrets)) from None


def _open(spec: str) -> Provider:
    if spec.startswith("scripted:"):
        from orchestrator.models.scripted import ScriptedProvider

        path = spec.removeprefix("scripted:")
        if not path:
            raise ConfigError(f"model spec {spec!r} names no file; use scripted:PATH")
        return ScriptedProvider(Path(path))
    kind, _, base_url = spec.partition("@")
    if kind == "anthropic":
        from orchestrator.models.anthropic import AnthropicProvider

        url = _base_url(spec, base_url)
        require("anthropic", "the anthropic model provider (--llm anthropic)")
        return AnthropicProvider(_key("ANTHROPIC_API_KEY", spec, required=True), url)
    if kind == "openai":
        from orchestrator.models.openai_compat import PLACEHOLDER_KEY, OpenAICompatProvider

        url = _base_url(spec, base_url)
        require("openai", "the openai model provider (--llm openai)")
        key = _key("OPENAI_API_KEY", spec, required=url is None)
        return OpenAICompatProvider(key or PLACEHOLDER_KEY, url)
    raise ConfigError(f"unknown model spec {spec!r}; accepted forms: {SPEC_FORMS}")


def _base_url(spec: str, url: str) -> str | None:
    if "@" not in spec:
        return None
    kind = spec.split("@", 1)[0]
    try:
        parts = urlsplit(url)
        has_host = bool(parts.hostname)
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError:
        parts, has_host, has_credentials = None, False, False
    if has_credentials:
        raise ConfigError(
            f"model spec {kind}@...: the URL carries credentials; specs are recorded in run "
            "config, so keys belong in the environment, not in the URL"
        )
    if parts is None or parts.scheme not in ("http", "https") or not has_host:
        raise ConfigError(
            f"model spec {kind}@...: what follows @ must be an http(s) URL with a host, "
            f"e.g. {kind}@http://127.0.0.1:8000{'/v1' if kind == 'openai' else ''}"
        )
    return url


@overload
def _key(variable: str, spec: str, *, required: Literal[True]) -> str: ...
@overload
def _key(variable: str, spec: str, *, required: bool) -> str | None: ...
def _key(variable: str, spec: str, *, required: bool) -> str | None:
    value = os.environ.get(variable)
    if value:
        return value
    if required:
        raise ConfigError(
            f"model spec {spec!r} needs an API key, and {variable} is not set. Export "
            f"{variable} in the environment the Orchestrator runs in; keys are read from "
            "there on purpose, so they never land in a spec or in the recorded run config."
        )
    return None
