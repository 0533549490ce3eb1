"""What a failed cgroup file operation means in words (the error is errors.CgroupError)."""

from __future__ import annotations

import errno
import os

__all__ = ["explain"]


def explain(exc: OSError) -> str:
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied (running as uid {os.geteuid()}; cgroups need root "
            "or a subtree delegated to this user)"
        )
    if code == errno.EROFS:
        return "the cgroup filesystem is mounted read-only (an unprivileged container?)"
    if code == errno.ENOENT:
        return "no such file (controller not mounted, or the cgroup was removed)"
    if code == errno.EBUSY:
        return "busy (the cgroup still has processes or child cgroups)"
    if code == errno.EINVAL:
        return "the kernel rejected the value"
    if code == errno.ESRCH:
        return "no such process"
    if code == errno.ENOSPC:
        return "no space (v2: no controllers enabled for this cgroup, or a limit on cgroups)"
    return exc.strerror or str(exc)
