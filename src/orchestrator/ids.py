"""Identifiers shared by plans, the ledger and the runtime."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Ref:
    """An output port of a plan node; of a mapped node it stands for the list of all items'."""

    node: str
    port: str

    @classmethod
    def parse(cls, text: str) -> Ref:
        node, sep, port = text.rpartition(".")
        if not sep or not node or not port:
            raise ValueError(f"expected NODE.PORT, got {text!r}")
        return cls(node, port)

    def __str__(self) -> str:
        return f"{self.node}.{self.port}"


@dataclass(frozen=True, slots=True)
class NodeId:
    """A node instance: a plan node's name, with the item's index if the node is mapped."""

    base: str
    index: int | None = None

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """``name`` or ``name[index]``; exactly the text ``str()`` gives back."""
        base, sep, rest = text.partition("[")
        digits = rest[:-1]
        if not base:
            raise ConfigError(f"expected NAME or NAME[INDEX], got {text!r}")
        if not sep:
            return cls(base)
        if not (rest.endswith("]") and digits.isascii() and digits.isdigit()) or (
            digits != "0" and digits.startswith("0")
        ):
            raise ConfigError(f"expected NAME or NAME[INDEX], got {text!r}")
        return cls(base, int(digits))

    def __str__(self) -> str:
        return self.base if self.index is None else f"{self.base}[{self.index}]"
