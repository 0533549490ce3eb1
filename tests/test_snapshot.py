"""Workspace snapshots: round trip, dedup, corruption, and restores that must be refused."""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.codec import canonical_bytes
from orchestrator.errors import CorruptChunk, SnapshotError, UnsafeSnapshot
from orchestrator.sandbox.snapshot.manifest import load_manifest
from orchestrator.sandbox.snapshot.restore import restore
from orchestrator.sandbox.snapshot.scan import CHUNK_SIZE, SnapshotIndex, snapshot
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.storage.localdir import TEMP_PREFIX, LocalDirStore

Listing = dict[str, tuple[Any, ...]]


def listing(root: Path) -> Listing:
    """Every path under ``root`` with its type, permission bits and content or target."""
    out: Listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def backdate(root: Path, seconds: int = 3600) -> None:
    """Make every mtime old, as in a workspace that existed well before the snapshot."""
    ns = time.time_ns() - seconds * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), ns=(ns, ns), follow_symlinks=False)


def build_tree(root: Path) -> None:
    (root / "src/pkg").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "README.md").write_text("hello\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "src/pkg/mod.py").write_text("x = 1\n" * 100)
    big = bytes(range(256)) * (CHUNK_SIZE * 5 // 2 // 256)  # 2.5 chunks
    (root / "src/big.bin").write_bytes(big)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "ro.txt").write_text("read only")
    (root / "ro.txt").chmod(0o444)
    (root / "src/pkg").chmod(0o750)
    (root / "link").symlink_to("src/pkg/mod.py")
    (root / "dirlink").symlink_to("src")
    (root / "src/pkg/up").symlink_to("../../README.md")
    (root / "dangling").symlink_to("not-there")


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(LocalDirStore(tmp_path / "home/objects", durable=False))


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    build_tree(root)
    return root


def chunk_file(store: ChunkStore, digest: str) -> Path:
    """Where a chunk store on a local directory keeps the chunk ``digest``."""
    assert isinstance(store.objects, LocalDirStore)
    return store.objects.path_of(store.key(digest))


def chunk_files(store: ChunkStore) -> set[Path]:
    assert isinstance(store.objects, LocalDirStore)
    return {p for p in (store.objects.root / "chunks").rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- store


def test_store_put_get_dedups_and_verifies(store: ChunkStore) -> None:
    digest, written = store.put_new(b"abc" * 1000)
    assert written > 0 and store.has(digest)
    assert store.put_new(b"abc" * 1000) == (digest, 0)
    assert store.get(digest) == b"abc" * 1000
    assert chunk_file(store, digest).parent.name == digest[:2]
    assert not [p for p in chunk_files(store) if p.name.startswith(TEMP_PREFIX)]
    with pytest.raises(CorruptChunk, match=f"chunk {'0' * 64} is missing"):
        store.get("0" * 64)
    with pytest.raises(SnapshotError, match="not a chunk digest"):
        store.get("../../etc/passwd")


# --------------------------------------------------------------------------- round trip


def test_restore_undoes_edits_deletes_adds_chmods_and_symlinks(
    ws: Path, store: ChunkStore, tmp_path: Path
) -> None:
    before = listing(ws)
    snap, _ = snapshot(ws, store)
    assert (snap.files, snap.dirs, snap.symlinks) == (6, 3, 4)
    assert snap.total_bytes == sum(len(v[2]) for v in before.values() if v[0] == "file")
    assert snap.skipped == ()

    (ws / "README.md").write_text("edited\n")
    (ws / "src/pkg/mod.py").unlink()
    (ws / "new.txt").write_text("new")
    (ws / "newdir/deep").mkdir(parents=True)
    (ws / "newdir/deep/f").write_text("f")
    (ws / "run.sh").chmod(0o600)
    (ws / "src/pkg").chmod(0o700)
    (ws / "newlink").symlink_to("README.md")
    (ws / "link").unlink()
    (ws / "link").symlink_to("README.md")  # same name, other target
    (ws / "dirlink").unlink()
    (ws / "dirlink").mkdir()  # symlink became a directory
    (ws / "empty_dir").rmdir()
    (ws / "empty_dir").write_text("now a file")
    (ws / "ro.txt").chmod(0o644)
    (ws / "ro.txt").unlink()
    (ws / "ro.txt").mkdir()  # file became a directory
    (ws / "ro.txt/inner").write_text("x")
    assert listing(ws) != before

    result = restore(snap.id, store, ws)
    assert listing(ws) == before
    assert result.removed >= 3 and result.written >= 3

    fresh = tmp_path / "fresh"
    restore(snap.id, store, fresh)
    assert listing(fresh) == before


def test_modes_keep_permission_bits_only(ws: Path, store: ChunkStore, tmp_path: Path) -> None:
    (ws / "run.sh").chmod(0o4755)
    (ws / "src").chmod(0o1777)
    snap, _ = snapshot(ws, store)
    modes = {e.path: e.mode for e in load_manifest(store, snap.id).entries}
    assert modes["run.sh"] == 0o755 and modes["src"] == 0o777
    out = tmp_path / "out"
    restore(snap.id, store, out)
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "src").stat().st_mode) == 0o777


