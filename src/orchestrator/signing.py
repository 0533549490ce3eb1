"""Ed25519 keys and signatures (``cryptography``) over canonical bytes.

A key pair lives in two files: ``NAME.key`` (the raw 32-byte private key, hex, mode 0600)
and ``NAME.pub`` (the public key, hex). Public keys travel as hex strings; signatures are
hex. Nothing here ever logs or returns a private key's bytes.

Keys live in a per-user directory (:func:`key_dir`, mode 0700), never in the
orchestrator's home: the home may lie inside a repository that a run works on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import SigningError

# ``cryptography`` is imported where a key is made, loaded or checked, not with this
# module: importing the package (or reading a fingerprint) should not pay for it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


@dataclass(frozen=True)
class Signer:
    """A private key that signs, and the public key (hex) that checks it."""

    private: Ed25519PrivateKey
    public: str

    def sign(self, data: bytes) -> str:
        return self.private.sign(data).hex()

    def __repr__(self) -> str:
        return f"Signer(public={self.public[:16]}…)"


def key_dir() -> Path:
    """``$ORCHESTRATOR_KEYS``, else ``$XDG_CONFIG_HOME/orchestrator/keys`` (by default
    ``~/.config/orchestrator/keys``)."""
    explicit = os.environ.get("ORCHESTRATOR_KEYS")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "orchestrator" / "keys"


def adopt_legacy(old: Path, new: Path) -> None:
    """Move every key file older versions kept in ``old`` (the home's ``keys/runs``) to
    ``new``; one that exists in both places stays where it is, never overwritten."""
    if not old.is_dir():
        return
    _private_dir(new)
    for source in sorted(old.glob("*")):
        target = new / source.name
        if source.suffix not in (".key", ".pub") or not source.is_file() or target.exists():
            continue
        target.write_bytes(source.read_bytes())
        target.chmod(0o600 if source.suffix == ".key" else 0o644)
        source.unlink()


def generate() -> Signer:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    return Signer(key, _public_hex(key.public_key()))


def save(signer: Signer, path: Path) -> None:
    """Write ``path`` (private, 0600, created exclusively) and ``path.pub``."""
    raw = signer.private.private_bytes_raw()
    try:
        _private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(raw.hex() + "\n")
        path.with_suffix(".pub").write_text(signer.public + "\n")
    except OSError as exc:
        raise SigningError(f"cannot write signing key {path} ({exc.strerror})") from None


def load(path: Path) -> Signer:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        raw = bytes.fromhex(path.read_text().strip())
        key = Ed25519PrivateKey.from_private_bytes(raw)
    except FileNotFoundError:
        raise SigningError(f"signing key {path} is missing") from None
    except OSError as exc:
        raise SigningError(f"signing key {path} cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise SigningError(f"signing key {path} is not a valid Ed25519 key: {exc}") from None
    return Signer(key, _public_hex(key.public_key()))


def load_or_create(path: Path) -> Signer:
    return load(path) if path.exists() else _created(path)


def verify(public: str, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) is ``public``'s (hex) signature of ``data``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
        key.verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(public: str) -> str:
    """A short, stable name for a public key: ``SHA256:`` and 16 hex digits of its hash."""
    return "SHA256:" + hashlib.sha256(bytes.fromhex(public)).hexdigest()[:16]


def _private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can enter."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another process (a concurrent first run) made it
            if not directory.is_dir():
                raise
            continue
        directory.chmod(0o700)


def _created(path: Path) -> Signer:
    signer = generate()
    save(signer, path)
    return signer


def _public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes_raw().hex()
