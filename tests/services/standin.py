"""A stand-in for the service manager: just enough to drive one service in a test."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from lexicons import settings as settings_mod
from lexicons.application import Application
from lexicons.errors import ServiceError
from lexicons.service import Service


class StandInManager:
    """Hold the app, the settings and the other services by name, like the manager does."""

    def __init__(self, tasks: list[Any] = (), *, services: dict[str, Any] | None = None,
                 facade: Any = None, **overrides: Any):
        self.settings = settings_mod.load(env={}, overrides=overrides)
        self.app = Application(name="test", tasks=list(tasks))
        self.services = dict(services or {})
        self.facade = facade

    def get_service(self, name: str) -> Any:
        try:
            return self.services[name]
        except KeyError:
            raise ServiceError(f"no service named {name}") from None


@contextlib.contextmanager
def running(service: Service, join: float = 10.0) -> Iterator[Service]:
    """Set *service* up, run its main() on a thread, then stop and tear it down."""
    service.setup()
    thread = threading.Thread(target=service._run, name=f"test-{service.name}")
    service.thread = thread
    thread.start()
    try:
        yield service
    finally:
        service.stopping.set()
        service.interrupt()
        thread.join(join)
        assert not thread.is_alive(), "main() did not return after stop"
        service.teardown()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.01)