def test_manifest_is_sorted_and_the_id_is_stable(ws: Path, store: ChunkStore) -> None:
    first, _ = snapshot(ws, store)
    again, _ = snapshot(ws, store)
    assert again.id == first.id
    paths = [e.path for e in load_manifest(store, first.id).entries]
    assert paths == sorted(paths)


def test_restore_with_index_keeps_unchanged_files(ws: Path, store: ChunkStore) -> None:
    backdate(ws)
    snap, index = snapshot(ws, store)
    inode = (ws / "src/big.bin").stat().st_ino
    (ws / "README.md").write_text("edited\n")
    result = restore(snap.id, store, ws, index=index)
    assert result.written == 1 and result.kept == snap.files - 1
    assert (ws / "src/big.bin").stat().st_ino == inode
    assert (ws / "README.md").read_text() == "hello\n"


# --------------------------------------------------------------------------- dedup


def test_unchanged_tree_writes_no_chunks_and_reads_nothing(ws: Path, store: ChunkStore) -> None:
    backdate(ws)
    first, index = snapshot(ws, store)
    assert first.new_chunks == first.chunks + 1  # + the manifest
    assert first.read_bytes == first.total_bytes

    index = SnapshotIndex.model_validate_json(index.model_dump_json())  # persists as JSON
    second, _ = snapshot(ws, store, index)
    assert second.id == first.id
    assert (second.new_chunks, second.new_bytes, second.read_bytes) == (0, 0, 0)
    assert second.reused_files == second.files

    unindexed, _ = snapshot(ws, store)  # no index: everything re-read, nothing re-stored
    assert unindexed.read_bytes == first.total_bytes and unindexed.new_chunks == 0


def test_changing_one_file_writes_only_its_chunks(ws: Path, store: ChunkStore) -> None:
    backdate(ws)
    first, index = snapshot(ws, store)
    before = chunk_files(store)

    big = ws / "src/big.bin"
    data = bytearray(big.read_bytes())
    data[10] ^= 0xFF  # first of three chunks changes
    big.write_bytes(bytes(data))
    second, _ = snapshot(ws, store, index)

    assert second.id != first.id
    assert second.new_chunks == 2  # one data chunk + the manifest
    assert second.read_bytes == len(data) and second.reused_files == second.files - 1
    new = chunk_files(store) - before
    assert len(new) == 2
    assert {p.name for p in new} == {second.id, load_chunks(store, second.id, "src/big.bin")[0]}


def load_chunks(store: ChunkStore, snapshot_id: str, path: str) -> tuple[str, ...]:
    return next(e.chunks for e in load_manifest(store, snapshot_id).entries if e.path == path)


def test_recently_modified_files_are_not_trusted_by_the_index(ws: Path, store: ChunkStore) -> None:
    backdate(ws)
    (ws / "README.md").write_text("fresh\n")  # modified just now: racy
    _, index = snapshot(ws, store)
    assert "README.md" not in index.files and "src/big.bin" in index.files
    second, _ = snapshot(ws, store, index)
    assert second.read_bytes == len("fresh\n") and second.new_chunks == 0


def test_index_entry_with_missing_chunk_is_re_read(ws: Path, store: ChunkStore) -> None:
    backdate(ws)
    _, index = snapshot(ws, store)
    digest = index.files["README.md"].chunks[0]
    chunk_file(store, digest).unlink()
    second, _ = snapshot(ws, store, index)
    assert second.read_bytes == len("hello\n") and store.get(digest) == b"hello\n"


# --------------------------------------------------------------------------- corruption


