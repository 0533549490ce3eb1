"""Child process for the crash chaos test.

    python chaos_driver.py HOME RUN_ID_FILE start|resume

``start`` begins a run of ``chaos_plan.py:plan`` (side file from ``$CHAOS_SIDE``) and
writes its run id to RUN_ID_FILE as soon as the run exists; ``resume`` continues the run
named there. Either prints ``ready`` once it has begun the run (RunStarted written) or
its resumption (RunResumed staged), so the test knows a kill from then on lands on live
work, and exits 0 when the run succeeded.
"""

import asyncio
import os
import sys
from pathlib import Path

from orchestrator import Runtime
from orchestrator.ledger.events import BaseEvent
from orchestrator.runtime.loader import load_plan

PLAN_REF = f"{Path(__file__).resolve().parent / 'chaos_plan.py'}:plan"


def main(home: str, id_file: str, mode: str) -> int:
    with Runtime(home=home) as rt:
        if mode == "start":

            def on_start(run_id: str) -> None:
                tmp = Path(id_file + ".tmp")
                tmp.write_text(run_id)
                tmp.replace(id_file)
                print("ready", flush=True)

            plan = load_plan(PLAN_REF)
            inputs = {"side": os.environ["CHAOS_SIDE"]}
            state = asyncio.run(rt.start(plan, inputs, plan_ref=PLAN_REF, on_start=on_start))
        elif mode == "resume":

            def on_event(event: BaseEvent) -> None:
                if event.kind == "RunResumed":
                    print("ready", flush=True)

            run_id = Path(id_file).read_text()
            state = asyncio.run(rt.resume(run_id, listeners=(on_event,)))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print("done", state.status, flush=True)
    return 0 if state.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
