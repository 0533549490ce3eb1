"""Optional dependencies (extras): a feature whose SDK is not installed says, in one
paragraph, which extra to install — here with the SDK hidden from the importer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from orchestrator import Runtime
from orchestrator.errors import ConfigError, MissingExtra
from orchestrator.extras import EXTRAS
from orchestrator.models.factory import open_provider
from orchestrator.storage.objects import open_object_store
from tests.conftest import PLANS, cli


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``import module`` fail as if it were not installed."""
    monkeypatch.setitem(sys.modules, module, None)


def test_every_optional_module_is_an_extra_of_the_package() -> None:
    assert EXTRAS == {"boto3": "s3", "anthropic": "anthropic", "openai": "openai"}


def test_an_s3_store_without_boto3_names_the_s3_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "boto3")
    with pytest.raises(MissingExtra) as caught:
        open_object_store("s3://bucket/prefix?region=us-east-1")
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and caught.value.extra == "s3"
    assert "'s3://bucket/prefix?region=us-east-1'" in message and "'boto3'" in message
    assert "pip install 'orchestrator[s3]'" in message and "\n" not in message


@pytest.mark.parametrize(
    ("spec", "module"),
    [("anthropic", "anthropic"), ("openai", "openai"), ("openai@http://127.0.0.1:9/v1", "openai")],
)
def test_a_model_provider_without_its_sdk_names_its_extra(
    spec: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    hide(monkeypatch, module)
    with pytest.raises(MissingExtra) as caught:
        open_provider(spec)
    assert f"pip install 'orchestrator[{module}]'" in str(caught.value)
    assert f"--llm {module}" in str(caught.value)


def test_the_command_line_prints_one_paragraph_and_records_nothing(
    home: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "boto3"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'boto3'\", name='boto3')\n"
    )
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])
    result = cli(
        home,
        "--objects",
        "s3://bucket/prefix",
        "run",
        f"{PLANS / 'basic.py'}:plan",
        "--input",
        "text=x",
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "pip install 'orchestrator[s3]'" in " ".join(result.stderr.split())
    with Runtime(home=home) as rt:
        assert rt.store.runs() == []
