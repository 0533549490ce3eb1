"""Benchmark: workspace snapshots of a 200 MB tree, then of the same tree with 1% changed.

Builds 2,000 files of ~100 KB of text-like data (random lines from a pool: compressible,
hardly any repeats within or across files) in 20 x 10 nested directories, then times:

1. the first snapshot into an empty chunk store (every byte read, hashed, compressed);
2. a second snapshot after rewriting 20 files (1%), given the first snapshot's index;
3. for comparison, a snapshot of that tree with no index (every file re-read, nothing new
   stored);
4. restoring the second snapshot into an empty directory, and rolling the workspace back
   to the first snapshot in place (with the index: only the 20 files are rewritten).

Files are backdated by an hour after being built, as in a workspace that existed before
the checkpoint (a file modified within ``RACY_WINDOW_NS`` of a snapshot is not trusted by
its index). The page cache is warm: the tree was just written. Prints figures, never
asserts.

    uv run python bench/snapshot.py [--dir DIR]   # temp tree and store under DIR
"""

from __future__ import annotations

import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.sandbox.snapshot.restore import restore
from orchestrator.sandbox.snapshot.scan import Snapshot, snapshot
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.storage.localdir import LocalDirStore

FILES = 2_000
FILE_SIZE = 100_000
CHANGED = FILES // 100
TARGET_FIRST_S = 3.0
TARGET_SECOND_S = 0.3


def line_pool(rng: random.Random, n: int = 50_000) -> list[str]:
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5_000)
    ]
    return [" ".join(rng.choices(words, k=rng.randint(3, 12))) + "\n" for _ in range(n)]


def file_text(rng: random.Random, pool: list[str]) -> bytes:
    data = "".join(rng.choices(pool, k=FILE_SIZE // 40)).encode()
    return data[:FILE_SIZE]


def build(root: Path, rng: random.Random, pool: list[str]) -> list[Path]:
    files = []
    for i in range(FILES):
        d = root / f"pkg{i % 20:02d}" / f"mod{i // 20 % 10}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"file{i:04d}.txt"
        path.write_bytes(file_text(rng, pool))
        files.append(path)
    old = time.time_ns() - 3_600 * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), ns=(old, old))
    return files


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def show(label: str, seconds: float, snap: Snapshot) -> None:
    print(
        f"{label}: {seconds:.3f} s  files={snap.files} dirs={snap.dirs} "
        f"total={mb(snap.total_bytes)} read={mb(snap.read_bytes)} "
        f"reused_files={snap.reused_files} chunks={snap.chunks} "
        f"new_chunks={snap.new_chunks} new_bytes={mb(snap.new_bytes)}"
    )


def main() -> None:
    args = sys.argv[1:]
    parent = args[args.index("--dir") + 1] if "--dir" in args else None
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-", dir=parent) as tmp:
        print(f"under {Path(tmp).parent}")
        ws = Path(tmp) / "ws"
        store = ChunkStore(LocalDirStore(Path(tmp) / "home/objects", durable=False))
        t = time.perf_counter()
        files = build(ws, rng, line_pool(rng))
        print(f"built {FILES} files ({mb(FILES * FILE_SIZE)}) in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        first, index = snapshot(ws, store)
        t_first = time.perf_counter() - t
        show("first snapshot ", t_first, first)
        print(f"  compression: {first.new_bytes / first.total_bytes:.2f} of raw size")

        pool = line_pool(rng, 5_000)
        for path in rng.sample(files, CHANGED):
            path.write_bytes(file_text(rng, pool))
        t = time.perf_counter()
        second, _ = snapshot(ws, store, index)
        t_second = time.perf_counter() - t
        show("second snapshot", t_second, second)

        t = time.perf_counter()
        unindexed, _ = snapshot(ws, store)
        show("no-index snap  ", time.perf_counter() - t, unindexed)

        t = time.perf_counter()
        fresh = restore(second.id, store, Path(tmp) / "restored")
        print(f"restore (fresh dir): {time.perf_counter() - t:.3f} s  written={fresh.written}")
        t = time.perf_counter()
        back = restore(first.id, store, ws, index=index)
        print(
            f"rollback in place: {time.perf_counter() - t:.3f} s  written={back.written} "
            f"kept={back.kept} removed={back.removed}"
        )

    ok_first = "ok" if t_first < TARGET_FIRST_S else "MISSED"
    ok_second = "ok" if t_second < TARGET_SECOND_S else "MISSED"
    print(
        f"RESULT first={t_first:.3f}s (target < {TARGET_FIRST_S} s: {ok_first}) "
        f"second={t_second:.3f}s (target < {TARGET_SECOND_S} s: {ok_second}) "
        f"second_new_bytes={second.new_bytes} cpus={os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
