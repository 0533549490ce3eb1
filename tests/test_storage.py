"""Object stores: one contract for the local directory and S3, plus each backend's own risks.

The S3 backend runs against moto's S3 server, started in a child process on loopback for
the session and reached through a real boto3 client over HTTP (nothing is patched).
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import (
    ConfigError,
    CorruptChunk,
    CorruptObject,
    ObjectMissing,
    SnapshotError,
    StorageError,
)
from orchestrator.sandbox.snapshot.restore import restore
from orchestrator.sandbox.snapshot.scan import snapshot
from orchestrator.sandbox.snapshot.store import ChunkStore
from orchestrator.storage.localdir import TEMP_PREFIX, LocalDirStore
from orchestrator.storage.objects import (
    ObjectStore,
    blob_key,
    get_blob,
    open_object_store,
    put_blob,
)
from orchestrator.storage.s3 import S3Store
from tests.s3server import BUCKET, Moto
from tests.test_snapshot import build_tree, listing


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> ObjectStore:
    if kind == "local":
        return open_object_store(str(tmp_path / "objects"))
    moto: Moto = request.getfixturevalue("moto")
    return open_object_store(moto.url(f"t/{uuid.uuid4().hex}"))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    with make_store(request.param, tmp_path, request) as opened:
        yield opened


def overwrite_behind_its_back(store: ObjectStore, key: str, data: bytes, moto: Moto) -> None:
    """Replace an object's bytes without going through the store."""
    if isinstance(store, LocalDirStore):
        store.path_of(key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        moto.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=data)


# --------------------------------------------------------------------------- contract


def test_round_trip_including_a_20_mb_object(store: ObjectStore) -> None:
    big = random.Random(7).randbytes(20 << 20)
    store.put("small", b"hello")
    store.put("empty", b"")
    store.put("nested/deeper/big.bin", big)
    assert store.get("small") == b"hello"
    assert store.get("empty") == b""
    got = store.get("nested/deeper/big.bin")
    assert len(got) == len(big) and hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    assert store.list() == ["empty", "nested/deeper/big.bin", "small"]


def test_overwrite_replaces_the_whole_object(store: ObjectStore) -> None:
    store.put("k", b"a much longer first version")
    store.put("k", b"short")
    assert store.get("k") == b"short"
    assert store.list() == ["k"]


def test_exists_delete_and_missing(store: ObjectStore) -> None:
    assert not store.exists("a/b")
    store.put("a/b", b"1")
    assert store.exists("a/b")
    assert not store.exists("a")  # a "directory" of keys is not an object
    store.delete("a/b")
    assert not store.exists("a/b")
    store.delete("a/b")  # already gone: fine
    store.delete("never/there")
    with pytest.raises(ObjectMissing) as caught:
        store.get("a/b")
    assert caught.value.key == "a/b" and caught.value.store == store.url
    assert "'a/b'" in str(caught.value) and store.url in str(caught.value)
    with pytest.raises(ObjectMissing):
        store.get("a")


def test_list_with_prefix(store: ObjectStore) -> None:
    for key in ["a/1", "a/2", "a/sub/5", "ab/3", "b/4", "top"]:
        store.put(key, key.encode())
    assert store.list() == ["a/1", "a/2", "a/sub/5", "ab/3", "b/4", "top"]
    assert store.list("a/") == ["a/1", "a/2", "a/sub/5"]
    assert store.list("a") == ["a/1", "a/2", "a/sub/5", "ab/3"]
    assert store.list("a/s") == ["a/sub/5"]
    assert store.list("a/sub/") == ["a/sub/5"]
    assert store.list("t") == ["top"]
    assert store.list("nothing/") == []
    assert store.list("zz") == []


def test_list_pages_past_1000_keys(store: ObjectStore) -> None:
    keys = [f"many/{i:04d}" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b""), keys))
    store.put("other", b"x")
    assert store.list("many/") == keys
    assert len(store.list()) == 1101


