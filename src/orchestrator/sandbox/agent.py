"""The in-sandbox agent: a long-lived command server, one JSON request per line.

It runs inside the sandbox as ``python3 -I -S agent.py`` with only the standard library,
reads requests on stdin and answers each on stdout, so a command in a running sandbox
costs a fork and two pipe round trips instead of a new sandbox. Operations:

- ``ping``                                   -> ``{"pid"}``
- ``exec`` argv, cwd, env, stdin_b64, timeout
  -> ``{"code", "stdout_b64", "stderr_b64", "duration", "timed_out"}``
- ``read`` path                              -> ``{"data_b64"}``
- ``write`` path, data_b64                   -> ``{}``

Paths are relative to the workspace; the sandbox itself bounds what they can reach.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

Request = dict[str, Any]

WORKSPACE = os.environ.get("ORCHESTRATOR_WORKSPACE", "/workspace")
DRAIN_S = 2.0  # after a timed-out command is killed, how long its output may still come


def _path(relative: str) -> str:
    if os.path.isabs(relative) or ".." in relative.split("/"):
        raise ValueError(f"path {relative!r} must be relative and stay inside the workspace")
    return os.path.join(WORKSPACE, relative)


def _exec(req: Request) -> Request:
    env: dict[str, str] = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
    }
    env.update(req.get("env") or {})
    stdin = req.get("stdin_b64")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            req["argv"],
            cwd=_path(req.get("cwd") or "."),
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        message = f"{req['argv'][0]}: {exc.strerror or exc}\n".encode()
        return {
            "code": 127,
            "stdout_b64": "",
            "stderr_b64": base64.b64encode(message).decode(),
            "duration": 0.0,
            "timed_out": False,
        }
    timed_out = False
    try:
        out, err = proc.communicate(
            base64.b64decode(stdin) if stdin is not None else None, timeout=req.get("timeout")
        )
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=DRAIN_S)
        except subprocess.TimeoutExpired as exc:
            # A process that left the group (setsid) still holds the pipes: keep what
            # came so far and stop reading, or this agent would never answer again.
            out, err = exc.stdout or b"", exc.stderr or b""
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
    return {
        "code": proc.returncode,
        "stdout_b64": base64.b64encode(out).decode(),
        "stderr_b64": base64.b64encode(err).decode(),
        "duration": round(time.monotonic() - started, 6),
        "timed_out": timed_out,
    }


def _read(req: Request) -> Request:
    with open(_path(req["path"]), "rb") as handle:
        return {"data_b64": base64.b64encode(handle.read()).decode()}


def _write(req: Request) -> Request:
    target = _path(req["path"])
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(base64.b64decode(req["data_b64"]))
    os.replace(tmp, target)
    return {}


HANDLERS: dict[str, Callable[[Request], Request]] = {
    "ping": lambda req: {"pid": os.getpid()},
    "exec": _exec,
    "read": _read,
    "write": _write,
}


def _reap_orphans() -> None:
    """As PID 1 (gVisor runs the agent as the container's init) collect exited orphans,
    which would otherwise stay zombies for the sandbox's life. Only called between
    requests, when no command of ours is running, so it never takes a Popen's child."""
    if os.getpid() != 1:
        return
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def main() -> None:
    reply = sys.stdout.buffer
    for line in sys.stdin.buffer:
        _reap_orphans()
        req: Request = {}
        try:
            req = json.loads(line)
            resp = HANDLERS[req["op"]](req)
        except Exception as exc:
            resp = {"error": f"{type(exc).__name__}: {exc}"}
        resp["id"] = req.get("id")
        reply.write(json.dumps(resp).encode() + b"\n")
        reply.flush()


if __name__ == "__main__":
    main()
