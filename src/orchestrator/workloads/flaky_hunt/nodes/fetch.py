"""``repo-fetch`` clones the repository at the hunt's bad revision (a recorded host step),
with the marker files ``repo-intake`` detects the test runner from."""

from __future__ import annotations

from orchestrator.agents import host, runners
from orchestrator.agents.intake import Fetched
from orchestrator.errors import TransientError
from orchestrator.node import Retry, node
from orchestrator.runtime.context import NodeContext
from orchestrator.workloads.flaky_hunt.ports import HuntInputs


@node(
    "repo-fetch",
    effects={"net"},
    timeout=900,
    retry=Retry(max_attempts=3, base_delay=2, on=TransientError),
)
async def repo_fetch(ctx: NodeContext, inputs: HuntInputs) -> Fetched:
    """Clone the repository at the bad revision (a recorded host step)."""
    data = await ctx.tool(
        "git-clone",
        host.clone_checkout,
        inputs.repo,
        inputs.bad,
        f"{inputs.workdir}/checkout",
        list(runners.MARKER_FILES),
    )
    return Fetched.model_validate(data)