BAD_KEYS = ["../x", "/abs", "a//b", "", "a/../b", "a/./b", ".", "..", "x/", "a b", "a\\b"]
BAD_KEYS += ["é", "a\0b", f"{TEMP_PREFIX}1", "a/" + "x" * 256, "k" * 1025]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="object key"):
            call()
    assert store.list() == []


@pytest.mark.parametrize("prefix", ["../", "/abs", "a//", "a//b", "a/../", "./", "a b", "~"])
def test_bad_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        store.list(prefix)


class CountingPuts:
    """An ObjectStore that counts the puts it passes on."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.puts, self.url = inner, 0, inner.url

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        self.inner.put(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_blobs_dedup_and_detect_corruption(
    store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    counting = CountingPuts(store)
    digest = put_blob(counting, b"checkpoint data")
    assert digest == hashlib.sha256(b"checkpoint data").hexdigest()
    assert put_blob(counting, b"checkpoint data") == digest
    assert counting.puts == 1
    key = blob_key(digest)
    assert key == f"blobs/{digest[:2]}/{digest}"
    assert store.list("blobs/") == [key]
    assert get_blob(store, digest) == b"checkpoint data"

    moto = request.getfixturevalue("moto") if isinstance(store, S3Store) else None
    if isinstance(store, LocalDirStore):  # flip one byte of the stored file
        stored = bytearray(store.path_of(key).read_bytes())
        stored[3] ^= 0x20
        store.path_of(key).write_bytes(bytes(stored))
    else:
        assert moto is not None
        overwrite_behind_its_back(store, key, b"checkpoint dato", moto)
    with pytest.raises(CorruptObject, match=key) as caught:
        get_blob(store, digest)
    assert caught.value.key == key and store.url in str(caught.value)

    with pytest.raises(ObjectMissing, match=blob_key("0" * 64)):
        get_blob(store, "0" * 64)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        get_blob(store, "../../etc/passwd")


def test_url_reopens_the_same_store(store: ObjectStore) -> None:
    store.put("x", b"1")
    with open_object_store(store.url) as again:
        assert again.url == store.url
        assert again.get("x") == b"1"


# --------------------------------------------------------------------------- local directory


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from orchestrator.storage.localdir import LocalDirStore

    root, key, mode, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = LocalDirStore(Path(root))

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "loop":  # rewrite the object forever, alternating its content
        i = 0
        while True:
            store.put(key, bytes([65 + i % 2]) * size)
            if i == 0:
                print("ready", flush=True)
            i += 1
    elif mode == "write":  # killed halfway through writing the data
        real_write = os.write
        def half_then_die(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            die()
        os.write = half_then_die
    elif mode == "fsync":  # killed with all data written, before it is synced
        os.fsync = die
    elif mode == "replace":  # killed with the temp file complete, before the rename
        os.replace = die
    store.put(key, b"N" * size)
    """
)


def crash_writer(root: Path, key: str, mode: str, size: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(root), key, mode, str(size)],
        stdout=subprocess.PIPE if mode == "loop" else None,
        text=True,
    )


@pytest.mark.parametrize("mode", ["write", "fsync", "replace"])
def test_local_crash_mid_put_leaves_the_old_object(tmp_path: Path, mode: str) -> None:
    store = LocalDirStore(tmp_path / "objects")
    size = 4 << 20
    store.put("ckpt/obj", b"O" * size)
    for key in ("ckpt/obj", "ckpt/new"):
        with crash_writer(store.root, key, mode, size) as proc:
            assert proc.wait(timeout=30) == -signal.SIGKILL
    leftovers = [p.name for p in (store.root / "ckpt").iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(leftovers) == 2  # the crashed writers' temp files are still there...
    assert store.list() == ["ckpt/obj"]  # ...and are no objects
    assert store.get("ckpt/obj") == b"O" * size
    assert not store.exists("ckpt/new")
    with pytest.raises(ObjectMissing):
        store.get("ckpt/new")
    store.put("ckpt/new", b"after")  # and writing goes on normally
    assert store.list("ckpt/") == ["ckpt/new", "ckpt/obj"]


def test_local_sigkill_while_rewriting_never_shows_a_partial_object(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "objects")
    size = 8 << 20
    whole = {b"A" * size, b"B" * size}
    rng = random.Random(3)
    for _ in range(6):
        with crash_writer(store.root, "big/obj", "loop", size) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0, 0.15))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        assert store.get("big/obj") in whole
        assert store.list() == ["big/obj"]


