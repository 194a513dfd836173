"""The daemon's lock file: one daemon per lock, stale locks taken over.

The lock is an ``flock`` on the file, not the file's existence: the kernel
drops it when the process dies, even by ``kill -9``, so a lock file left
behind by a killed daemon is simply taken over by the next one.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable

from lexicons.errors import LockError

log = logging.getLogger("lexicons.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: str) -> int | None:
    """Return the pid written in *path*, or None if there is none."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder(path: str) -> int | None:
    """Return the pid of the running daemon holding the lock at *path*, or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return read_pid(path) or -1
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_exclusive(path: str, held: Callable[[int | None], str]) -> int:
    """Open *path* and take an exclusive flock; LockError saying ``held(pid)`` if taken."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LockError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockError(held(read_pid(path))) from None
        raise LockError(f"cannot lock {path}: {exc.strerror}") from exc
    return fd


class LockFile:
    """An exclusive lock on a file that holds the owner's pid."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise LockError naming the pid that holds it."""
        directory = os.path.dirname(self.path)
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise LockError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        fd = _lock_exclusive(self.path, lambda pid: (
            f"lexiconsd is already running (pid {pid or 'unknown'}, lock {self.path})"))
        previous = read_pid(self.path)
        if previous and previous != os.getpid():
            state = "still alive but not holding it" if _pid_alive(previous) else "gone"
            log.warning("took over the stale lock %s of pid %d (%s)", self.path, previous, state)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        """Remove the file and drop the lock. Idempotent."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


class DirectoryLock:
    """An exclusive lock on a data directory: one process at a time reads and writes it.

    The lock is an ``flock`` on ``<directory>/lexicons.lock``, which holds the
    owner's pid. Unlike :class:`LockFile` it is taken by whoever opens the
    directory (the daemon's persister, an embedded server, a tool), so two
    daemons with different LOCK_FILE settings still cannot share a DATA_DIR.
    The file is never removed: removing it would let a process that opened it
    just before lock the old, unlinked file while a third locks a new one.

    Within one process the lock is shared: a service restarted in place opens
    its directory again while its earlier self may still hold it.
    """

    NAME = "lexicons.lock"
    _held: dict[str, list[int]] = {}  # real path -> [fd, users], for this process
    _guard = threading.Lock()

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, self.NAME)
        self._key = os.path.realpath(self.path)
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise LockError naming the pid that holds the directory."""
        with self._guard:
            if self.held:
                return
            entry = self._held.get(self._key)
            if entry is None:
                self._held[self._key] = [self._lock(), 1]
            else:
                entry[1] += 1
            self.held = True

    def _lock(self) -> int:
        fd = _lock_exclusive(self.path, lambda pid: (
            f"data directory {self.directory} is in use by another process "
            f"(pid {pid or 'unknown'}, lock {self.path}); two processes must not share a "
            "DATA_DIR"))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def release(self) -> None:
        """Drop the lock (the last user in this process unlocks it). Idempotent."""
        with self._guard:
            if not self.held:
                return
            self.held = False
            entry = self._held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[self._key]
                os.ftruncate(entry[0], 0)
                os.close(entry[0])
