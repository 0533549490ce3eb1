"""A small CommonJS npm-workspaces monorepo, generated for the demo to migrate."""

from __future__ import annotations

import json
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.workloads.demo.nodes import GIT_ENV

PACKAGE_NAMES = ("api", "billing", "core", "search", "ui", "worker", "auth", "mailer", "jobs")


def make_monorepo(parent: Path, packages: int) -> Path:
    """Write a small CommonJS npm-workspaces monorepo as a fresh git repository."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    repo = parent / f"monorepo-{stamp}-{secrets.token_hex(2)}"
    names = [PACKAGE_NAMES[i] if i < len(PACKAGE_NAMES) else f"pkg{i}" for i in range(packages)]
    _write_json(
        repo / "package.json", {"name": "acme", "private": True, "workspaces": ["packages/*"]}
    )
    for name in names:
        src = repo / "packages" / name / "src"
        src.mkdir(parents=True)
        _write_json(
            repo / "packages" / name / "package.json",
            {"name": f"@acme/{name}", "version": "1.0.0", "main": "src/index.js"},
        )
        (src / "index.js").write_text(
            "'use strict';\n"
            "const util = require('util');\n"
            "const format = require('./format');\n"
            f"function handle(input) {{ return format(util.inspect(input), '{name}'); }}\n"
            "module.exports = { handle };\n"
        )
        (src / "format.js").write_text(
            "'use strict';\n"
            "const path = require('path');\n"
            "module.exports = function format(text, scope) { return path.join(scope, text); };\n"
        )
    for argv in (
        ["git", "init", "--quiet", "--initial-branch=main"],
        ["git", "add", "--all"],
        ["git", "commit", "--quiet", "-m", "acme monorepo (CommonJS)"],
    ):
        subprocess.run(argv, cwd=repo, env={**GIT_ENV, "PATH": "/usr/bin:/bin"}, check=True)
    return repo


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
