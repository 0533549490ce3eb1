"""An object store in a local directory: the embedded default (``./.orchestrator/objects``).

The object ``a/b/c`` is the file ``ROOT/a/b/c``. A ``put`` writes a temporary file in the
object's directory, fsyncs it, renames it over the key with ``os.replace`` and fsyncs the
directory, so the key only ever names a complete object, even after a crash. Temporary
files are named ``~tmp-...``: ``~`` is not allowed in keys, so a leftover one is never
mistaken for an object, and :meth:`LocalDirStore.list` skips it.

Every path is walked from the root with directory file descriptors and ``O_NOFOLLOW``:
a symlink planted inside the root is never followed, so no key reaches outside it.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from orchestrator.errors import ConfigError, ObjectMissing, StorageError
from orchestrator.storage.objects import ObjectStore, check_key, check_prefix

__all__ = ["TEMP_PREFIX", "LocalDirStore"]

TEMP_PREFIX = "~tmp-"
"""Names of files being written start with this; ``~`` never appears in a key."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_BLOCK = 8 << 20


class _Refused(Exception):
    """Something other than a directory stands where a key needs one."""

    def __init__(self, what: str) -> None:
        self.what = what


class LocalDirStore(ObjectStore):
    """Objects as files under ``root`` (created if needed).

    ``durable=False`` skips the fsyncs (tests, scratch stores); the rename still makes
    every write atomic for readers.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root).absolute()
        self.durable = durable
        self.url = self.root.as_uri()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"object store {self.url}: {self.root} is not a directory") from None
        except OSError as exc:
            raise StorageError(
                f"object store {self.url}: cannot create {self.root}: {exc.strerror}"
            ) from None

    def __repr__(self) -> str:
        return f"LocalDirStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The file that holds (or would hold) ``key``."""
        return self.root / check_key(key)

    # ------------------------------------------------------------------ operations

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        *dirs, name = key.split("/")
        view = memoryview(data)
        try:
            dir_fd = self._open_dirs(dirs, create=True)
        except _Refused as refused:
            raise StorageError(
                f"cannot write object {key!r} to {self.url}: {refused.what}"
            ) from None
        except OSError as exc:
            raise self._failed("write", key, exc) from None
        try:
            tmp = TEMP_PREFIX + secrets.token_hex(8)
            fd = os.open(tmp, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)
            try:
                try:
                    for start in range(0, len(view), _WRITE_BLOCK):
                        block = view[start : start + _WRITE_BLOCK]
                        while block:
                            block = block[os.write(fd, block) :]
                    if self.durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
            if self.durable:
                os.fsync(dir_fd)
        except IsADirectoryError:
            raise StorageError(
                f"cannot write object {key!r} to {self.url}: a directory of other keys "
                "has that name"
            ) from None
        except OSError as exc:
            raise self._failed("write", key, exc) from None
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> bytes:
        check_key(key)
        *dirs, name = key.split("/")
        try:
            dir_fd = self._open_dirs(dirs, create=False)
        except FileNotFoundError:
            raise ObjectMissing(key, self.url) from None
        except _Refused as refused:
            raise self._refused(key, refused) from None
        except OSError as exc:
            raise self._failed("read", key, exc) from None
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ObjectMissing(key, self.url) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refused(key, _Refused(f"{key!r} is a symbolic link")) from None
            raise self._failed("read", key, exc) from None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ObjectMissing(key, self.url)
            if not stat.S_ISREG(st.st_mode):
                raise self._refused(key, _Refused(f"{key!r} is not a regular file"))
            return _read_all(fd)
        except OSError as exc:
            raise self._failed("read", key, exc) from None
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        check_key(key)
        *dirs, name = key.split("/")
        try:
            dir_fd = self._open_dirs(dirs, create=False)
        except (FileNotFoundError, _Refused):
            return False
        except OSError as exc:
            raise self._failed("look up", key, exc) from None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._failed("look up", key, exc) from None
        finally:
            os.close(dir_fd)
        return stat.S_ISREG(st.st_mode)

    def list(self, prefix: str = "") -> builtins.list[str]:
        check_prefix(prefix)
        head, slash, tail = prefix.rpartition("/")
        try:
            top = self._open_dirs(head.split("/") if slash else [], create=False)
        except (FileNotFoundError, _Refused):
            return []
        except OSError as exc:
            raise self._failed("list", prefix, exc) from None
        keys: builtins.list[str] = []
        stack = [(top, head + slash, tail)]
        try:
            while stack:
                fd, base, start = stack.pop()
                try:
                    with os.scandir(fd) as listing:
                        found = [
                            (
                                e.name,
                                e.is_dir(follow_symlinks=False),
                                e.is_file(follow_symlinks=False),
                            )
                            for e in listing
                        ]
                    for name, is_dir, is_file in found:
                        if not name.startswith(start) or not _plain_name(name):
                            continue  # temporary files, and anything that is not a key
                        if is_file:
                            keys.append(base + name)
                        elif is_dir:
                            try:
                                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                            except OSError:
                                continue  # removed, or swapped for a symlink, meanwhile
                            stack.append((child, f"{base}{name}/", ""))
                finally:
                    os.close(fd)
        except OSError as exc:
            raise self._failed("list", prefix, exc) from None
        finally:
            for fd, _, _ in stack:
                os.close(fd)
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        check_key(key)
        *dirs, name = key.split("/")
        try:
            dir_fd = self._open_dirs(dirs, create=False)
        except (FileNotFoundError, _Refused):
            return
        except OSError as exc:
            raise self._failed("delete", key, exc) from None
        try:
            os.unlink(name, dir_fd=dir_fd)
            if self.durable:
                os.fsync(dir_fd)
        except (FileNotFoundError, IsADirectoryError):
            pass
        except OSError as exc:
            raise self._failed("delete", key, exc) from None
        finally:
            os.close(dir_fd)

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"object store {self.url}: {self.root} is not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"object store {self.url}: {self.root} is not writable")

    def close(self) -> None:
        pass  # no handles are kept between calls

    # ------------------------------------------------------------------ helpers

    def _open_dirs(self, dirs: builtins.list[str], *, create: bool) -> int:
        """An fd of ``ROOT/dirs...``, never following a symlink below the root.

        Raises ``FileNotFoundError`` if a directory is missing (and ``create`` is false),
        :class:`_Refused` if something else stands in its place.
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        done: builtins.list[str] = []
        try:
            for name in dirs:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made by a concurrent writer
                    else:
                        if self.durable:
                            os.fsync(fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                done.append(name)
                os.close(fd)
                fd = child
        except NotADirectoryError:
            os.close(fd)
            where = "/".join([*done, dirs[len(done)]])
            raise _Refused(f"{where!r} is {self._what(where)}, not a directory") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _what(self, rel: str) -> str:
        try:
            mode = os.lstat(self.root / rel).st_mode
        except OSError:
            return "something else"
        if stat.S_ISLNK(mode):
            return "a symbolic link (never followed)"
        if stat.S_ISREG(mode):
            return "an object"
        return "a special file"

    def _refused(self, key: str, refused: _Refused) -> StorageError:
        return StorageError(f"refusing to read object {key!r} from {self.url}: {refused.what}")

    def _failed(self, action: str, key: str, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        return StorageError(f"cannot {action} object {key!r} in {self.url}: {reason}")


def _plain_name(name: str) -> bool:
    try:
        check_key(name)
    except ValueError:
        return False
    return True


def _read_all(fd: int) -> bytes:
    with open(fd, "rb", buffering=0, closefd=False) as file:
        return file.readall()
