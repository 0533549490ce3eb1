"""Sandbox cgroups: the machinery that enforces :class:`~orchestrator.sandbox.limits.Limits`
on memory, process count and CPU share.

Layout. Every sandbox gets one cgroup, placed under an ``orchestrator/`` parent and a
per-owner directory naming the orchestrator process that made it::

    <hierarchy>/<this process's cgroup>/orchestrator/o<pid>-<starttime>/<name>

* cgroup v1 (separate hierarchies): one such directory in each of ``memory``, ``pids``,
  ``cpu`` and, when mounted, ``cpuacct`` (co-mounted controllers share one directory).
* cgroup v2 (unified hierarchy, ``cgroup.controllers`` present): one directory carrying
  ``memory.max``, ``pids.max`` and ``cpu.max``; the controllers are switched on in the
  ``cgroup.subtree_control`` of every ancestor up from the mount.

Nesting under this process's own cgroup keeps sandboxes inside whatever limits and
accounting the orchestrator itself runs under (a systemd unit, a container) instead of
escaping to the root. Pass ``parent=`` to put them elsewhere (needed on cgroup v2 when the
orchestrator is not in the root cgroup: the "no internal processes" rule forbids enabling
controllers below a cgroup that has member processes).

The owner directory is what makes :func:`~.limiter.sweep_stale` safe: after a crash it removes only
cgroups whose owning orchestrator process is gone (killing whatever still runs in them),
never those of another orchestrator that is alive on the same machine.

Joining happens in the child between fork and exec (:attr:`~.cgroup.Cgroup.preexec`), so the limits
hold for everything the sandboxed process starts, from its first instruction.
"""
