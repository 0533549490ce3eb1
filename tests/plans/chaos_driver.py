"""Child processes for the crash chaos test.

    python chaos_driver.py HOME RUN_ID_FILE start|resume
    python chaos_driver.py HOME RUN_ID_FILE zygote

``start`` begins a run of ``chaos_plan.py:plan`` (side file from ``$CHAOS_SIDE``, model
server from ``$CHAOS_LLM``, approver key for the gate from ``$CHAOS_APPROVER``) and
writes its run id to RUN_ID_FILE as soon as the run exists; ``resume`` continues the run
named there. Either prints ``ready N`` (N: ``$CHAOS_INCARNATION``) once it has begun the
run (RunStarted written) or its resumption (RunResumed staged), so the test knows a kill
from then on lands on live work. When the run parks at the gate, it approves with the
approver key and goes on. It prints ``done N STATUS`` and exits 0 when the run succeeded.

``zygote`` imports everything once, then for each line ``start N`` or ``resume N`` on
stdin forks a child that does the same as above as incarnation N (its stderr goes to
``$CHAOS_ERR_DIR/child-N.err``), prints ``pid N PID``, waits for it and prints
``exit N CODE`` (negative: killed by that signal). A hundred kills then cost a hundred
forks, not a hundred interpreter starts.
"""

import asyncio
import os
import random
import sys
from pathlib import Path

import openai  # noqa: F401 - imported once, before any fork

from orchestrator import RunConfig, Runtime, signing
from orchestrator.gates import awaiting_at, decide
from orchestrator.ledger.events import BaseEvent
from orchestrator.ledger.state import RunState
from orchestrator.runtime.loader import load_plan

PLAN_REF = f"{Path(__file__).resolve().parent / 'chaos_plan.py'}:plan"
GATE = "merge"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def drive(rt: Runtime, id_file: str, mode: str) -> RunState:
    me = os.environ.get("CHAOS_INCARNATION", "0")
    approver = signing.load(Path(os.environ["CHAOS_APPROVER"]))
    if mode == "start":

        def on_start(run_id: str) -> None:
            tmp = Path(id_file + ".tmp")
            tmp.write_text(run_id)
            tmp.replace(id_file)
            say(f"ready {me}")

        plan = load_plan(PLAN_REF)
        config = RunConfig(
            llm=f"openai@{os.environ['CHAOS_LLM']}",
            model="chaos-model",
            approvers={GATE: [approver.public]},
            sandbox="bwrap",
        )
        inputs = {"side": os.environ["CHAOS_SIDE"]}
        state = await rt.start(plan, inputs, config, plan_ref=PLAN_REF, on_start=on_start)
    elif mode == "resume":
        announced = False

        def on_event(event: BaseEvent) -> None:
            nonlocal announced
            if event.kind == "RunResumed" and not announced:
                announced = True
                say(f"ready {me}")

        run_id = Path(id_file).read_text()
        state = await rt.resume(run_id, listeners=(on_event,))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    while state.status == "parked" and awaiting_at(state, GATE):
        decisions = decide(state, GATE, True, "", approver, rt.clock.now())
        state = await rt.resume(state.run_id, decisions=decisions, reason="gate decision")
    return state


def main(home: str, id_file: str, mode: str) -> int:
    with Runtime(home=home) as rt:
        state = asyncio.run(drive(rt, id_file, mode))
    say(f"done {os.environ.get('CHAOS_INCARNATION', '0')} {state.status}")
    return 0 if state.status == "succeeded" else 1


def warm() -> None:
    """Import now what a child's first model call would import (the SDK loads lazily)."""
    import openai.types.chat

    client = openai.AsyncOpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    assert client.chat.completions is not None


def zygote(home: str, id_file: str) -> int:
    warm()
    say("zygote")
    for line in sys.stdin:
        mode, number = line.split()
        pid = os.fork()
        if pid == 0:
            os.environ["CHAOS_INCARNATION"] = number
            random.seed()
            err = os.open(
                f"{os.environ['CHAOS_ERR_DIR']}/child-{number}.err",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                0o644,
            )
            os.dup2(err, 2)
            code = 1
            try:
                code = main(home, id_file, mode)
            except BaseException as exc:  # a traceback in the child's log, never a second zygote
                import traceback

                traceback.print_exception(exc)
            finally:
                sys.stderr.flush()
                os._exit(code)
        say(f"pid {number} {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"exit {number} {os.waitstatus_to_exitcode(status)}")
    return 0


if __name__ == "__main__":
    if sys.argv[3] == "zygote":
        sys.exit(zygote(sys.argv[1], sys.argv[2]))
    sys.exit(main(*sys.argv[1:4]))
