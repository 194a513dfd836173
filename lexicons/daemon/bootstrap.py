"""The bootstrap: lock, logging, signals, services, readiness; usable from any program.

``lexiconsd start`` uses it, and so can another Python program::

    with Bootstrap(settings) as daemon:      # lock taken, services running
        ...                                  # daemon.manager.get_service("rooms")
    # services stopped in reverse order, lock released

or ``Bootstrap(settings).run()`` to block until a signal or ``lexiconsd stop``.

OS signal handlers (installed only when running in the main thread) record the
signal and wake the main loop, which does the work: TERM and INT stop, HUP
reloads the live settings, USR1 reopens the log file.
"""
from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from lexicons.daemon import settings as settings_mod
from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.notify import Notifier
from lexicons.daemon.service import Service
from lexicons.daemon.settings import Settings
from lexicons.data.lockfile import LockFile
from lexicons.errors import SettingsError

log = logging.getLogger("lexicons")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class BriefFormatter(logging.Formatter):
    """Format a record on one line, its traceback left out unless ``lexicons`` logs DEBUG.

    For a log that is the operator's terminal (``LOG_PATH = "-"``): a refused start
    reads as its reason, not as a traceback. Files and the journal keep tracebacks.
    """

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info) or \
                logging.getLogger("lexicons").isEnabledFor(logging.DEBUG):
            return super().format(record)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record) + " (traceback with --debug)"
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _stderr_is_journal() -> bool:
    """Tell whether standard error is systemd's journal (JOURNAL_STREAM names it)."""
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{info.st_dev}:{info.st_ino}"


