"""Identifiers shared by plans, the ledger and the runtime."""

from __future__ import annotations

from dataclasses import dataclass


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
