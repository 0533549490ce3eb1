"""Running the test command in a node's sandbox once per seed, each run a fresh process
(through the rerun driver), and reading which tests failed."""

from __future__ import annotations

from orchestrator.agents import runners
from orchestrator.agents.intake import Intake
from orchestrator.runtime.context import NodeContext
from orchestrator.workloads.flaky_hunt import rerun_driver

RUN_TIMEOUT = 120.0


KNOWN_SEEDS_FIRST = 3


def seed_spec(intake: Intake, seeds: list[int], argv: list[str] | None = None) -> str:
    runner = intake.runner
    return rerun_driver.spec(
        argv if argv is not None else intake.argv,
        runner.env,
        runner.seed_env,
        seeds,
        RUN_TIMEOUT,
        runner.seed_args,
    )


async def run_seeds(
    ctx: NodeContext, intake: Intake, seeds: list[int], argv: list[str] | None = None
) -> list[rerun_driver.RunRecord]:
    """Run the command once per seed, each in a fresh process, in the node's sandbox."""
    done = await ctx.exec(
        ["python3", "-c", rerun_driver.DRIVER, seed_spec(intake, seeds, argv)],
        timeout=RUN_TIMEOUT * len(seeds) + 60,
    )
    records = rerun_driver.parse_driver_output(done.stdout)
    if len(records) != len(seeds):
        raise RuntimeError(
            f"the rerun driver reported {len(records)} of {len(seeds)} runs "
            f"(exit {done.code}): {done.stderr[-400:]}"
        )
    return records


def failed_ids(intake: Intake, record: rerun_driver.RunRecord) -> list[str]:
    if record.code == 0:
        return []
    ids = runners.failing_tests(intake.runner, record.output_tail)
    return ids or ["<the whole command>"]


async def checkout(ctx: NodeContext, sha: str) -> None:
    await ctx.exec(["git", "checkout", "--quiet", "--force", "--detach", sha], check=True)


def target_argv(intake: Intake, target: str | None) -> list[str]:
    if target is None or target == "<the whole command>":
        return intake.argv
    return runners.test_command(intake.runner, intake.argv, target)
