"""One package per workload, holding its plan and its own agents.

A workload's plans are attributes of its package (``orchestrator.workloads.<name>:plan``),
the reference a run records, so moving modules inside a package never breaks a recorded
run. Its nodes live in ``nodes``; what several workloads share is in
:mod:`orchestrator.agents`.
"""