def test_local_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not read")
    store = LocalDirStore(tmp_path / "objects")
    (store.root / "evil").symlink_to(outside)
    (store.root / "link").symlink_to(outside / "secret")
    store.put("fine", b"ok")

    assert store.list() == ["fine"]
    assert not store.exists("evil/secret") and not store.exists("link")
    for key in ("evil/secret", "link"):
        with pytest.raises(StorageError, match="symbolic link"):
            store.get(key)
    with pytest.raises(StorageError, match="symbolic link"):
        store.put("evil/planted", b"x")
    store.delete("evil/secret")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "do not read"


def test_local_key_clashing_with_a_directory_of_keys(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "objects")
    store.put("a/b", b"1")
    with pytest.raises(StorageError, match="directory of other keys"):
        store.put("a", b"2")
    store.put("f", b"3")
    with pytest.raises(StorageError, match="'f' is an object"):
        store.put("f/g", b"4")
    assert store.list() == ["a/b", "f"]


def test_local_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        LocalDirStore(tmp_path / "file")


# --------------------------------------------------------------------------- S3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_s3_unreachable_fails_fast_and_clearly(aws_env: None) -> None:
    port = closed_port()
    with open_object_store(f"s3://{BUCKET}/p?endpoint=http://127.0.0.1:{port}") as store:
        for call in (
            lambda: store.get("k"),
            lambda: store.put("k", b"x"),
            lambda: store.exists("k"),
            lambda: store.list(),
        ):
            started = time.monotonic()
            with pytest.raises(StorageError, match=rf"cannot reach http://127.0.0.1:{port}"):
                call()
            assert time.monotonic() - started < 10


def test_s3_missing_bucket(moto: Moto) -> None:
    url = moto.url("p").replace(f"s3://{BUCKET}/", "s3://no-such-bucket/")
    with open_object_store(url) as store, pytest.raises(StorageError, match="does not exist"):
        store.put("k", b"x")


def test_check_passes_on_a_usable_store(store: ObjectStore) -> None:
    store.check()


