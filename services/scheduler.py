"""The scheduler service: the application's startup, shutdown and interval tasks.

Theory of operation
-------------------
``setup()`` builds one instance of each task the application declares, runs
the startup tasks in priority order (the database is loaded by then, and the
listener, started after this service, has not accepted anyone yet), and puts
each interval task on this service's own ``schedule.Scheduler`` (never the
module-level default one, which other code in the process may share).

``main()`` calls ``run_pending()`` whenever a job is due. A job does not run the
task: it hands the task's body to a small pool of worker threads
(``TASK_WORKERS``) and returns, so a long task never delays the others, and a
task that raises cannot stop ``schedule`` from running the jobs after it
(``run_pending`` gives up at the first job that raises). When a job comes due
while the previous run of the same task is still queued or running, the job
skips that run and counts it: a task never overlaps itself, and since each task
is queued at most once, the pool's queue never holds more than one entry per task.

When a body ends, its worker records the run, asks the task for its interval
again and, if it changed, moves the task's next run to the start of the run
just ended plus the new interval (or now, if that has passed), then wakes
``main()`` so that a shorter interval takes effect at once. Everything a worker
and ``main()`` both touch (the jobs, the records) is guarded by ``_lock``;
``run_pending`` holds it too, so a worker can never reschedule a job between
``schedule`` running it and ``schedule`` computing its next run.

``main()`` waits on its own ``_wake`` event rather than ``stopping`` so that a
worker can wake it; ``interrupt()`` sets it on stop. ``teardown()`` waits up to
``TASK_TIMEOUT`` for running bodies, then runs the shutdown tasks in priority
order, each on its own thread bounded by ``TASK_TIMEOUT``. Worker threads are
daemon threads: a body that never returns is logged and left behind, and cannot
keep the process from exiting.
"""
from __future__ import annotations

import datetime
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import schedule

from lexicons import task as tasks
from lexicons.daemon.service import Service
from lexicons.errors import LexiconsError, TaskError
from lexicons.task import IntervalTask, Task

if TYPE_CHECKING:
    from lexicons.daemon.manager import ServiceManager
    from lexicons.daemon.settings import Settings

#: Longest wait of the main loop: it beats at least this often.
MAX_WAIT = 1.0
#: Shortest wait, so that a job due "now" never makes the loop spin.
MIN_WAIT = 0.005


@dataclass
class TaskRecord:
    """What the scheduler knows about one task: its counters and, for interval tasks, its job."""

    task: Task
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    running: bool = False
    last_run: float | None = None  # wall-clock start of the last finished run
    last_duration: float | None = None
    last_error: str | None = None
    interval: float | None = None
    fired_at: datetime.datetime | None = None  # when the current or last run was due
    job: schedule.Job | None = None

    @property
    def name(self) -> str:
        return self.task.name

    def as_dict(self) -> dict[str, Any]:
        """Return the record as `status` shows it (JSON-ready)."""
        info: dict[str, Any] = {
            "name": self.name, "kind": self.task.kind, "runs": self.runs,
            "failures": self.failures, "last_run": _iso(self.last_run),
            "last_duration": None if self.last_duration is None
            else round(self.last_duration, 3),
            "last_error": self.last_error,
        }
        if self.task.kind == "interval":
            next_run = self.job.next_run if self.job is not None else None
            info.update(interval=self.interval, running=self.running, skipped=self.skipped,
                        next_run=next_run.isoformat(timespec="seconds") if next_run else None)
        else:
            info["priority"] = self.task.priority
        return info


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds")


class _Workers:
    """A fixed number of daemon threads running callables from a queue.

    The queue is unbounded, but the scheduler queues each task at most once
    (it never overlaps a task with itself), so it holds at most one entry per task.
    """

    def __init__(self, size: int, prefix: str):
        self.size = size
        self.prefix = prefix
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue *fn* to run on a worker, starting the workers on first use."""
        if not self._threads:
            for i in range(self.size):
                thread = threading.Thread(target=self._work, name=f"{self.prefix}-{i}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
        self._queue.put(fn)

    def close(self, timeout: float) -> list[threading.Thread]:
        """Stop the workers when their work ends; return those still busy after *timeout*."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in self._threads if t.is_alive()]
        self._threads = []
        return left

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            fn()  # never raises: the scheduler's bodies catch everything


