"""The public API is what `orchestrator/__init__.py` exports: pinned, so it never changes by
accident. Changing it is a decision — update this list in the same commit."""

import orchestrator

PUBLIC = [
    "Budget",
    "Limits",
    "NodeSpec",
    "Retry",
    "define_node",
    "node",
    "Const",
    "Input",
    "Plan",
    "PlanProblem",
    "Ref",
    "RunConfig",
    "ModelPrice",
    "Prices",
    "SinkConfig",
    "ExecResult",
    "NodeContext",
    "RunState",
    "Runtime",
    "RunHandle",
    "Clock",
    "ManualClock",
    "SystemClock",
    "EffectFailed",
    "ExecFailed",
    "NodeTimeout",
    "NonDeterminism",
    "OrchestratorError",
    "PlanInvalid",
    "UserError",
]


def test_the_public_api_is_pinned() -> None:
    assert orchestrator.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(orchestrator, name) is not None