def test_corrupt_chunk_is_named_and_nothing_is_written(
    ws: Path, store: ChunkStore, tmp_path: Path
) -> None:
    snap, _ = snapshot(ws, store)
    digest = load_chunks(store, snap.id, "src/pkg/mod.py")[0]
    stored = chunk_file(store, digest)
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    stored.write_bytes(bytes(blob))

    out = tmp_path / "out"
    with pytest.raises(CorruptChunk, match=digest) as caught:
        restore(snap.id, store, out)
    assert caught.value.digest == digest
    assert not out.exists()

    (ws / "README.md").write_text("edited\n")
    with pytest.raises(CorruptChunk, match=digest):
        restore(snap.id, store, ws)
    assert (ws / "README.md").read_text() == "edited\n"  # verified before writing


def test_missing_chunk_is_named(ws: Path, store: ChunkStore, tmp_path: Path) -> None:
    snap, _ = snapshot(ws, store)
    digest = load_chunks(store, snap.id, "README.md")[0]
    chunk_file(store, digest).unlink()
    with pytest.raises(CorruptChunk, match=f"chunk {digest} is missing"):
        restore(snap.id, store, tmp_path / "out")


# --------------------------------------------------------------------------- unsafe manifests


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "passwd").write_text("root:x:0:0\n")
    return out


def craft(store: ChunkStore, entries: list[dict[str, Any]]) -> str:
    doc = {"version": 1, "total_bytes": 0, "entries": entries}
    return store.put(canonical_bytes(doc))


def unsafe_cases(outside: Path, content: str) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """case -> (the entry path the error must name, entries)."""
    file = {"type": "file", "mode": 0o644, "size": 4, "chunks": [content]}
    return {
        "dotdot": ("../outside/passwd", [{"path": "../outside/passwd", **file}]),
        "absolute": (str(outside / "passwd"), [{"path": str(outside / "passwd"), **file}]),
        "etc": ("/etc/x", [{"path": "/etc/x", **file}]),
        "symlink to /etc": (
            "etc",
            [{"path": "etc", "type": "symlink", "mode": 0o777, "target": "/etc"}],
        ),
        "symlink escaping": (
            "d/l",
            [
                {"path": "d", "type": "dir", "mode": 0o755},
                {"path": "d/l", "type": "symlink", "mode": 0o777, "target": "../../outside"},
            ],
        ),
        "escape through another symlink": (
            "l",
            [
                {"path": "here", "type": "symlink", "mode": 0o777, "target": "."},
                {"path": "l", "type": "symlink", "mode": 0o777, "target": "here/../outside"},
            ],
        ),
        "file through absolute symlink": (
            "a",
            [
                {"path": "a", "type": "symlink", "mode": 0o777, "target": str(outside)},
                {"path": "a/passwd", **file},
            ],
        ),
        "file through inside symlink": (
            "a/passwd",
            [
                {"path": "a", "type": "symlink", "mode": 0o777, "target": "d"},
                {"path": "a/passwd", **file},
                {"path": "d", "type": "dir", "mode": 0o755},
            ],
        ),
        "char device": ("null", [{"path": "null", "type": "chardev", "mode": 0o666}]),
        "fifo": ("pipe", [{"path": "pipe", "type": "fifo", "mode": 0o666}]),
        "empty path": ("", [{"path": "", **file}]),
        "nul": ("a\0b", [{"path": "a\0b", **file}]),
        "not normalized": (
            "d/./x",
            [
                {"path": "d", "type": "dir", "mode": 0o755},
                {"path": "d/./x", **file},
            ],
        ),
        "missing parent": ("d/x", [{"path": "d/x", **file}]),
        "duplicate": ("x", [{"path": "x", **file}, {"path": "x", **file}]),
        "setuid": ("x", [{"path": "x", **{**file, "mode": 0o4755}}]),
        "bad digest": ("x", [{"path": "x", **{**file, "chunks": ["../../../outside/passwd"]}}]),
        "size mismatch": ("x", [{"path": "x", **{**file, "size": 999}}]),
    }


CASES = list(unsafe_cases(Path("/x"), "0" * 64))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_unsafe_manifest_is_refused_before_writing(
    case: str, existing: bool, store: ChunkStore, tmp_path: Path, outside: Path
) -> None:
    content = store.put(b"evil")
    name, entries = unsafe_cases(outside, content)[case]
    snapshot_id = craft(store, entries)
    root = tmp_path / "ws"
    if existing:
        root.mkdir()
        (root / "keep.txt").write_text("keep")
    outside_before = listing(tmp_path / "outside")

    with pytest.raises(UnsafeSnapshot, match=re.escape(f"entry {name!r}")):
        restore(snapshot_id, store, root)

    assert listing(tmp_path / "outside") == outside_before
    if existing:
        assert listing(root) == {"keep.txt": ("file", 0o644, b"keep")}
    else:
        assert not root.exists()


