"""Agents that several workloads share: repository intake (``intake``), test runners and
their output parsers (``runners``), the GitHub client (``github``), host-side steps nodes
record as tools (``host``) and the budget a node declares (``budgets``). A workload's own
agents live in its package under :mod:`orchestrator.workloads`."""
