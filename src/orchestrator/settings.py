"""Settings files: defaults for the command line's options, in named profiles.

``orchestrator.toml`` (top-level keys, and ``[profiles.NAME]`` tables) or the
``[tool.orchestrator]`` table of ``pyproject.toml`` (``[tool.orchestrator.profiles.NAME]``),
found in the current directory or the nearest parent that has one, or named by
``--config`` / ``ORCHESTRATOR_CONFIG``. A profile's keys override the top-level ones.
Flags override environment variables, which override the file.

    ledger = "sqlite:///var/lib/orchestrator/ledger.db"
    objects = "s3://runs/checkpoints"
    sandbox = "gvisor"
    approvers = ["merge-approval=5f1c…"]
    notify = ["slack=env:SLACK_WEBHOOK"]
    budget = "tokens=2e6,spend=50"

    [profiles.local]
    objects = "checkpoints"    # relative paths are relative to the file
    sandbox = "bwrap"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

FILE_NAME = "orchestrator.toml"

# Each key a file may set -> the option's parameter name in the commands that take it.
GLOBAL_KEYS = {
    "home": "home",
    "ledger": "ledger",
    "objects": "objects",
    "store-grace": "store_grace",
}
COMMAND_KEYS = {
    "sandbox": "sandbox",
    "approvers": "approver",
    "allow": "allow",
    "budget": "budget",
    "prices": "prices",
    "llm": "llm",
    "model": "model",
    "notify": "notify",
    "receipts": "receipts",
    "receipt-every": "receipt_every",
    "checkpoint-every": "checkpoint_every",
    "concurrency": "concurrency",
}
KEYS = GLOBAL_KEYS | COMMAND_KEYS
LISTS = {"approvers", "notify", "receipts"}
PATHS = {"home", "prices", "objects"}  # relative to the file (objects: unless a URL)


@dataclass(frozen=True)
class Settings:
    """The settings one profile of one file gives, by key (``store-grace`` spelling)."""

    path: Path
    profile: str | None
    values: dict[str, Any] = field(default_factory=dict)
    from_profile: frozenset[str] = frozenset()

    @property
    def source(self) -> str:
        """The file, and the profile chosen: ``FILE`` or ``FILE [profile NAME]``."""
        return f"{self.path}" + (f" [profile {self.profile}]" if self.profile else "")

    def source_of(self, key: str) -> str:
        """Where ``key``'s value comes from: ``FILE`` or ``FILE [profile NAME]``."""
        return self.source if key in self.from_profile else str(self.path)

    def params(self, keys: dict[str, str]) -> dict[str, Any]:
        """The values of ``keys`` (GLOBAL_KEYS or COMMAND_KEYS), by parameter name."""
        return {keys[k]: v for k, v in self.values.items() if k in keys}


def find(start: Path) -> Path | None:
    """The nearest ``orchestrator.toml``, or ``pyproject.toml`` with ``[tool.orchestrator]``,
    in ``start`` or its parents."""
    for directory in (start, *start.parents):
        candidate = directory / FILE_NAME
        if candidate.is_file():
            return candidate
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and "orchestrator" in _read(pyproject).get("tool", {}):
            return pyproject
    return None


def load(path: Path | None, profile: str | None, start: Path | None = None) -> Settings | None:
    """The settings of ``profile`` (None: the top level) in ``path`` (None: found from
    ``start``, the current directory by default); None when there is no file."""
    if path is None:
        path = find((start or Path.cwd()).resolve())
        if path is None:
            if profile:
                raise ConfigError(
                    f"--profile {profile}: no {FILE_NAME} (or [tool.orchestrator] in "
                    "pyproject.toml) here or in a parent directory; name one with --config"
                )
            return None
    elif not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    table = _read(path)
    if path.name == "pyproject.toml":
        table = table.get("tool", {}).get("orchestrator", {})
    profiles = table.pop("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: `profiles` must be a table of [profiles.NAME] tables")
    values = _checked(path, "", table)
    chosen: dict[str, Any] = {}
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"--profile {profile}: {path} has no such profile (it has: {known})")
        chosen = _checked(path, f"profiles.{profile}.", profiles[profile])
    resolved = {k: _resolved(path, k, v) for k, v in (values | chosen).items()}
    return Settings(path, profile, resolved, frozenset(chosen))


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the settings file {path} is not valid TOML: {exc}") from None


def _checked(path: Path, where: str, table: Any) -> dict[str, Any]:
    """The table's settings under their canonical keys; unknown keys and wrong types refused."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `{where.rstrip('.')}` must be a table")
    values: dict[str, Any] = {}
    for raw, value in table.items():
        key = raw.replace("_", "-")
        if key not in KEYS:
            raise ConfigError(
                f"{path}: unknown setting `{where}{raw}`; known: {', '.join(sorted(KEYS))}"
            )
        if key in LISTS:
            value = [value] if isinstance(value, str) else value
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{path}: `{where}{raw}` must be a string or a list of strings")
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{path}: `{where}{raw}` must be a string or a number")
        values[key] = value
    return values


def _resolved(path: Path, key: str, value: Any) -> Any:
    if key in PATHS and isinstance(value, str) and "://" not in value:
        return str((path.parent / Path(value).expanduser()).resolve())
    return value
