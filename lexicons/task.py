"""Tasks: server behaviour at startup, at shutdown and on intervals.

An application declares its tasks as classes and lists them in a
``TaskManager``; the scheduler service builds one instance of each class and
keeps it for the life of the daemon, so a task may keep state in ``self``
between runs::

    class LoadDefaults(Task.Startup):
        priority = 0                       # lower runs first

        def run(self, db, sv):
            db.get_or_create("Room", name="lobby")

    class Prune(Task.Interval):
        every = 60                         # seconds between the starts of two runs

        def run(self, db, sv):
            ...

    class Backoff(Task.Interval):
        def __init__(self):
            self.delay = 1.0

        def interval(self) -> float:       # asked again after every run
            return self.delay

        def run(self, db, sv):
            ...

    tasks = TaskManager(LoadDefaults, Prune, Backoff)

``run`` is called with the keyword arguments ``db`` (the database, or None when
no persister service runs) and ``sv`` (the server facade, or None), like a
Signal's ``execute``; a task may also accept ``**kwargs``, or only the names it
uses. The original API's names work too: a task may define ``execute`` instead
of ``run`` (called the same way), as ``async def`` if it likes (it is awaited,
on the task's thread), and an interval task may compute its period in ``set()``
instead of ``interval()``::

    class OnShutdown(Task.Shutdown):
        async def execute(self, db, sv):
            ...

When each kind runs:

* ``Task.Startup``: once, in ``priority`` order (lower first, ties in declaration
  order), while the scheduler service sets up: after the database is loaded and
  before the listener accepts clients. One that raises is logged with its
  traceback; if it is ``required`` (the default) the daemon does not start and
  the error names the task, otherwise start-up goes on.
* ``Task.Shutdown``: once, in ``priority`` order (lower first), when the daemon
  stops: after the listener stopped taking clients and before the database's
  final save. Each may run for ``TASK_TIMEOUT`` seconds; one that raises or
  overruns is logged and the next one runs anyway.
* ``Task.Interval``: repeatedly, on a worker thread, every ``interval()``
  seconds (start to start). ``interval()`` is asked once before the first run
  (after the startup tasks, so it may use what they prepared) and again after
  every run, so the period may change while the daemon runs; a period shortened
  by a run applies from that run's start. A missing or bad ``every`` stops the
  start before any task runs; an ``interval()`` that fails after a run is
  logged and the previous period kept.
  A run never overlaps the previous run of the same task: when it comes due
  while the previous one is still going, that run is skipped (and counted).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any, ClassVar

from lexicons.daemon.aio import resolve
from lexicons.errors import TaskError

#: The longest interval accepted, in seconds (a year).
MAX_INTERVAL = 366 * 24 * 3600.0


class Task:
    """Base of every task: subclass ``Task.Startup``, ``Task.Shutdown`` or ``Task.Interval``."""

    #: Which kind of task this is ("startup", "shutdown" or "interval").
    kind: ClassVar[str] = ""
    #: Order among tasks of the same kind: lower runs first (startup and shutdown).
    priority: int = 0

    Startup: ClassVar[type[StartupTask]]
    Shutdown: ClassVar[type[ShutdownTask]]
    Interval: ClassVar[type[IntervalTask]]

    @property
    def name(self) -> str:
        """Return the name `status` and the log know this task by (its class name)."""
        return type(self).__name__

    def run(self, db: Any, sv: Any) -> None:
        """Do the task's work with the database *db* and the server facade *sv*."""
        raise NotImplementedError(f"task {self.name} does not define execute(self, db, sv) "
                                  f"or run(self, db, sv)")

    def execute(self, db: Any, sv: Any) -> Any:
        """Do the task's work (the original API's name): calls :meth:`run` unless overridden.

        May be ``async def``: the scheduler awaits it.
        """
        return self.run(db=db, sv=sv)


class StartupTask(Task):
    """A task run once before clients are accepted (``Task.Startup``)."""

    kind = "startup"
    #: When True, a failure of this task stops the daemon from starting.
    required: bool = True