def test_existing_symlink_in_workspace_is_never_followed(
    store: ChunkStore, tmp_path: Path, outside: Path
) -> None:
    content = store.put(b"evil")
    snapshot_id = craft(
        store,
        [
            {"path": "a", "type": "dir", "mode": 0o755},
            {"path": "a/passwd", "type": "file", "mode": 0o644, "size": 4, "chunks": [content]},
            {"path": "b", "type": "file", "mode": 0o644, "size": 4, "chunks": [content]},
        ],
    )
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a").symlink_to(outside)  # planted by the sandbox before the restore
    (root / "b").symlink_to(outside / "passwd")
    restore(snapshot_id, store, root)
    assert (outside / "passwd").read_text() == "root:x:0:0\n"
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert listing(root) == {
        "a": ("dir", 0o755),
        "a/passwd": ("file", 0o644, b"evil"),
        "b": ("file", 0o644, b"evil"),
    }


def test_removing_extras_never_follows_symlinks(ws: Path, store: ChunkStore, outside: Path) -> None:
    snap, _ = snapshot(ws, store)
    (ws / "extra").symlink_to(outside)
    (ws / "src/extra").symlink_to(outside / "passwd")
    restore(snap.id, store, ws)
    assert (outside / "passwd").read_text() == "root:x:0:0\n"
    assert not (ws / "extra").is_symlink()


def test_store_inside_the_workspace_is_refused(ws: Path, store: ChunkStore) -> None:
    snap, _ = snapshot(ws, store)
    inner = ChunkStore(LocalDirStore(ws / ".objects"))
    with pytest.raises(SnapshotError, match="must not be inside the workspace"):
        snapshot(ws, inner)
    with pytest.raises(SnapshotError, match="must not be inside the workspace"):
        restore(snap.id, ChunkStore(LocalDirStore(ws)), ws)


def test_not_a_manifest(store: ChunkStore, tmp_path: Path) -> None:
    digest = store.put(b"plain data")
    with pytest.raises(SnapshotError, match="not a snapshot manifest"):
        restore(digest, store, tmp_path / "out")
    with pytest.raises(SnapshotError, match="not a chunk digest"):
        restore("../x", store, tmp_path / "out")


# --------------------------------------------------------------------------- snapshot side


def test_special_files_are_skipped(tmp_path: Path, store: ChunkStore) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "ok.txt").write_text("ok")
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    expected = {"pipe": "special file (fifo)"}
    try:
        sock.bind(str(root / "sock"))
        expected["sock"] = "special file (socket)"
    except OSError:
        pass
    try:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        expected["null"] = "special file (character device)"
    except PermissionError:
        pass
    try:
        snap, _ = snapshot(root, store)
    finally:
        sock.close()
    assert {s.path: s.reason for s in snap.skipped} == expected
    assert snap.skipped_special == len(expected)
    assert [e.path for e in load_manifest(store, snap.id).entries] == ["ok.txt"]
    out = tmp_path / "out"
    restore(snap.id, store, out)
    assert listing(out) == {"ok.txt": ("file", 0o644, b"ok")}


def test_escaping_symlinks_are_recorded_never_followed_and_skipped(
    tmp_path: Path, store: ChunkStore, outside: Path
) -> None:
    root = tmp_path / "ws"
    (root / "d").mkdir(parents=True)
    (root / "abs").symlink_to(outside / "passwd")
    (root / "d/up").symlink_to("../../outside/passwd")
    (root / "d/ok").symlink_to("../abs2")
    (root / "abs2").write_text("inside")
    snap, _ = snapshot(root, store)
    assert {s.path for s in snap.skipped} == {"abs", "d/up"}
    assert snap.total_bytes == len("inside")  # the outside file was never read
    out = tmp_path / "out"
    restore(snap.id, store, out)
    assert (out / "d/ok").read_text() == "inside"
    assert not (out / "abs").exists() and not (out / "abs").is_symlink()


def test_undecodable_names_are_skipped(tmp_path: Path, store: ChunkStore) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    fd = os.open(os.fsencode(root) + b"/bad\xff", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    (root / "good").write_text("g")
    snap, _ = snapshot(root, store)
    assert [(s.path, s.reason) for s in snap.skipped] == [("bad\\xff", "name is not valid UTF-8")]
    assert snap.files == 1
