"""The unprivileged host identity sandboxed processes run as.

An orchestrator running as root would otherwise hand its sandboxes host root: mode 0600
would protect nothing. Its sandboxes' processes run as :data:`SANDBOX_UID` instead
(bwrap: ``setpriv`` inside the namespaces, after bwrap has mounted them; gVisor: the
container's user), and the workspace they work on is given to that uid: the files of an
overlay workspace change owner in its upper layer only (metadata copy-up), never in the
repository below. An orchestrator running as another user keeps that user's identity.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SANDBOX_UID = 65534
SANDBOX_GID = 65534


def unprivileged() -> bool:
    """Whether sandboxes here must drop to :data:`SANDBOX_UID` (the orchestrator is root)."""
    return os.geteuid() == 0


def give(workspace: Path) -> None:
    """Make every entry of ``workspace`` (the tree, not what symlinks point at) the
    sandbox identity's, so the node can change what it was given."""
    if not unprivileged():
        return
    with contextlib.suppress(FileNotFoundError):
        os.chown(workspace, SANDBOX_UID, SANDBOX_GID, follow_symlinks=False)
    for directory, dirs, files in os.walk(workspace):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                path = os.path.join(directory, name)
                info = os.lstat(path)
                if (info.st_uid, info.st_gid) != (SANDBOX_UID, SANDBOX_GID):
                    os.chown(path, SANDBOX_UID, SANDBOX_GID, follow_symlinks=False)