class ShutdownTask(Task):
    """A task run once when the daemon stops, before the final save (``Task.Shutdown``)."""

    kind = "shutdown"


class IntervalTask(Task):
    """A task run repeatedly, every :meth:`interval` seconds (``Task.Interval``)."""

    kind = "interval"
    #: Seconds between the starts of two runs, unless :meth:`interval` is overridden.
    every: float | None = None

    def interval(self) -> float:
        """Return the seconds until the next run; asked before the first and after each run."""
        if self.every is None:
            raise TaskError(f"interval task {self.name}: set `every` (seconds) "
                            f"or define interval(self)")
        return self.every

    def set(self) -> float:
        """Return the seconds until the next run (the original API's name for interval())."""
        return interval_of(self, use_set=False)


Task.Startup = StartupTask
Task.Shutdown = ShutdownTask
Task.Interval = IntervalTask

KINDS: tuple[type[Task], ...] = (StartupTask, ShutdownTask, IntervalTask)


def build(blocks: Iterable[Any]) -> list[Task]:
    """Return one instance of each declared task, in declaration order.

    A block may be a task class (instantiated without arguments) or an
    instance. Raises TaskError naming the block when it is not a startup,
    shutdown or interval task, its priority is not a number, or building it fails.
    """
    tasks = []
    for block in blocks:
        label = getattr(block, "__name__", None) or type(block).__name__
        if isinstance(block, type):
            if not issubclass(block, KINDS):
                raise TaskError(f"task {label} is not a subclass of Task.Startup, "
                                f"Task.Shutdown or Task.Interval")
            try:
                block = block()
            except Exception as exc:  # user code: report it by name
                raise TaskError(f"task {label} cannot be built: "
                                f"{type(exc).__name__}: {exc}") from exc
        elif not isinstance(block, KINDS):
            raise TaskError(f"task {label!r} is not a Task.Startup, Task.Shutdown or "
                            f"Task.Interval class")
        priority = block.priority
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise TaskError(f"task {block.name}: priority must be a number, not {priority!r}")
        tasks.append(block)
    return tasks


def perform(task: Task, db: Any, sv: Any) -> None:
    """Run *task* once: its ``execute`` (or ``run``) with the ``db`` and ``sv`` it names.

    A coroutine it returns (``async def execute``) is run to completion here.
    """
    method = task.execute if type(task).execute is not Task.execute else task.run
    resolve(method(**_wanted(method, {"db": db, "sv": sv})))


def _wanted(method: Any, available: dict[str, Any]) -> dict[str, Any]:
    """Return the entries of *available* that *method* accepts by name."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return available
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in available.items() if k in names}


def ordered(tasks: Iterable[Task], kind: str) -> list[Task]:
    """Return the tasks of *kind* by priority, lower first; ties keep declaration order."""
    return sorted((t for t in tasks if t.kind == kind), key=lambda t: t.priority)


def dynamic(task: Task) -> bool:
    """Tell whether an interval task computes its interval (``interval()`` or ``set()``)."""
    cls = type(task)
    return isinstance(task, IntervalTask) and (cls.interval is not IntervalTask.interval
                                               or cls.set is not IntervalTask.set)


def interval_of(task: IntervalTask, use_set: bool = True) -> float:
    """Return *task*'s current interval in seconds, checked.

    The ``interval`` attribute may be a method (the usual case) or, for
    convenience, a plain number; a task that defines ``set()`` (the original
    API's name) is asked that instead. Raises TaskError naming the task when the
    value is not a positive number of seconds up to :data:`MAX_INTERVAL`, or
    when asking for it raises.
    """
    overridden = use_set and type(task).set is not IntervalTask.set
    value = task.set if overridden else task.interval
    if callable(value):
        try:
            value = value()
        except TaskError:
            raise
        except Exception as exc:  # user code: report it by name
            raise TaskError(f"interval task {task.name}: {value.__name__}() failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 < value <= MAX_INTERVAL):
        raise TaskError(f"interval task {task.name}: the interval must be a number of "
                        f"seconds above 0 and at most {MAX_INTERVAL:.0f}, not {value!r}")
    return float(value)
