"""The tasks service: zephserver-style tasks started by client messages.

Theory of operation
-------------------
``TASKS_PATH`` maps task names to ``'module.path/ClassName'`` entries, as in
zephserver. A native-protocol client that sends ``{"task": "name", ...}``
(a JSON object whose ``task`` is a string) starts that task: the
:class:`lexicons.zephserver.TaskMessages` filter hands the message to
:meth:`TasksService.route` instead of decoding it as calls.

``route`` builds the *request*: the message itself plus ``cid`` (the
connection's id), ``usersession`` (what the gate's headers put in
``ws.auth``, also readable as attributes: ``usersession.id``) and
``authorized``; then ``cls(request)`` is built and its ``main()`` runs on one
of ``WORKERS`` worker threads. More tasks than workers wait in a queue of
``TASK_QUEUE`` at most; past that the client is told the server is busy.

A task answers with :meth:`TasksService.say`, zephserver's ``say(answer)``:
``{"cid": cid, "task": ..., "data": ...}`` sends ``{"task": ..., "data": ...}``
to that connection; ``"room": "name"`` to the members of channel *name*;
``"users": [id, ...]`` to the connections whose ``ws.auth["id"]`` is one of
them; ``"all": true`` to every native-protocol connection of this node.
An answer to a room, users or all goes to every node of the cluster (the
cluster event ``zephserver:say``), as zephserver did; one to a ``cid`` is sent
from here.

On stop, every running task's ``interrupt()`` is called (zephserver's
contract: it must make ``main()`` return quickly), then the workers are
joined for at most ``TASK_TIMEOUT`` seconds.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

from lexicons.daemon.entries import import_entry
from lexicons.daemon.service import Service
from lexicons.errors import ServiceError, SettingsError
from lexicons.wire.frames import text_frame

#: The cluster event carrying zephserver answers to rooms, users or all.
SAY_EVENT = "zephserver:say"


class TasksService(Service):
    """Run zephserver-style tasks named in ``TASKS_PATH`` (see the module doc)."""

    name = "tasks"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.paths: dict[str, str] = dict(self.settings.TASKS_PATH)
        self.classes: dict[str, type] = {}
        self._queue: queue.Queue[tuple[type, dict[str, Any], Any] | None] = queue.Queue(
            self.settings.TASK_QUEUE)
        self._running: dict[int, Any] = {}   # id(task) -> task, while its main() runs
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._events: Any = None  # the cluster events' service, once set up
        self.started = 0
        self.failed = 0
        self.refused = 0

    @property
    def active(self) -> bool:
        """Tell whether any task is declared."""
        return bool(self.paths)

    def setup(self) -> None:
        for name, entry in self.paths.items():
            if not isinstance(entry, str) or "/" not in entry:
                raise SettingsError(f"TASKS_PATH: {name!r}: expected 'module.path/ClassName', "
                                    f"got {entry!r}")
            cls = import_entry(entry, object, f"TASKS_PATH[{name!r}]")
            if not callable(getattr(cls, "main", None)):
                raise ServiceError(f"TASKS_PATH[{name!r}]: {entry!r} has no main() method")
            self.classes[name] = cls
        if self.classes:
            self.log.info("zephserver tasks: %s", ", ".join(sorted(self.classes)))
            try:
                self._events = self.manager.events()
            except ServiceError:
                self._events = None  # no backplane: answers reach this node's clients only
            else:
                self._events.subscribe(SAY_EVENT, self._said)

    def main(self) -> None:
        if self.classes:
            self._workers = [threading.Thread(target=self._work, daemon=True,
                                              name=f"lexicons-task-{n}")
                             for n in range(self.settings.WORKERS)]
            for worker in self._workers:
                worker.start()
        try:
            self.stopping.wait()
        finally:
            self._stop_workers()

    def teardown(self) -> None:
        if self._events is not None:
            self._events.unsubscribe(SAY_EVENT, self._said)
            self._events = None

    def interrupt(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for task in running:
            try:
                task.interrupt()
            except Exception:  # user code: log, and interrupt the others anyway
                self.log.exception("task %s: interrupt() failed", type(task).__name__)

    def info(self) -> dict[str, Any]:
        with self._lock:
            running = len(self._running)
        return {"tasks": len(self.classes), "running": running, "queued": self._queue.qsize(),
                "started": self.started, "failed": self.failed, "refused": self.refused}

    # --- zephserver's routeur: start a task -----------------------------------------------

    def route(self, request: dict[str, Any], conn: Any = None) -> bool:
        """Start the task ``request['task']`` on a worker; False if it cannot be started."""
        name = request.get("task")
        cls = self.classes.get(name) if isinstance(name, str) else None
        if cls is None or self.stopping.is_set():
            return False
        request.setdefault("authorized", True)
        try:
            self._queue.put_nowait((cls, request, conn))
        except queue.Full:
            self.refused += 1
            return False
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self.stopping.is_set():
                return
            cls, request, _conn = item
            self._run_one(cls, request)

    def _run_one(self, cls: type, request: dict[str, Any]) -> None:
        """Build one task with its request and run its main(); failures are logged."""
        task = None
        try:
            task = cls(request)
            if not request.get("authorized", True):
                return
            with self._lock:
                if self.stopping.is_set():
                    return
                self._running[id(task)] = task
            self.started += 1
            task.main()
        except Exception:  # user code: log it with the request, the worker goes on
            self.failed += 1
            self.log.exception("task %s failed (connection %s)", request.get("task"),
                               request.get("cid"))
        finally:
            if task is not None:
                with self._lock:
                    self._running.pop(id(task), None)

    def _stop_workers(self) -> None:
        """Join the workers (the manager called interrupt() already) within TASK_TIMEOUT."""
        for _ in self._workers:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        deadline = time.monotonic() + self.settings.TASK_TIMEOUT
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in self._workers):
            self.log.warning("a task did not return within %g s of interrupt()",
                             self.settings.TASK_TIMEOUT)
        self._workers = []
        while not self._queue.empty():  # tasks never started are dropped with the stop
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    # --- zephserver's client socket: answer -------------------------------------------------

    def say(self, answer: dict[str, Any], from_cluster: bool = False) -> None:
        """Send ``{"task", "data"}`` of *answer* to its ``cid``, ``room``, ``users`` or ``all``.

        As in zephserver, an answer to a room, users or all goes to every node of the
        cluster (as the cluster event ``zephserver:say``); one to a ``cid`` stays here.
        Raises ValueError when *answer* names no target or cannot be sent as JSON.
        """
        if not isinstance(answer, dict) or not {"cid", "room", "users", "all"} & set(answer):
            raise ValueError("an answer is a dict with 'task', 'data' and a target: "
                             "'cid', 'room', 'users' or 'all'")
        text = json.dumps({"task": answer.get("task"), "data": answer.get("data")},
                          separators=(",", ":"), allow_nan=False)
        if "cid" not in answer and not from_cluster and self._events is not None:
            self._events.say(SAY_EVENT, answer)  # its handler delivers it, here too
            return
        frame = text_frame(text.encode("utf-8"))
        for conn in self._targets(answer):
            conn.send_frame(frame)

    def _said(self, event: str, answer: Any) -> None:
        """Deliver an answer said on any node to this node's targets."""
        try:
            self.say(answer, from_cluster=True)
        except ValueError as exc:
            self.log.warning("a zephserver answer from the cluster was dropped: %s", exc)

    def _targets(self, answer: dict[str, Any]) -> list[Any]:
        listener = self.manager.services.get("listener")
        router = self.manager.services.get("router")
        if "room" in answer:
            rooms = self.manager.services.get("rooms")
            return list(rooms.members(str(answer["room"]))) if rooms is not None else []
        connections = [c for c in (listener.hub.connections.copy() if listener else ())
                       if router is None or c.handler is router]
        if "users" in answer:
            wanted = set(answer["users"])
            return [c for c in connections
                    if isinstance(c.auth, dict) and c.auth.get("id") in wanted]
        if "all" in answer:
            return connections
        if "cid" in answer:
            return [c for c in connections if c.id == answer["cid"]]
        return []

