"""The trust directory: what authenticates a run's ledger, kept outside that ledger.

Per run, two files in a per-user directory outside the orchestrator home
(``$ORCHESTRATOR_TRUST``, else ``$XDG_CONFIG_HOME/orchestrator/trust``, else
``~/.config/orchestrator/trust``):

    pins/RUN.pub     the run's public keys (hex), one a line, oldest first; the last one
                     signs the run's heads from now on (a run restored on another machine
                     gets a new key, appended)
    heads/RUN.json   the newest signed head: run, sequence number and chained hash of the
                     last committed event, the newest checkpoint's cut, and the signature

The signed head's form is :mod:`orchestrator.ledger.head`. The ledger keeps a copy of the
newest signed head in the same transaction as the events it covers; this directory keeps
one too, so a ledger rolled back or truncated to an older state (with its older signed
head) is caught by the head kept here.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.ledger.head import SignedHead

HEAD_SIZE = 1024  # a kept head is padded to this many bytes, so each write covers the last
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_dir() -> Path:
    explicit = os.environ.get("ORCHESTRATOR_TRUST")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "orchestrator" / "trust"


class TrustStore:
    """Pins and newest signed heads of runs, one directory per user."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_dir()).absolute()
        self._heads: dict[str, int] = {}

    def pinned(self, run_id: str) -> list[str]:
        """The run's pinned public keys, oldest first (empty if it has none)."""
        path = self._path("pins", run_id, ".pub")
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise self._unusable(path, exc) from None
        return [line.strip() for line in text.splitlines() if line.strip()]

    def pin(self, run_id: str, public: str) -> None:
        """Add ``public`` as the run's current key (no-op if it already is)."""
        keys = self.pinned(run_id)
        if keys and keys[-1] == public:
            return
        keys = [k for k in keys if k != public] + [public]
        self._write(self._path("pins", run_id, ".pub"), "".join(k + "\n" for k in keys))

    def head(self, run_id: str) -> SignedHead | None:
        """The newest signed head kept here, or None (a damaged file counts as none:
        the ledger's own signed head is then the one checked)."""
        path = self._path("heads", run_id, ".json")
        try:
            return SignedHead.from_json(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._unusable(path, exc) from None

    def put_head(self, head: SignedHead) -> None:
        """Overwrite the run's kept head in place: one ``pwrite`` into a file kept open,
        padded to a fixed size (a rename per commit would cost a millisecond). A process
        kill cannot tear it; a power loss can, and a torn head reads as none."""
        data = head.to_json().encode().ljust(HEAD_SIZE - 1) + b"\n"
        fd = self._heads.get(head.run_id)
        opened = fd is None
        try:
            if fd is None:
                path = self._path("heads", head.run_id, ".json")
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = self._heads[head.run_id] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(fd, data, 0)
            if len(data) > HEAD_SIZE or (opened and os.fstat(fd).st_size > len(data)):
                os.ftruncate(fd, len(data))  # only for run ids too long for the usual size
        except OSError as exc:
            raise self._unusable(self._path("heads", head.run_id, ".json"), exc) from None

    def close(self) -> None:
        for fd in self._heads.values():
            os.close(fd)
        self._heads.clear()

    def _path(self, kind: str, run_id: str, suffix: str) -> Path:
        name = (
            run_id
            if _SAFE.fullmatch(run_id)
            else "x-" + hashlib.sha256(run_id.encode("utf-8", "surrogateescape")).hexdigest()
        )
        return self.root / kind / (name + suffix)

    def _write(self, path: Path, text: str) -> None:
        """Replace ``path`` atomically and durably (temporary file, fsync, rename)."""
        temporary = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            raise self._unusable(path, exc) from None

    def _unusable(self, path: Path, exc: Exception) -> ConfigError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ConfigError(
            f"the trust directory {self.root} (which pins run keys) cannot be used: {path}: "
            f"{reason}; fix it, or point ORCHESTRATOR_TRUST at a private directory"
        )
