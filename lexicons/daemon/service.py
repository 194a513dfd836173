"""The service base class and the lifecycle every service follows.

Theory of operation
-------------------
A service is one part of the daemon (listener, rooms, persister, ...). The
service manager builds it once and drives it through these states::

    STOPPED --start--> STARTING --thread runs--> RUNNING --stop--> STOPPING --> STOPPED
                          |                         |
                          |      main() raised or returned unasked
                          v                         v
                        FATAL <--too many--------- BACKOFF --delay--> STARTING

``setup()`` runs once, synchronously, in the thread that starts the daemon:
it binds sockets and loads data, so that when ``start()`` returns the service
is usable by the ones started after it. ``main()`` runs in the service's own
thread and is the part the manager restarts (same instance, so the state the
service owns survives). ``teardown()`` runs once, after the final stop.

Every state change goes through :meth:`Service._set_state`, which checks the
transition table, records the time and logs it.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from lexicons.errors import IllegalTransition

if TYPE_CHECKING:
    from lexicons.daemon.application import Application
    from lexicons.daemon.settings import Settings


class ServiceState(enum.Enum):
    """Where a service is in its lifecycle."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    FATAL = "FATAL"


S = ServiceState


class Supervisor(Protocol):
    """What a service may ask of the manager that runs it.

    The :class:`~lexicons.daemon.manager.ServiceManager` is the one supervisor;
    naming only this much here keeps ``service`` from importing ``manager``
    (which imports ``service``).
    """

    settings: Settings
    app: Application

    def get_service(self, name: str) -> Any: ...

    def has_service(self, name: str) -> bool: ...

#: Every legal transition: state -> the states it may move to.
TRANSITIONS: dict[ServiceState, frozenset[ServiceState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.STOPPING}),
    S.RUNNING: frozenset({S.STOPPING, S.BACKOFF, S.FATAL}),
    S.BACKOFF: frozenset({S.STARTING, S.FATAL, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}

#: States in which the service's thread may be alive.
ACTIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})


class Service:
    """Base class of every supervised service.

    Subclasses override :meth:`main` (and, as needed, :meth:`setup`,
    :meth:`interrupt`, :meth:`teardown`, :meth:`info`, :meth:`commands`).
    ``main()`` must return promptly once :attr:`stopping` is set; the usual
    loop is ``while not self.stopping.wait(tick): ...``.

    A service that sets :attr:`heartbeat_timeout` promises to call
    :meth:`beat` at least that often while running; if it does not, the
    manager reports it hung (and, under systemd, stops feeding the watchdog).
    """

    #: The name other services and `status` know this service by (default: class name
    #: in lower case).
    name: str = ""
    #: Seconds allowed between two beats; None: the service does not beat.
    heartbeat_timeout: float | None = None

    def __init__(self, manager: Supervisor, settings: Settings, name: str | None = None):
        self.manager = manager
        self.settings = settings
        self.name = name or type(self).name or type(self).__name__.lower()
        self.log = logging.getLogger(f"lexicons.{self.name}")
        self.stopping = threading.Event()
        self.state = ServiceState.STOPPED
        self.state_since = time.monotonic()
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_beat = time.monotonic()
        self._state_lock = threading.Lock()

    # --- to override ------------------------------------------------------------------

    def setup(self) -> None:
        """Prepare once, before the first run: bind sockets, load data."""

    def main(self) -> None:
        """Run until :attr:`stopping` is set. Raising or returning early is a failure."""
        self.stopping.wait()

    def interrupt(self) -> None:
        """Wake :meth:`main` so that it notices :attr:`stopping` (close a socket, ...)."""

    def teardown(self) -> None:
        """Release what :meth:`setup` acquired; runs once, after the final stop."""

    def info(self) -> dict[str, Any]:
        """Return what `status` shows about this service beyond its state."""
        return {}

    def commands(self) -> dict[str, Any]:
        """Return extra control commands this service answers: {name: fn(request) -> result}."""
        return {}

    # --- helpers for subclasses -------------------------------------------------------

    def beat(self) -> None:
        """Record that the service is alive (see :attr:`heartbeat_timeout`)."""
        self.last_beat = time.monotonic()

    def service(self, name: str) -> Service:
        """Return another service of the same daemon by name."""
        return self.manager.get_service(name)

    # --- driven by the manager --------------------------------------------------------

    def _set_state(self, new: ServiceState, why: str = "") -> None:
        """Move to *new*, refusing a transition the lifecycle does not allow."""
        with self._state_lock:
            old = self.state
            if new not in TRANSITIONS[old]:
                raise IllegalTransition(f"service {self.name}: illegal transition "
                                        f"{old.value} -> {new.value}")
            self.state = new
            self.state_since = time.monotonic()
        level = logging.WARNING if new in (S.BACKOFF, S.FATAL) else logging.INFO
        self.log.log(level, "%s -> %s%s", old.value.lower(), new.value.lower(),
                     f" ({why})" if why else "")

    def _run(self) -> None:
        """Thread entry point: run main() and record how it ended."""
        try:
            self.main()
        except Exception as exc:  # any failure of main() is the manager's to handle
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.exception("main failed")
        else:
            if not self.stopping.is_set():
                self.last_error = "main() returned while not asked to stop"
                self.log.error("main returned while not asked to stop")
