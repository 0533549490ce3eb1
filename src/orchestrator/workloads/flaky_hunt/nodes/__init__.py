"""The flaky hunt's agent nodes, one module per stage, each doing real work with the
repository's own test runner inside a sandbox: ``fetch`` (repo-fetch), ``reruns``
(rerun-planner, flake-rerunner, flake-report), ``bisector`` (bisector, repro-builder),
``fixer`` (fix-proposer) and ``publish`` (pr-author, pr-open, notifier). ``repo-intake``
is shared by workloads: :mod:`orchestrator.agents.intake`."""
