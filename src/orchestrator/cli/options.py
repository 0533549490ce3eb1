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
    """``tokens=N,compute_h=H,spend=USD``, any of them: a dimension not named is unlimited."""
    from pydantic import ValidationError

    from orchestrator.budget import FLAG_NAMES, UNLIMITED_AMOUNT, UNLIMITED_TOKENS, Budget

    if not text:
        return None
    fields_by_flag = {flag: field for field, flag in FLAG_NAMES.items()}
    fields_by_flag["spend_usd"] = "spend_usd"  # the field's own name is accepted too
    fields: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in fields_by_flag:
            raise ConfigError(
                f"--budget {text!r}: unknown dimension {key!r}; name any of tokens, "
                "compute_h, spend (a dimension not named is unlimited)"
            )
        try:
            fields[fields_by_flag[key]] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {text!r}: {key}={value!r} is not a number") from None
    try:
        return Budget(
            tokens=int(fields.get("tokens", UNLIMITED_TOKENS)),
            compute_h=fields.get("compute_h", UNLIMITED_AMOUNT),
            spend_usd=fields.get("spend_usd", UNLIMITED_AMOUNT),
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = FLAG_NAMES.get(str(error["loc"][0]), str(error["loc"][0]))
        raise ConfigError(f"--budget {text!r}: {flag}: {error['msg']}") from None


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
AllowOpt = typer.Option(
    None,
    "--allow",
    help="Effects the run lets nodes declare, e.g. fs,net; a plan with a node that declares "
    "another is refused before anything runs [default: all: fs, net, host-net, llm]. "
    "Permissive on purpose: each node still gets only the effects it declares (no network "
    "without net, no model without llm), so for your own plans a narrower default would "
    "only repeat their declarations; restrict it for plans you did not write.",
)
ApproverOpt = typer.Option([], "--approver", help="GATE=PUBLIC_KEY (repeatable)")
BudgetOpt = typer.Option(
    None,
    "--budget",
    help="Ceiling: any of tokens=N, compute_h=H, spend=USD, e.g. tokens=2e6,spend=50 "
    "(a dimension not named is unlimited)",
)
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
PricesOpt = typer.Option(
    None,
    "--prices",
    help='A JSON price table, e.g. {"models": {"llama-3*": {"input_per_mtok": 0.2, '
    '"output_per_mtok": 0.6}}, "compute_h_usd": 0.1}: USD per million input and output '
    "tokens by model-name glob (tried in order, before the built-in list prices) and USD "
    "per compute-hour [default: 0.1]. A model no pattern matches is charged the fallback "
    "list price ($15 in, $75 out), with a warning, and receipts list it.",
)
SandboxOpt = typer.Option("auto", "--sandbox", help="auto, gvisor, bwrap or local (no isolation)")
WorkspaceRootOpt = typer.Option(
    [],
    "--workspace-root",
    help="A directory nodes may work on, besides the current one (repeatable)",
)
