"""RunHandle: a run started in the background of this event loop (``Runtime.submit``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.ledger.state import RunState
    from orchestrator.runtime.engine import Runtime


class RunHandle:
    """A run being driven by a task of this event loop: wait for it, look at it, pause it.

    The run is in the ledger from the moment the handle exists; what ``wait`` returns is
    what ``Runtime.state`` would read (the fold of the ledger)."""

    def __init__(self, runtime: Runtime, run_id: str, task: asyncio.Task[RunState]) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self._task = task

    async def wait(self) -> RunState:
        """The run's state once it has ended or parked; errors the run raised are raised
        here. Cancelling the wait (``asyncio.timeout``) leaves the run going."""
        return await asyncio.shield(self._task)

    def done(self) -> bool:
        """Whether this process has stopped driving the run (it ended, parked or failed)."""
        return self._task.done()

    def state(self) -> RunState:
        """The run as its ledger has it now."""
        return self.runtime.state(self.run_id)

    def status(self) -> str:
        """``running``, ``pausing``, ``parked``, ``succeeded``, ``failed``, ``aborted``, …"""
        return self.runtime.live_status(self.state())

    def pause(self) -> None:
        """Ask the run to drain its in-flight nodes and park (``wait`` then returns)."""
        self.runtime.pause(self.run_id, source="api")

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"
