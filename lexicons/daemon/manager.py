"""The service manager: builds, starts, supervises and stops the daemon's services.

Theory of operation
-------------------
``start()`` builds the services named in ``SERVICE_LIST`` and, in order, runs
each one's ``setup()`` in the calling thread and then its ``main()`` in a
thread of its own. ``stop()`` stops them in reverse order.

One supervisor thread wakes every ``TICK`` seconds and looks at each service:

* RUNNING with a dead thread, not asked to stop: it failed. If it failed
  ``RESTART_LIMIT`` times within ``RESTART_WINDOW`` already it becomes FATAL
  and ``on_fatal`` is called (the bootstrap applies ``ON_FATAL``); otherwise
  it goes to BACKOFF for ``RESTART_BACKOFF * 2**n`` seconds (capped at
  ``RESTART_BACKOFF_MAX``), n being its recent failures.
* BACKOFF whose delay is over: started again, same instance.
* RUNNING with a heartbeat older than its ``heartbeat_timeout``: hung. A
  Python thread cannot be killed, so a hung service is only reported; the
  bootstrap stops feeding systemd's watchdog and systemd restarts the daemon.

Every state change of every service happens under ``self._lock``, so the
supervisor, ``restart()`` and ``stop()`` never race each other.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from lexicons.daemon import application
from lexicons.daemon.application import Application
from lexicons.daemon.entries import import_entry
from lexicons.daemon.service import ACTIVE_STATES, Service, ServiceState
from lexicons.daemon.settings import Settings
from lexicons.errors import ServiceError, SettingsError

log = logging.getLogger("lexicons.manager")

S = ServiceState


def import_service(entry: str) -> type[Service]:
    """Return the Service class named by a ``'module.path/ClassName'`` entry."""
    return import_entry(entry, Service, "SERVICE_LIST")


_current: list[ServiceManager] = []
_current_lock = threading.Lock()


def current() -> ServiceManager | None:
    """Return the most recently started manager of this process still running, or None.

    zephserver code reaches its daemon through singletons
    (``ServiceManager.get_instance()``); :mod:`lexicons.zephserver` answers them
    with this.
    """
    with _current_lock:
        return _current[-1] if _current else None


class _Record:
    """What the supervisor remembers about one service between ticks."""

    def __init__(self) -> None:
        self.failures: collections.deque[float] = collections.deque()
        self.restarts = 0
        self.retry_at = 0.0
        self.started_at: float | None = None
        self.hung = False


class ServiceManager:
    """Build, start, supervise and stop the services of one daemon."""

    TICK = 0.1

    def __init__(self, settings: Settings, app: Application | None = None, *,
                 on_fatal: Callable[[Service], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.app = app if app is not None else application.load(settings.APP)
        self.on_fatal = on_fatal
        self.controller: Any = None  # the Bootstrap, when there is one (stop, reload)
        self._facade: Any = None     # set by an embedding program or a test; else the router's
        self.clock = clock
        self.services: dict[str, Service] = {}
        self._entries: dict[str, str] = {}  # SERVICE_LIST entry -> service name
        self._records: dict[str, _Record] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.started_at: float | None = None
        self.started_wall: float | None = None

    # --- building and access ---------------------------------------------------------

    def build(self) -> None:
        """Instantiate every service of SERVICE_LIST (no setup yet)."""
        from lexicons.daemon import aliases, zephserver
        aliases.install()  # code written for zephserver imports zephserver.* names
        for entry in self.settings.SERVICE_LIST:
            try:
                found: Any = import_entry(entry, object, "SERVICE_LIST")
            except ServiceError as exc:
                if not str(exc).endswith("subclass"):
                    raise  # cannot import, or no such name
                found = None  # not a class: import_service() below says so
            if zephserver.is_service_class(found):
                service = zephserver.ZephService.build(self, self.settings, found, entry)
                self.add(service)
                self._entries[entry] = service.name
                continue
            cls = import_service(entry)
            try:
                service = cls(self, self.settings)
            except Exception as exc:
                raise ServiceError(f"service {entry!r} failed to build: "
                                   f"{type(exc).__name__}: {exc}") from exc
            self.add(service)
            self._entries[entry] = service.name

    def add(self, service: Service) -> None:
        """Register an already built service (embedding programs and tests use this)."""
        if service.name in self.services:
            raise ServiceError(f"two services are named {service.name!r}")
        self.services[service.name] = service
        self._records[service.name] = _Record()

    def get_service(self, name: str) -> Service:
        """Return the service called *name* (or named so in SERVICE_LIST); ServiceError if none.

        A service that asks for it (``resurrect_on_get``, as zephserver services do)
        and whose main() died is started again first, without waiting for its backoff.
        """
        service = self.services.get(name)
        if service is None:
            service = self.services.get(self._entries.get(name, ""))
            if service is None:
                raise ServiceError(f"no service named {name!r} "
                                   f"(running: {', '.join(self.services) or 'none'})")
        if getattr(service, "resurrect_on_get", False):
            self._resurrect(service)
        return service

    def _resurrect(self, service: Service) -> None:
        """Start *service* again now if its main() died (counted as a failure and a restart)."""
        thread = service.thread
        # Checked without the lock first: stop() holds it while joining a stopping service,
        # whose main() may well call get_service() on its way out.
        dead = service.state is S.RUNNING and thread is not None and not thread.is_alive()
        if not (dead or service.state is S.BACKOFF) or self._supervisor is None:
            return
        fatal = False
        with self._lock:
            if self._stopping.is_set() or service.stopping.is_set():
                return
            thread = service.thread
            if (service.state is S.RUNNING and thread is not None and not thread.is_alive()):
                fatal = self._failed(service, self.clock())
            if service.state is S.BACKOFF:
                self._records[service.name].restarts += 1
                log.info("service %s: main() had died; started again for get_service()",
                         service.name)
                self._launch(service)
        if fatal and self.on_fatal is not None:
            self.on_fatal(service)

    def events(self) -> Any:
        """Return the service carrying cluster events (``say``/``subscribe``/``unsubscribe``).

        The cluster service when it runs a static cluster (``CLUSTER_SERVER_LIST``),
        else the backplane; ServiceError when there is neither.
        """
        cluster = self.services.get("cluster")
        if cluster is not None and getattr(cluster, "active", False):
            return cluster
        backplane = self.services.get("backplane")
        if backplane is None:
            raise ServiceError("no backplane service runs: cluster events are not possible")
        return backplane

    @property
    def facade(self) -> Any:
        """Return the server facade (``sv``) for signals and tasks; None without a router."""
        if self._facade is not None or not self.has_service("router"):
            return self._facade
        return getattr(self.get_service("router"), "facade", None)

    @facade.setter
    def facade(self, value: Any) -> None:
        self._facade = value

    def has_service(self, name: str) -> bool:
        """Tell whether a service called *name* is part of this daemon."""
        return name in self.services

    # --- start and stop --------------------------------------------------------------

    def start(self) -> None:
        """Set up and start every service in order, then begin supervising.

        If a service fails to set up, the ones already started are stopped again
        and ServiceError names the one that failed.
        """
        if not self.services:
            self.build()
        with _current_lock:  # services may ask for their daemon as soon as they run
            _current.append(self)
        self.started_at = self.clock()
        self.started_wall = time.time()
        started: list[Service] = []
        for service in self.services.values():
            try:
                service.setup()
            except Exception as exc:
                log.exception("service %s failed to set up", service.name)
                with _current_lock:
                    if self in _current:
                        _current.remove(self)
                for done in reversed(started):
                    self._stop_one(done)
                    self._teardown(done)
                if isinstance(exc, SettingsError):
                    raise  # a bad setting found by a service: the caller reports it as such
                raise ServiceError(f"service {service.name} failed to start: "
                                   f"{type(exc).__name__}: {exc}") from exc
            with self._lock:
                self._launch(service)
            started.append(service)
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="lexicons-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        """Stop every service in reverse order and run their teardowns. Idempotent."""
        self._stopping.set()
        with _current_lock:
            if self in _current:
                _current.remove(self)
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        for service in reversed(list(self.services.values())):
            was_started = self._records[service.name].started_at is not None
            self._stop_one(service)
            if was_started:
                self._teardown(service)
                self._records[service.name].started_at = None

    def restart(self, name: str) -> dict[str, Any]:
        """Stop one service's main() and run it again (same instance)."""
        service = self.get_service(name)
        with self._lock:
            if not self._stop_thread(service):
                raise ServiceError(f"service {name} did not stop within "
                                   f"{self.settings.STOP_TIMEOUT:g} s; not restarted")
            if service.state is not S.STOPPED:
                service._set_state(S.STOPPED, "restart asked")
            self._records[name].failures.clear()
            self._launch(service)
        return self._describe(service)

    def _launch(self, service: Service) -> None:
        """Start the service's thread. Needs self._lock held."""
        record = self._records[service.name]
        service.stopping.clear()
        service._set_state(S.STARTING)
        service.beat()
        record.hung = False
        service.thread = threading.Thread(target=service._run, name=f"lexicons-{service.name}",
                                          daemon=True)
        service.thread.start()
        record.started_at = self.clock()
        service._set_state(S.RUNNING)

    def _stop_thread(self, service: Service) -> bool:
        """Ask main() to return and join it; False if it did not in time. Needs the lock."""
        if service.state in (S.BACKOFF, S.FATAL):
            service._set_state(S.STOPPED, "stop asked")
            return True
        if service.state not in ACTIVE_STATES:
            return True
        if service.state is not S.STOPPING:
            service._set_state(S.STOPPING)
        service.stopping.set()
        try:
            service.interrupt()
        except Exception:
            log.exception("service %s: interrupt failed", service.name)
        thread = service.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.settings.STOP_TIMEOUT)
            if thread.is_alive():
                log.error("service %s did not stop within %g s", service.name,
                          self.settings.STOP_TIMEOUT)
                return False
        service._set_state(S.STOPPED)
        return True

    def _stop_one(self, service: Service) -> None:
        with self._lock:
            self._stop_thread(service)

    def _teardown(self, service: Service) -> None:
        try:
            service.teardown()
        except Exception:
            log.exception("service %s: teardown failed", service.name)

    # --- supervision -----------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.wait(self.TICK):
            try:
                self.check()
            except Exception:  # the supervisor must outlive any single bad check
                log.exception("supervisor check failed")

    def check(self) -> None:
        """Look at every service once: restart the failed, report the hung."""
        now = self.clock()
        fatal: list[Service] = []
        with self._lock:
            for service in self.services.values():
                record = self._records[service.name]
                if service.state is S.RUNNING:
                    if service.thread is not None and not service.thread.is_alive():
                        if not service.stopping.is_set() and self._failed(service, now):
                            fatal.append(service)
                        continue
                    self._check_heartbeat(service, record, now)
                elif service.state is S.BACKOFF and now >= record.retry_at:
                    record.restarts += 1
                    self._launch(service)
        for service in fatal:
            if self.on_fatal is not None:
                self.on_fatal(service)

    def _failed(self, service: Service, now: float) -> bool:
        """Handle a service whose main() ended unasked; True if it is now FATAL."""
        record = self._records[service.name]
        window = self.settings.RESTART_WINDOW
        while record.failures and now - record.failures[0] > window:
            record.failures.popleft()
        if len(record.failures) >= self.settings.RESTART_LIMIT:
            service._set_state(S.FATAL, f"{len(record.failures) + 1} failures within "
                                        f"{window:g} s; last: {service.last_error}")
            return True
        record.failures.append(now)
        delay = min(self.settings.RESTART_BACKOFF * 2 ** (len(record.failures) - 1),
                    self.settings.RESTART_BACKOFF_MAX)
        record.retry_at = now + delay
        service._set_state(S.BACKOFF, f"{service.last_error}; restart in {delay:g} s")
        return False

    def _check_heartbeat(self, service: Service, record: _Record, now: float) -> None:
        timeout = service.heartbeat_timeout
        if timeout is None:
            return
        silent = now - service.last_beat
        if silent > timeout and not record.hung:
            record.hung = True
            log.error("service %s is hung: no heartbeat for %.1f s (limit %g s)",
                      service.name, silent, timeout)
        elif silent <= timeout and record.hung:
            record.hung = False
            log.warning("service %s beats again", service.name)

    # --- reporting -------------------------------------------------------------------

    def hung(self) -> list[str]:
        """Return the names of the services reported hung."""
        return [name for name, record in self._records.items() if record.hung]

    def fatal(self) -> list[str]:
        """Return the names of the FATAL services."""
        return [s.name for s in self.services.values() if s.state is S.FATAL]

    def healthy(self) -> bool:
        """Tell whether every service is RUNNING and none is hung."""
        return (all(s.state is S.RUNNING for s in self.services.values())
                and not self.hung())

    def _describe(self, service: Service) -> dict[str, Any]:
        record = self._records[service.name]
        now = self.clock()
        try:
            info = service.info()
        except Exception as exc:
            info = {"error": f"info failed: {type(exc).__name__}"}
            log.exception("service %s: info failed", service.name)
        return {
            "name": service.name,
            "class": f"{type(service).__module__}/{type(service).__name__}",
            "state": service.state.value,
            "since": round(now - service.state_since, 3),
            "uptime": (round(now - record.started_at, 3)
                       if record.started_at is not None and service.state is S.RUNNING
                       else 0.0),
            "restarts": record.restarts,
            "hung": record.hung,
            "last_error": service.last_error,
            "info": info,
        }

    def status(self) -> dict[str, Any]:
        """Return the daemon's status: every service with state, restarts and info."""
        with self._lock:
            services = [self._describe(s) for s in self.services.values()]
        now = self.clock()
        return {
            "pid": os.getpid(),
            "started": self.started_wall,
            "uptime": round(now - self.started_at, 3) if self.started_at else 0.0,
            "healthy": self.healthy(),
            "degraded": bool(self.fatal()),
            "on_fatal": self.settings.ON_FATAL,
            "hung": self.hung(),
            "services": services,
        }

    def commands(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """Return the control commands every service offers, by name."""
        found: dict[str, Callable[[dict[str, Any]], Any]] = {}
        for service in self.services.values():
            try:
                found.update(service.commands())
            except Exception:
                log.exception("service %s: commands failed", service.name)
        return found

    def update_settings(self, settings: Settings) -> None:
        """Give every service a new settings object (live settings only differ)."""
        self.settings = settings
        for service in self.services.values():
            service.settings = settings
