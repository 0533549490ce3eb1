"""Copy-on-write workspaces against real overlayfs mounts (and the plain-copy fallback).

Overlay tests are skipped only when this machine cannot mount overlayfs (e.g. not root).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import WorkspaceError
from orchestrator.sandbox import workspace as ws_module
from orchestrator.sandbox.workspace import OverlayWorkspace, overlay_mounts, sweep_mounts


def _overlay_unusable() -> str | None:
    if os.geteuid() != 0:
        return "not root: mounting overlayfs needs CAP_SYS_ADMIN"
    with tempfile.TemporaryDirectory() as tmp:
        probe = OverlayWorkspace(None, Path(tmp) / "probe", mode="overlay")
        try:
            probe.mount()
        except WorkspaceError as exc:
            return f"overlayfs cannot be mounted here: {exc}"
        probe.destroy()
    return None


UNUSABLE = _overlay_unusable()
needs_overlay = pytest.mark.skipif(UNUSABLE is not None, reason=UNUSABLE or "")


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    sweep_mounts(tmp_path)


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    root = tmp_path / "lower"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("lower a")
    (root / "sub" / "b.txt").write_text("lower b")
    (root / "link").symlink_to("a.txt")
    return root


def mounts_under(prefix: Path) -> list[Path]:
    return [p for p in overlay_mounts() if p == prefix or prefix in p.parents]


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


@needs_overlay
def test_writes_land_in_upper_and_never_touch_lower(lower: Path, tmp_path: Path) -> None:
    before = snapshot(lower)
    with OverlayWorkspace(lower, tmp_path / "w") as ws:
        assert ws.mode == "overlay"
        assert ws.fallback_reason is None
        assert (ws.merged / "a.txt").read_text() == "lower a"
        assert (ws.merged / "link").read_text() == "lower a"
        (ws.merged / "a.txt").write_text("changed")
        (ws.merged / "sub" / "new.txt").write_text("new")
        (ws.merged / "fresh").mkdir()
        assert (ws.upper / "a.txt").read_text() == "changed"
        assert (ws.upper / "sub" / "new.txt").read_text() == "new"
        assert (ws.upper / "fresh").is_dir()
        assert not (ws.upper / "sub" / "b.txt").exists()  # untouched files stay below
    assert snapshot(lower) == before
    assert (ws.upper / "a.txt").read_text() == "changed"  # changes outlive the mount


@needs_overlay
def test_two_workspaces_do_not_see_each_others_writes(lower: Path, tmp_path: Path) -> None:
    with (
        OverlayWorkspace(lower, tmp_path / "one") as one,
        OverlayWorkspace(lower, tmp_path / "two") as two,
    ):
        (one.merged / "a.txt").write_text("one's")
        (two.merged / "only-two").write_text("two's")
        assert (two.merged / "a.txt").read_text() == "lower a"
        assert not (one.merged / "only-two").exists()
        assert (one.merged / "a.txt").read_text() == "one's"
    assert (lower / "a.txt").read_text() == "lower a"


@needs_overlay
def test_deleting_in_merged_hides_but_keeps_the_lower_file(lower: Path, tmp_path: Path) -> None:
    with OverlayWorkspace(lower, tmp_path / "w") as ws:
        (ws.merged / "a.txt").unlink()
        (ws.merged / "sub" / "b.txt").unlink()
        (ws.merged / "sub").rmdir()
        assert not (ws.merged / "a.txt").exists()
        assert not (ws.merged / "sub").exists()
        whiteout = os.lstat(ws.upper / "a.txt")
        assert stat.S_ISCHR(whiteout.st_mode)
        assert whiteout.st_rdev == 0
    assert (lower / "a.txt").read_text() == "lower a"
    assert (lower / "sub" / "b.txt").read_text() == "lower b"


@needs_overlay
def test_unmount_leaves_no_mount(lower: Path, tmp_path: Path) -> None:
    ws = OverlayWorkspace(lower, tmp_path / "w").mount()
    assert ws.merged in overlay_mounts()
    assert ws.mount() is ws  # already mounted: no second mount
    assert mounts_under(tmp_path) == [ws.merged]
    ws.unmount()
    assert mounts_under(tmp_path) == []
    assert list(ws.merged.iterdir()) == []
    ws.unmount()  # idempotent
    ws.mount()  # remount keeps the earlier upper
    assert (ws.merged / "a.txt").exists()
    ws.destroy()
    assert mounts_under(tmp_path) == []
    assert not ws.base.exists()
    assert (lower / "a.txt").exists()


@needs_overlay
def test_busy_mount_is_detached_lazily(
    lower: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = OverlayWorkspace(lower, tmp_path / "w").mount()
    fd = os.open(ws.merged / "a.txt", os.O_RDONLY)
    cwd = os.getcwd()
    os.chdir(ws.merged)
    try:
        ws.unmount()
        assert mounts_under(tmp_path) == []
        assert "detached it lazily" in caplog.text
        assert os.read(fd, 7) == b"lower a"  # open files keep working after detach
    finally:
        os.chdir(cwd)
        os.close(fd)


@needs_overlay
def test_sweep_mounts_cleans_leftovers(lower: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    for i in range(3):
        OverlayWorkspace(lower, crashed / f"w{i}").mount()  # "forgotten" by a dead process
    keep = OverlayWorkspace(lower, tmp_path / "elsewhere").mount()
    assert len(mounts_under(crashed)) == 3
    swept = sweep_mounts(crashed)
    assert sorted(swept) == sorted(crashed / f"w{i}" / "merged" for i in range(3))
    assert mounts_under(crashed) == []
    assert keep.merged in overlay_mounts()
    assert sweep_mounts(crashed) == []
    keep.unmount()


@needs_overlay
def test_fifty_workspaces_cost_fifty_small_uppers(tmp_path: Path) -> None:
    lower = tmp_path / "big"
    lower.mkdir()
    for i in range(8):
        (lower / f"blob{i}").write_bytes(os.urandom(1 << 20))
    lower_bytes = disk_bytes(lower)
    spaces = [OverlayWorkspace(lower, tmp_path / "ws" / f"w{i}").mount() for i in range(50)]
    try:
        for i, ws in enumerate(spaces):
            assert (ws.merged / "blob3").stat().st_size == 1 << 20
            (ws.merged / "mine").write_text(str(i))
        uppers = sum(disk_bytes(ws.base / "upper") for ws in spaces)
        assert uppers < 50 * 16 * 1024  # a few blocks each, not a copy of 8 MB
        assert uppers < lower_bytes // 10
        assert all((ws.merged / "mine").read_text() == str(i) for i, ws in enumerate(spaces))
    finally:
        for ws in spaces:
            ws.unmount()
    assert mounts_under(tmp_path) == []


@needs_overlay
def test_no_lower_means_an_empty_one(tmp_path: Path) -> None:
    with OverlayWorkspace(None, tmp_path / "w") as ws:
        assert list(ws.merged.iterdir()) == []
        (ws.merged / "x").write_text("x")
        assert (ws.upper / "x").exists()
    assert list((tmp_path / "w" / "lower").iterdir()) == []


@needs_overlay
def test_paths_with_option_separators(tmp_path: Path) -> None:
    lower = tmp_path / "we,ird:low\\er dir"
    lower.mkdir()
    (lower / "f").write_text("ok")
    with OverlayWorkspace(lower, tmp_path / "ba,se:x y") as ws:
        assert ws.mode == "overlay"
        assert (ws.merged / "f").read_text() == "ok"
        assert ws.merged in overlay_mounts()


def test_copy_mode_works_without_overlay(lower: Path, tmp_path: Path) -> None:
    before = snapshot(lower)
    with OverlayWorkspace(lower, tmp_path / "w", mode="copy") as ws:
        assert ws.mode == "copy"
        assert ws.upper == ws.merged
        assert snapshot(ws.merged) == before  # symlinks copied as symlinks
        assert (ws.merged / "link").is_symlink()
        (ws.merged / "a.txt").write_text("changed")
        (ws.merged / "sub" / "b.txt").unlink()
    assert mounts_under(tmp_path) == []
    assert snapshot(lower) == before
    ws.mount()  # remounting a copy keeps its changes
    assert (ws.merged / "a.txt").read_text() == "changed"
    ws.destroy()
    assert not ws.base.exists()


def test_auto_falls_back_to_copy_and_says_why(
    lower: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(options: bytes, target: Path) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(ws_module, "_mount_overlay", refuse)
    with OverlayWorkspace(lower, tmp_path / "auto") as ws:
        assert ws.mode == "copy"
        assert ws.fallback_reason is not None
        assert "root" in ws.fallback_reason
        assert (ws.merged / "a.txt").read_text() == "lower a"
    with pytest.raises(WorkspaceError, match="cannot mount overlay"):
        OverlayWorkspace(lower, tmp_path / "strict", mode="overlay").mount()


def test_missing_lower_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not a directory"):
        OverlayWorkspace(tmp_path / "nope", tmp_path / "w").mount()
