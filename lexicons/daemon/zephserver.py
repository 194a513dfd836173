"""Code written for zephserver runs under lexicons: services, tasks and the cluster.

zephserver (a Python 2 service manager for websocket servers) had users write

* services: a class with ``__init__(self)``, ``main(self)`` (the thread's body)
  and ``disable(self)`` (ask ``main`` to return), named in ``SERVICE_LIST`` as
  ``'module.path/ClassName'``, reached from anywhere with
  ``ServiceManager.get_instance().get_service('module.path/ClassName')``;
* tasks: a class with ``__init__(self, request)``, ``main(self)`` and
  ``interrupt(self)`` (return fast: the server is stopping), named in
  ``TASKS_PATH = {'name': 'module.path/ClassName'}`` and started by a client
  message ``{"task": "name", ...}``;
* a cluster: ``CLUSTER_SERVER_LIST`` (every node's ``hostname``, ``address``
  and ``port``) and ``ClusterAdapter.get_instance()`` with ``send(event, data)``
  and ``subscribe(event, callback)``.

This module gives those names their zephserver meaning on top of lexicons:

* :class:`ZephService` adapts a zephserver service to :class:`~lexicons.service.Service`
  (``main`` is the service's thread body, ``disable`` its interrupt). The service
  manager supervises it like any other (restart with backoff, FATAL after too many
  failures), and also resurrects it when ``get_service`` asks for it after its
  ``main`` died, as zephserver did.
* :class:`ServiceManager` and :class:`ClusterAdapter` are zephserver's singletons:
  ``get_instance()`` returns the daemon running in this process.
* :class:`ServiceInterface` and :class:`TaskInterface` are zephserver's base
  classes, for code that subclasses them.

Import from here what the code imported from ``zephserver.*``::

    from lexicons.daemon.zephserver import ServiceInterface, ServiceManager, TaskInterface
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from lexicons.daemon.filters import Filter
from lexicons.daemon.service import Service
from lexicons.errors import ServiceError

log = logging.getLogger("lexicons.zephserver")


class ServiceInterface:
    """zephserver's service interface: what a service written for it defines."""

    def __init__(self) -> None:
        pass

    def main(self) -> None:
        """Run the service (the body of its thread)."""

    def disable(self) -> None:
        """Ask :meth:`main` to return."""


class TaskInterface:
    """zephserver's task interface: built with the request, then ``main()`` runs."""

    _request: Any = None

    def __init__(self, request: dict[str, Any]):
        self._request = request

    def main(self) -> None:
        """Do the task's work."""

    def interrupt(self) -> None:
        """Ask :meth:`main` to return soon: the server is stopping."""


def is_service_class(cls: Any) -> bool:
    """Tell whether *cls* is a zephserver-style service (``main`` and ``disable``)."""
    return (isinstance(cls, type) and not issubclass(cls, Service)
            and callable(getattr(cls, "main", None)) and callable(getattr(cls, "disable", None)))


class ZephService(Service):
    """Run a zephserver-style service under the service manager.

    The service is built once (``cls()``) and kept: a restart runs its ``main``
    again on the same instance, so its state survives, as in zephserver.
    """

    #: get_service() starts this service again at once when its main() has died.
    resurrect_on_get = True

    def __init__(self, manager: Any, settings: Any, target: Any, entry: str):
        # named by its SERVICE_LIST entry, as zephserver named services: no clash with
        # the daemon's own services ('listener', 'router', ...)
        super().__init__(manager, settings, name=entry)
        self.target = target
        self.entry = entry

    @classmethod
    def build(cls, manager: Any, settings: Any, service_class: type, entry: str) -> ZephService:
        """Build the zephserver service named by *entry* and wrap it."""
        try:
            target = service_class()
        except Exception as exc:
            raise ServiceError(f"service {entry!r} failed to build: "
                               f"{type(exc).__name__}: {exc}") from exc
        return cls(manager, settings, target, entry)

    def main(self) -> None:
        self.target.main()

    def interrupt(self) -> None:
        self.target.disable()

    def info(self) -> dict[str, Any]:
        return {"zephserver": type(self.target).__name__}


