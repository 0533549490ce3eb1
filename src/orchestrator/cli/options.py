"""Options shared between commands, and the parsers that turn their text into a run's
inputs, budget, configuration and price table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from orchestrator.errors import ConfigError
from orchestrator.runid import check_run_id

if TYPE_CHECKING:
    from orchestrator.budget import Budget, Prices
    from orchestrator.config import RunConfig


def _parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` gives a string (Pydantic converts it to the declared type); ``k:=JSON`` JSON."""
    values: dict[str, Any] = {}
    for pair in pairs:
        if ":=" in pair:
            key, _, raw = pair.partition(":=")
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"--input {pair!r}: the value after := is not JSON ({exc})"
                ) from None
        elif "=" in pair:
            key, _, raw = pair.partition("=")
            values[key] = raw
        else:
            raise ConfigError(f"--input {pair!r}: expected KEY=VALUE or KEY:=JSON")
    return values


def _parse_budget(text: str | None) -> Budget | None:
    """``tokens=N,compute_h=H,spend=USD``: all three, so no dimension is zero by accident."""
    from pydantic import ValidationError

    from orchestrator.budget import Budget

    if not text:
        return None
    names = {
        "tokens": "tokens",
        "compute_h": "compute_h",
        "spend": "spend_usd",
        "spend_usd": "spend_usd",
    }
    fields: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in names:
            raise ConfigError(
                f"--budget {text!r}: unknown dimension {key!r} (tokens, compute_h, spend)"
            )
        try:
            fields[names[key.strip()]] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {text!r}: {value!r} is not a number") from None
    missing = {"tokens", "compute_h", "spend_usd"} - fields.keys()
    if missing:
        raise ConfigError(
            f"--budget {text!r}: name every dimension of the ceiling (tokens, compute_h, "
            f"spend); missing {', '.join(sorted(missing))}. A dimension you do not want to "
            "limit can be given a large number."
        )
    try:
        return Budget(
            tokens=int(fields["tokens"]),
            compute_h=fields["compute_h"],
            spend_usd=fields["spend_usd"],
        )
    except ValidationError as exc:
        raise ConfigError(f"--budget {text!r}: {exc.errors()[0]['msg']}") from None


def _config(
    allow: str | None,
    approvers: list[str],
    budget: str | None,
    concurrency: int,
    sandbox: str = "auto",
    **extra: Any,
) -> RunConfig:
    from pydantic import ValidationError

    from orchestrator.config import SANDBOX_CHOICES, RunConfig

    gates: dict[str, list[str]] = {}
    for item in approvers:
        gate, sep, key = item.partition("=")
        if not sep or not gate or not key:
            raise ConfigError(f"--approver {item!r}: expected GATE=PUBLIC_KEY")
        gates.setdefault(gate, []).append(key)
    if sandbox not in SANDBOX_CHOICES:
        raise ConfigError(f"--sandbox {sandbox!r}: choose auto, gvisor, bwrap or local")
    kwargs: dict[str, Any] = {
        "sandbox": sandbox,
        "approvers": gates,
        "budget": _parse_budget(budget),
        "concurrency": concurrency,
        **{k: v for k, v in extra.items() if v is not None},
    }
    if allow is not None:
        kwargs["allow_effects"] = frozenset(e.strip() for e in allow.split(",") if e.strip())
    try:
        return RunConfig(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"bad run configuration: {problems}") from None


def _prices(path: Path | None) -> Prices | None:
    from pydantic import ValidationError

    from orchestrator.budget import Prices

    if path is None:
        return None
    try:
        return Prices.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"--prices {path}: cannot read it ({exc.strerror})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"--prices {path}: not a price table ({problems}); expected JSON like "
            '{"models": {"claude-sonnet-4*": {"input_per_mtok": 3, "output_per_mtok": 15}}, '
            '"compute_h_usd": 0.1}'
        ) from None


def _run_id(value: str) -> str:
    return check_run_id(value)


RunArg = typer.Argument(..., metavar="RUN", callback=_run_id)
AllowOpt = typer.Option(None, "--allow", help="Effects the run allows, e.g. fs,net [default: all]")
ApproverOpt = typer.Option([], "--approver", help="GATE=PUBLIC_KEY (repeatable)")
BudgetOpt = typer.Option(None, "--budget", help="Ceiling, e.g. tokens=2e6,compute_h=4,spend=50")
ConcurrencyOpt = typer.Option(256, "--concurrency", min=1, help="Nodes running at once")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output")
NotifyOpt = typer.Option(
    [],
    "--notify",
    help="Run notices to slack=URL|env:VAR, webhook=URL|env:VAR, file=PATH or s3=URL "
    "(repeatable). Each sink gets every event (a gate waits, the run aborted, failed or "
    "succeeded) unless narrowed: 'webhook=URL#events=abort,failure' "
    "(from gate, abort, failure, success)",
)
ReceiptsOpt = typer.Option(
    [],
    "--receipts",
    help="Receipt sinks: file=PATH, webhook=…, slack=…, s3=URL [default: file in home]",
)
ReceiptEveryOpt = typer.Option(3600.0, "--receipt-every", min=0.01, help="Seconds between receipts")
LlmOpt = typer.Option(
    None, "--llm", help="Model provider: anthropic[@URL], openai[@URL] or scripted:FILE"
)
ModelOpt = typer.Option(None, "--model", help="Default model for ctx.llm calls")
PricesOpt = typer.Option(None, "--prices", help="JSON price table overriding the defaults")
SandboxOpt = typer.Option("auto", "--sandbox", help="auto, gvisor, bwrap or local (no isolation)")
WorkspaceRootOpt = typer.Option(
    [],
    "--workspace-root",
    help="A directory nodes may work on, besides the current one (repeatable)",
)