class Bootstrap:
    """Start and stop one lexicons daemon inside the current process."""

    TICK = 0.5

    def __init__(self, settings: Settings, app: Application | None = None, *,
                 handle_signals: bool | None = None, configure_logging: bool = True,
                 notifier: Notifier | None = None, tracebacks: bool = False):
        self.settings = settings
        self.tracebacks = tracebacks  # on standard error too, whatever LOG_LEVEL says
        self.app = app
        self.handle_signals = handle_signals
        self.configure_logging = configure_logging
        self.notifier = notifier or Notifier()
        self.manager: ServiceManager | None = None
        self.exit_code = 0
        self.stop_reason = ""
        self._lock = LockFile(settings.LOCK_FILE)
        self._handler: logging.Handler | None = None
        self._stop_requested = threading.Event()
        self._pending: collections.deque[int] = collections.deque()
        # Wakes the main loop: written by request_stop() and by the signal handler, which
        # must not touch the Event (its lock may be held by the very code it interrupted).
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._started = False
        self._stopped = False
        self._last_watchdog = 0.0
        self._watchdog_withheld = False

    # --- start and stop --------------------------------------------------------------

    def start(self) -> Bootstrap:
        """Take the lock, set up logging and start every service."""
        if self.configure_logging:
            self._setup_logging()
        try:
            self._lock.acquire()
        except BaseException:
            self._close_logging()
            raise
        try:
            log.info("lexiconsd starting (pid %d, settings %s)",
                     os.getpid(), self.settings.source or "built-in defaults")
            self.manager = ServiceManager(self.settings, self.app, on_fatal=self._on_fatal)
            self.manager.controller = self
            self.manager.start()
        except BaseException as exc:
            if isinstance(exc, Exception):  # the log says why, not only the terminal
                log.error("lexiconsd cannot start: %s", exc)
            if self.manager is not None:
                self.manager.stop()
            self._close_logging()
            self._lock.release()
            raise
        self._started = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._install_signals()
        self.notifier.ready(f"{len(self.manager.services)} services running")
        self.notifier.watchdog()
        self._last_watchdog = time.monotonic()
        log.info("lexiconsd running: %s", ", ".join(self.manager.services))
        return self

    def stop(self) -> None:
        """Stop every service in reverse order and release the lock. Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self.notifier.stopping()
        log.info("lexiconsd stopping%s", f" ({self.stop_reason})" if self.stop_reason else "")
        try:
            if self.manager is not None:
                self.manager.stop()
        finally:
            self._restore_signals()
            self._close_wake()
            log.info("lexiconsd stopped")
            self._close_logging()
            self._lock.release()

    def __enter__(self) -> Bootstrap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Start, block until asked to stop, stop; return the exit code."""
        self.start()
        try:
            if ready is not None:
                ready()
            self.wait()
        finally:
            self.stop()
        return self.exit_code

    def wait(self, timeout: float | None = None) -> bool:
        """Run the main loop until a stop is requested (True) or *timeout* passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tick = self.TICK
        if self.notifier.watchdog_interval:
            tick = min(tick, self.notifier.watchdog_interval / 2)
        while not self._stop_requested.is_set():
            if self._wake_r is None:
                self._stop_requested.wait(tick)
            elif select.select([self._wake_r], [], [], tick)[0]:
                self._drain_wake()
            self._handle_signals()
            if self._stop_requested.is_set():
                break
            self._feed_watchdog()
            if deadline is not None and time.monotonic() >= deadline:
                return False
        self._handle_signals()
        return True

    def request_stop(self, reason: str = "", code: int = 0) -> None:
        """Ask the main loop to stop (thread-safe; the control service calls this)."""
        if not self._stop_requested.is_set():
            self.stop_reason = reason
            self.exit_code = code
        self._stop_requested.set()
        self._wake()

    def _wake(self) -> None:
        """Wake the main loop (safe in a signal handler: one write, no lock)."""
        fd = self._wake_w
        if fd is not None:
            try:
                os.write(fd, b"\0")
            except OSError:  # full (already woken) or closed by stop()
                pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (OSError, TypeError):  # empty, or closed by stop()
            pass

    def _close_wake(self) -> None:
        """Close the wake pipe; signal handlers are restored and services stopped by now."""
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    # --- live changes ----------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read the settings; apply the live ones, report the others as needing a restart."""
        try:
            # the same sources as at start: file, environment, in-code overrides, base dir
            fresh = settings_mod.load(self.settings.source, overrides=self.settings.overrides,
                                      base_dir=self.settings.base_dir)
        except SettingsError as exc:
            log.error("reload refused: %s", exc)
            raise
        old = self.settings
        applied, ignored = [], []
        live_values = {}
        for name, setting in settings_mod.DECLARED.items():
            if getattr(fresh, name) == getattr(old, name):
                continue
            if setting.live:
                live_values[name] = getattr(fresh, name)
                applied.append(name)
            else:
                ignored.append(name)
        self.settings = settings_mod.Settings({**old.as_dict(), **live_values}, source=old.source,
                                              extra=fresh.extra, overrides=old.overrides,
                                              base_dir=old.base_dir)
        if self.manager is not None:
            self.manager.update_settings(self.settings)
        if "LOG_LEVEL" in applied:
            logging.getLogger("lexicons").setLevel(self.settings.LOG_LEVEL)
        log.info("reloaded settings: applied %s%s", ", ".join(applied) or "nothing",
                 f"; restart needed for {', '.join(ignored)}" if ignored else "")
        return {"applied": applied, "restart_needed": ignored}

    def reopen_logs(self) -> None:
        """Reopen the log file (after logrotate moved it)."""
        if isinstance(self._handler, logging.FileHandler):
            self._handler.acquire()
            try:
                self._handler.close()
                self._handler.stream = self._handler._open()
            finally:
                self._handler.release()
            log.info("log file reopened")

    # --- internals -------------------------------------------------------------------

    def _on_fatal(self, service: Service) -> None:
        if self.settings.ON_FATAL == "stop":
            log.critical("service %s is FATAL; stopping (ON_FATAL=stop)", service.name)
            self.request_stop(f"service {service.name} is FATAL", code=1)
        else:
            log.critical("service %s is FATAL; running degraded (ON_FATAL=degrade)",
                         service.name)
            self.notifier.status(f"degraded: {service.name} is FATAL")

    def _feed_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if not interval or self.manager is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog < interval:
            return
        hung = self.manager.hung()
        if hung:
            if not self._watchdog_withheld:
                log.error("watchdog not fed: hung service(s) %s", ", ".join(hung))
                self._watchdog_withheld = True
            return
        self._watchdog_withheld = False
        self.notifier.watchdog()
        self._last_watchdog = now

    def _setup_logging(self) -> None:
        path = self.settings.LOG_PATH
        formatter = logging.Formatter(LOG_FORMAT)
        if path == "-":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            if not (self.tracebacks or _stderr_is_journal()):
                formatter = BriefFormatter(LOG_FORMAT)
        else:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                # WatchedFileHandler reopens the file when logrotate moves it away
                handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"LOG_PATH: cannot open {path}: "
                                    f"{exc.strerror or exc}") from exc
        handler.setFormatter(formatter)
        logger = logging.getLogger("lexicons")
        logger.addHandler(handler)
        logger.setLevel(self.settings.LOG_LEVEL)
        self._handler = handler

    def _close_logging(self) -> None:
        if self._handler is not None:
            logging.getLogger("lexicons").removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def _install_signals(self) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        if self.handle_signals is False or not in_main:
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self._old_handlers[signum] = signal.signal(signum, self._record_signal)

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def _record_signal(self, signum: int, frame: object) -> None:
        # Only record and wake: the main loop acts on it, outside the handler. Setting the
        # stop Event here could deadlock: the handler runs in the main thread, which may be
        # inside Event.wait() holding the Event's own lock.
        self._pending.append(signum)
        self._wake()

    def _handle_signals(self) -> None:
        while self._pending:
            signum = self._pending.popleft()
            if signum == signal.SIGHUP:
                try:
                    self.reload()
                except SettingsError:
                    pass  # logged by reload(); keep the settings in force
            elif signum == signal.SIGUSR1:
                self.reopen_logs()
            else:
                log.info("received %s", signal.Signals(signum).name)
                self.request_stop(f"signal {signal.Signals(signum).name}")