# --- zephserver's singletons ---------------------------------------------------------------


class _Singleton:
    """A zephserver singleton: ``get_instance()`` answers for the daemon of this process."""

    def __init__(self, manager: Any):
        self._manager = manager

    @classmethod
    def get_instance(cls) -> Any:
        """Return this object for the daemon running in this process (the last started)."""
        from lexicons.daemon.manager import current

        manager = current()
        if manager is None:
            raise ServiceError("no lexicons daemon runs in this process")
        return cls(manager)


#: zephserver's own services, and the lexicons service that does their work here.
BUILT_IN = {
    "zephserver.service.routeur_service/RouteurService": "tasks",
    "zephserver.service.clientsocket_service/StartClientSocket": "tasks",
}


class ServiceManager(_Singleton):
    """zephserver's service manager: ``get_instance().get_service(name)``."""

    def get_service(self, name: str) -> Any:
        """Return the service *name* (``'module.path/ClassName'`` or its lexicons name), or None.

        A zephserver service whose ``main`` died is started again first. As in
        zephserver, an unknown name gives None (and a warning in the log).
        """
        try:
            service = self._manager.get_service(BUILT_IN.get(name, name))
        except ServiceError:
            log.warning("service %s not found", name)
            return None
        return service.target if isinstance(service, ZephService) else service


class ClusterAdapter(_Singleton):
    """zephserver's cluster adapter: events said to every node of ``CLUSTER_SERVER_LIST``."""

    def _events(self) -> Any:
        return self._manager.events()

    def send(self, event: str, data: Any) -> None:
        """Send *event* with JSON *data* to its subscribers on every node."""
        self._events().say(event, data)

    say = send

    def subscribe(self, event: str, callback: Callable[[dict[str, Any]], Any]) -> bool:
        """Call ``callback({'event': ..., 'data': ...})`` for every *event* (zephserver's shape)."""
        if not event or not callable(callback):
            return False
        self._events().subscribe(event, _ZephHandler(callback))
        return True


class _ZephHandler:
    """A zephserver callback seen as a lexicons event handler ``fn(event, data)``."""

    def __init__(self, callback: Callable[[dict[str, Any]], Any]):
        self.callback = callback

    def __call__(self, event: str, data: Any) -> None:
        self.callback({"event": event, "data": data})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ZephHandler) and other.callback == self.callback

    def __hash__(self) -> int:
        return hash(self.callback)


# --- tasks -------------------------------------------------------------------------------


class UserSession(dict):
    """The user of a task's request: ``ws.auth``, readable as ``user.id`` as in zephserver."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TaskMessages(Filter):
    """Start a zephserver task for each ``{"task": "name", ...}`` message (stage data).

    Installed on its own when ``TASKS_PATH`` names tasks; other messages pass on
    to the native protocol unchanged. An unknown task name, or one that cannot be
    started now, is answered ``{"task": name, "data": null, "error": "..."}``.
    """

    def data(self, conn: Any, data: str | bytes) -> str | bytes | None:
        if type(data) is not str or '"task"' not in data:
            return data
        try:
            message = json.loads(data)
        except ValueError:
            return data  # the native protocol names the problem
        if not isinstance(message, dict) or not isinstance(message.get("task"), str):
            return data
        name = message["task"]
        tasks = self.manager.services.get("tasks")
        message["cid"] = conn.id
        message["usersession"] = UserSession(conn.auth) if isinstance(conn.auth, dict) \
            else conn.auth
        if tasks is None or name not in tasks.classes:
            self._refuse(conn, name, f"unknown task {name!r}")
        elif not tasks.route(message, conn):
            self._refuse(conn, name, f"task {name!r} cannot start now: the server is busy "
                                     f"or stopping")
        return None

    @staticmethod
    def _refuse(conn: Any, name: str, why: str) -> None:
        from lexicons.wire.frames import text_frame

        text = json.dumps({"task": name, "data": None, "error": why})
        conn.send_frame(text_frame(text.encode("utf-8")))
