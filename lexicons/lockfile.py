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

from .errors import LockError

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


class LockFile:
    """An exclusive lock on a file that holds the owner's pid."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise LockError naming the pid that holds it."""
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LockError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                pid = read_pid(self.path)
                raise LockError(f"lexiconsd is already running (pid {pid or 'unknown'}, "
                                f"lock {self.path})") from None
            raise LockError(f"cannot lock {self.path}: {exc.strerror}") from exc
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
