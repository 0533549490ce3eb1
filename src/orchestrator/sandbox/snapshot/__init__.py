"""Content-addressed workspace snapshots for checkpoints.

A snapshot (:mod:`.scan`) walks a workspace without following symlinks, splits every
regular file into fixed 1 MiB chunks and stores each chunk once in a
:class:`~.store.ChunkStore`, keyed by the sha256 of its raw bytes and compressed with
zstandard. The tree itself is a :class:`~.manifest.Manifest` (entries sorted by path,
canonical JSON) stored as one more chunk: its digest is the snapshot id. Unchanged
content is never stored twice, and a :class:`~.scan.SnapshotIndex` from the previous
snapshot lets unchanged files (same size, mtime, ctime, inode and device) skip being
read at all.

:func:`~.restore.restore` makes a directory hold exactly a snapshot's tree. The manifest
is validated whole before anything is written (relative normalized paths, parents that
are directories of the snapshot, symlinks that resolve inside the workspace, only files,
directories and symlinks) and every chunk is verified. Writing goes through directory
file descriptors with ``O_NOFOLLOW``, so nothing outside the workspace is ever touched,
even through symlinks already present in it. Modes are permission bits only; owners,
times and hard links are not recorded.
"""