def test_check_names_what_makes_a_store_unusable(moto: Moto, tmp_path: Path) -> None:
    port = closed_port()
    unreachable = f"s3://{BUCKET}/p?endpoint=http://127.0.0.1:{port}&max_attempts=1"
    no_bucket = moto.url("p").replace(f"s3://{BUCKET}/", "s3://no-such-bucket/")
    for url, why in ((unreachable, "cannot reach"), (no_bucket, "does not exist")):
        with open_object_store(url) as store, pytest.raises(StorageError, match=why):
            store.check()
    local = LocalDirStore(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(StorageError, match="is not a directory"):
        local.check()


def test_s3_closed_store_refuses(moto: Moto) -> None:
    store = open_object_store(moto.url("closed"))
    store.close()
    store.close()
    with pytest.raises(StorageError, match="is closed"):
        store.get("k")


def test_s3_objects_live_under_the_prefix(moto: Moto) -> None:
    with open_object_store(moto.url("under/here")) as store:
        store.put("x/y", b"1")
        assert isinstance(store, S3Store) and store.prefix == "under/here"
    got = moto.client.get_object(Bucket=BUCKET, Key="under/here/x/y")
    assert got["Body"].read() == b"1"
    # Objects the store did not write and cannot name are left out of listings.
    moto.client.put_object(Bucket=BUCKET, Key="under/here/folder/", Body=b"")
    moto.client.put_object(Bucket=BUCKET, Key="under/here/with space", Body=b"")
    with open_object_store(moto.url("under/here")) as store:
        assert store.list() == ["x/y"]


# --------------------------------------------------------------------------- URLs


def test_open_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_object_store(".orchestrator/objects")
    assert isinstance(relative, LocalDirStore)
    assert relative.root == tmp_path / ".orchestrator/objects" and relative.root.is_dir()
    by_url = open_object_store(f"file://{tmp_path}/x%20y")
    assert isinstance(by_url, LocalDirStore) and by_url.root == tmp_path / "x y"
    assert open_object_store(by_url.url).url == by_url.url
    assert isinstance(open_object_store(f"file://localhost{tmp_path}/z"), LocalDirStore)
    assert isinstance(open_object_store(f"file:{tmp_path}/w"), LocalDirStore)
    colon = open_object_store("./a:b")
    assert isinstance(colon, LocalDirStore) and colon.root == tmp_path / "a:b"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("file://server/share", "names host"),
        ("file:///abs?x=1", "no options"),
        ("gs://bucket/p", "unsupported scheme 'gs'"),
        ("http://example.com/x", "unsupported scheme"),
        ("s3://", "names no bucket"),
        ("s3:bucket/prefix", "names no bucket"),
        ("C:/windows", "unsupported scheme 'c'"),
        ("s3:///prefix", "names no bucket"),
        ("s3://b/p", "not a bucket name"),
        ("s3://bucket_ok/../x", "bad prefix"),
        ("s3://bucket/a//b", "bad prefix"),
        ("s3://bucket/p?bogus=1", "unknown option 'bogus'"),
        ("s3://bucket/p?region=us-east-1&region=eu-west-1", "given twice"),
        ("s3://bucket/p?endpoint=ftp://host", "http:// or https://"),
        ("s3://bucket/p?endpoint=http://u:pw@host", "must not carry credentials"),
        ("s3://bucket/p?region=US%20EAST", "not a region"),
        ("s3://bucket/p?addressing=sideways", "path, virtual or auto"),
        ("s3://bucket/p?max_attempts=0", "between 1 and 20"),
        ("s3://bucket/p?connect_timeout=soon", "not a number"),
        ("s3://bucket/p#frag", "fragment"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_object_store(url)


def test_credentials_in_an_s3_url_are_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError, match="carries credentials") as caught:
        open_object_store("s3://AKIAEXAMPLE:s3cr3t@bucket/p")
    assert "s3cr3t" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


# --------------------------------------------------------------------------- chunk store


def test_snapshot_and_restore_through_s3(moto: Moto, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    build_tree(ws)
    with open_object_store(moto.url(f"chunks-{uuid.uuid4().hex}")) as objects:
        store = ChunkStore(objects)
        snap, index = snapshot(ws, store)
        assert snap.new_chunks > 0 and snap.files > 0
        keys = objects.list()
        assert keys and all(k.startswith("chunks/") for k in keys)
        assert f"chunks/{snap.id[:2]}/{snap.id}" in keys

        out = tmp_path / "out"
        restore(snap.id, store, out)
        assert listing(out) == listing(ws)

        again, _ = snapshot(ws, store, index)
        assert again.id == snap.id and again.new_chunks == 0

        assert isinstance(objects, S3Store)
        digest = next(k for k in keys if k != f"chunks/{snap.id[:2]}/{snap.id}").split("/")[-1]
        overwrite_behind_its_back(objects, store.key(digest), b"not zstd", moto)
        with pytest.raises(CorruptChunk, match=digest):
            restore(snap.id, store, tmp_path / "out2")
        objects.delete(store.key(digest))
        with pytest.raises(CorruptChunk, match=f"chunk {digest} is missing"):
            restore(snap.id, store, tmp_path / "out3")


def test_chunk_store_on_a_local_object_store_keeps_chunks_by_digest_prefix(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    build_tree(ws)
    objects = LocalDirStore(tmp_path / "home/objects")
    snap, _ = snapshot(ws, ChunkStore(objects))
    assert (tmp_path / "home/objects/chunks" / snap.id[:2] / snap.id).is_file()
    again = ChunkStore(LocalDirStore(tmp_path / "home/objects"))  # a fresh handle
    assert again.has(snap.id)
    restore(snap.id, again, tmp_path / "out")
    assert listing(tmp_path / "out") == listing(ws)
    with pytest.raises(SnapshotError, match="must not be inside the workspace"):
        snapshot(tmp_path, again)