class SchedulerService(Service):
    """Run the application's startup, shutdown and interval tasks."""

    name = "scheduler"
    heartbeat_timeout = 10.0

    def __init__(self, manager: ServiceManager, settings: Settings, name: str | None = None):
        super().__init__(manager, settings, name)
        self._scheduler = schedule.Scheduler()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a body ends
        self._wake = threading.Event()
        self._workers = _Workers(settings.TASK_WORKERS, "lexicons-task")
        self._records: list[TaskRecord] = []
        self._set_up = False
        self._torn_down = False

    # --- what the tasks get -----------------------------------------------------------

    def _db(self) -> Any:
        """Return the database when a persister service runs, else None."""
        try:
            persister = self.service("persister")
        except (LexiconsError, LookupError):
            return None
        return getattr(persister, "db", None)

    def _sv(self) -> Any:
        """Return the server facade the manager offers, if any."""
        return getattr(self.manager, "facade", None)

    def _call(self, record: TaskRecord) -> BaseException | None:
        """Run *record*'s task once, update its counters; return what it raised, if anything."""
        started, wall = time.monotonic(), time.time()
        error: BaseException | None = None
        try:
            tasks.perform(record.task, self._db(), self._sv())
        except BaseException as exc:  # a task must not end a worker, even with SystemExit
            error = exc
            self.log.error("%s task %s failed", record.task.kind, record.name, exc_info=exc)
        duration = time.monotonic() - started
        with self._lock:
            record.runs += 1
            record.last_run = wall
            record.last_duration = duration
            if error is not None:
                record.failures += 1
                record.last_error = f"{type(error).__name__}: {error}"
        return error

    # --- lifecycle --------------------------------------------------------------------

    def setup(self) -> None:
        """Build the tasks, run the startup ones, schedule the interval ones."""
        app = getattr(self.manager, "app", None)
        built = tasks.build(getattr(app, "tasks", None) or [])
        self._records = [TaskRecord(t) for t in built]
        by_task = {id(r.task): r for r in self._records}
        for task in built:  # a missing or bad `every` is refused before any task runs
            if isinstance(task, IntervalTask) and not tasks.dynamic(task):
                tasks.interval_of(task)
        for task in tasks.ordered(built, "startup"):
            self._startup(by_task[id(task)])
        for record in self._records:
            if record.task.kind == "interval":
                self._schedule(record)
        self._set_up = True
        self.log.info("%d tasks: %s", len(self._records),
                      ", ".join(f"{r.name} ({r.task.kind})" for r in self._records) or "none")

    def _startup(self, record: TaskRecord) -> None:
        self.log.info("startup task %s", record.name)
        error = self._call(record)
        if error is None:
            return
        if getattr(record.task, "required", True):
            raise TaskError(f"startup task {record.name} failed: "
                            f"{type(error).__name__}: {error}") from error
        self.log.warning("startup task %s is not required; going on", record.name)

    def _schedule(self, record: TaskRecord) -> None:
        assert isinstance(record.task, IntervalTask)
        record.interval = tasks.interval_of(record.task)
        record.job = self._scheduler.every(record.interval).seconds.do(self._fire, record)

    def main(self) -> None:
        """Run the jobs that are due until asked to stop."""
        while not self.stopping.is_set():
            self.beat()
            with self._lock:
                self._scheduler.run_pending()
                idle = self._scheduler.idle_seconds
            wait = MAX_WAIT if idle is None else min(max(idle, MIN_WAIT), MAX_WAIT)
            # a worker that moved a job earlier sets _wake: a set between computing
            # idle and waiting only shortens this wait, it is never lost
            self._wake.wait(wait)
            self._wake.clear()

    def interrupt(self) -> None:
        """Wake the main loop so that it sees the stop."""
        self._wake.set()

    def teardown(self) -> None:
        """Wait for running interval tasks, then run the shutdown tasks.

        Shutdown tasks run only when setup completed: a daemon whose startup
        tasks failed never served anyone, and has nothing to shut down.
        """
        if self._torn_down:
            return
        self._torn_down = True
        with self._lock:
            self._scheduler.clear()
        if not self._set_up:
            return
        timeout = self.settings.TASK_TIMEOUT
        busy = self._wait_idle(timeout)
        if busy:
            self.log.error("interval tasks still running after %.1f s: %s; going on without "
                           "them", timeout, ", ".join(busy))
        self._workers.close(0.0 if busy else timeout)
        for task in tasks.ordered([r.task for r in self._records], "shutdown"):
            self._shutdown(next(r for r in self._records if r.task is task), timeout)

    def _wait_idle(self, timeout: float) -> list[str]:
        """Wait until no interval task runs, up to *timeout*; return the names still running."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while True:
                busy = [r.name for r in self._records if r.running]
                left = deadline - time.monotonic()
                if not busy or left <= 0:
                    return busy
                self._idle.wait(left)

    def _shutdown(self, record: TaskRecord, timeout: float) -> None:
        self.log.info("shutdown task %s", record.name)
        thread = threading.Thread(target=self._call, args=(record,), daemon=True,
                                  name=f"lexicons-shutdown-{record.name}")
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            with self._lock:
                record.failures += 1
                record.last_error = f"still running after {timeout:.1f} s"
            self.log.error("shutdown task %s still running after %.1f s; going on without it",
                           record.name, timeout)

    # --- interval jobs ----------------------------------------------------------------

    def _fire(self, record: TaskRecord) -> None:
        """Hand *record*'s body to a worker, unless its previous run is still going.

        Called by ``run_pending`` with ``_lock`` held. Never raises: ``schedule``
        would skip every job after one that raised.
        """
        try:
            if self.stopping.is_set():
                return
            if record.running:
                record.skipped += 1
                self.log.warning("interval task %s is still running; skipping this run "
                                 "(%d skipped so far)", record.name, record.skipped)
                return
            record.running = True
            record.fired_at = datetime.datetime.now()
            self._workers.submit(lambda: self._body(record))
        except Exception:  # keep the other jobs going; the log has the story
            record.running = False
            record.failures += 1
            self.log.exception("cannot start interval task %s", record.name)

    def _body(self, record: TaskRecord) -> None:
        """Run an interval task on a worker, then reschedule it per its new interval."""
        interval = None
        try:
            self._call(record)
            interval = self._next_interval(record)
        finally:
            with self._lock:
                record.running = False
                if interval is not None and interval != record.interval:
                    self._reschedule(record, interval)
                self._idle.notify_all()
            self._wake.set()

    def _next_interval(self, record: TaskRecord) -> float | None:
        """Ask the task for its interval; on failure log it and keep the current one."""
        assert isinstance(record.task, IntervalTask)
        try:
            return tasks.interval_of(record.task)
        except Exception as exc:
            with self._lock:
                record.failures += 1
                record.last_error = str(exc)
            self.log.error("%s; keeping %.3f s", exc, record.interval, exc_info=exc)
            return None

    def _reschedule(self, record: TaskRecord, interval: float) -> None:
        """Give *record*'s job a new interval, counted from its last start. Needs ``_lock``."""
        self.log.info("interval task %s: every %.3f s (was %.3f s)", record.name, interval,
                      record.interval)
        record.interval = interval
        job = record.job
        if job is None or job not in self._scheduler.jobs:
            return
        job.interval = interval  # type: ignore[assignment]  # schedule accepts float seconds
        start = record.fired_at or datetime.datetime.now()
        job.next_run = max(start + datetime.timedelta(seconds=interval),
                           datetime.datetime.now())

    # --- status -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Return each task with its runs, failures, timings and, for interval tasks, next run."""
        with self._lock:
            return {"tasks": [r.as_dict() for r in self._records]}
