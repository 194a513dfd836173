"""Tests of the scheduler service (services/scheduler.py), run by the real service manager."""
import contextlib
import datetime
import logging
import threading
import time

import pytest
import schedule

from lexicons.cli import format_status
from lexicons.daemon import settings as settings_mod
from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.service import Service, ServiceState
from lexicons.errors import ServiceError, TaskError
from lexicons.task import Task
from services.scheduler import SchedulerService

FAST = 0.05  # seconds between interval runs in these tests


@pytest.fixture(autouse=True)
def no_thread_left():
    """Fail a test that leaves a service or task thread behind."""
    yield
    left = wait_for(lambda: not [t for t in threading.enumerate()
                                 if t.name.startswith("lexicons-")], timeout=5.0)
    assert left, [t.name for t in threading.enumerate()]


def wait_for(predicate, timeout=10.0):
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.01)


class Persister(Service):
    """Just the part of the persister tasks see: its database."""

    name = "persister"
    db = object()


def scheduler(*tasks, persister=False, facade=None, **overrides):
    """Return a scheduler service on a (not yet started) manager holding *tasks*."""
    settings = settings_mod.load(env={}, overrides=overrides)
    manager = ServiceManager(settings, Application(name="test", tasks=list(tasks)))
    if facade is not None:
        manager.facade = facade
    if persister:
        manager.add(Persister(manager, settings))
    svc = SchedulerService(manager, settings)
    manager.add(svc)
    return svc


@contextlib.contextmanager
def running(svc):
    """Start the manager of *svc* (setup, then main on its thread); stop it on exit."""
    svc.manager.start()
    try:
        yield svc
    finally:
        svc.manager.stop()


def record(svc, name):
    """Return the status entry of task *name*."""
    return next(t for t in svc.info()["tasks"] if t["name"] == name)


def counting(name, every=FAST, *, fail=False, hold=None):
    """Return an interval task class that counts its runs (and may fail, or wait on *hold*)."""
    def run(self, db, sv):
        type(self).calls += 1
        if hold is not None:
            hold.wait(10)
        if fail:
            raise ValueError(f"{name} broke")

    return type(name, (Task.Interval,), {"every": every, "calls": 0, "run": run})


# --- startup ------------------------------------------------------------------------


def test_startup_tasks_run_in_priority_order_before_later_services_set_up():
    """Startup tasks run lower priority first (ties in declaration order), with db and sv,
    before the services after the scheduler (the listener) set up."""
    seen = []
    facade = object()

    class Listener(Service):
        name = "listener"

        def setup(self):
            seen.append(("listener", None, None))

    def startup(name, priority):
        def run(self, db, sv):
            seen.append((name, db, sv))
        return type(name, (Task.Startup,), {"priority": priority, "run": run})

    svc = scheduler(startup("c", 5), startup("a", -1), startup("b1", 0), startup("b2", 0),
                    persister=True, facade=facade)
    svc.manager.add(Listener(svc.manager, svc.settings))
    with running(svc):
        assert [s[0] for s in seen] == ["a", "b1", "b2", "c", "listener"]
        assert all(s[1] is Persister.db and s[2] is facade for s in seen[:4])
        assert record(svc, "a")["runs"] == 1 and record(svc, "a")["failures"] == 0


def test_db_and_sv_are_none_without_persister_or_facade():
    """Without a persister service or a server facade, tasks get db=None and sv=None."""
    got = []

    class Probe(Task.Startup):
        def run(self, db, sv):
            got.append((db, sv))

    with running(scheduler(Probe)):
        assert got == [(None, None)]


def test_required_startup_task_that_raises_stops_the_start_naming_it(caplog):
    """A required startup task that raises stops the daemon's start with an error naming it;
    the later startup tasks and services do not run, the earlier services are stopped."""
    ran = []

    class Migrate(Task.Startup):
        priority = 0

        def run(self, db, sv):
            raise RuntimeError("schema mismatch")

    class Later(Task.Startup):
        priority = 1

        def run(self, db, sv):
            ran.append(1)

    class Listener(Service):
        name = "listener"

        def setup(self):
            ran.append("listener")

    svc = scheduler(Later, Migrate, persister=True)
    svc.manager.add(Listener(svc.manager, svc.settings))
    with caplog.at_level(logging.ERROR, "lexicons"):
        with pytest.raises(ServiceError, match="scheduler failed to start: TaskError: "
                                               "startup task Migrate failed.*schema mismatch"):
            svc.manager.start()
    assert ran == []
    assert svc.manager.get_service("persister").state is ServiceState.STOPPED
    failed = [r for r in caplog.records if r.getMessage() == "startup task Migrate failed"]
    assert failed and failed[0].exc_info is not None


def test_no_shutdown_task_runs_when_setup_failed():
    """When a required startup task fails, teardown runs no shutdown task."""
    seen = []

    class Fails(Task.Startup):
        def run(self, db, sv):
            raise RuntimeError("no")

    class Bye(Task.Shutdown):
        def run(self, db, sv):
            seen.append(1)

    svc = scheduler(Fails, Bye)
    with pytest.raises(TaskError):
        svc.setup()
    svc.teardown()
    assert seen == []


def test_optional_startup_task_that_raises_is_logged_and_others_run(caplog):
    """A startup task with required = False that raises is logged; the next ones still run."""
    ran = []

    class Warmup(Task.Startup):
        required = False

        def run(self, db, sv):
            raise OSError("cache unreachable")

    class Next(Task.Startup):
        priority = 1

        def run(self, db, sv):
            ran.append(1)

    svc = scheduler(Warmup, Next)
    with caplog.at_level(logging.ERROR, "lexicons.scheduler"):
        with running(svc):
            assert ran == [1]
            assert svc.state is ServiceState.RUNNING
    assert record(svc, "Warmup")["failures"] == 1
    assert "cache unreachable" in record(svc, "Warmup")["last_error"]
    assert any(r.exc_info for r in caplog.records if "Warmup" in r.getMessage())


def test_bad_interval_declaration_stops_the_start_before_any_task_runs():
    """An interval task without a usable `every` is refused at start, by name, before the
    startup tasks run."""
    ran = []

    class Boot(Task.Startup):
        def run(self, db, sv):
            ran.append(1)

    class NoEvery(Task.Interval):
        def run(self, db, sv):
            pass

    with pytest.raises(ServiceError, match="interval task NoEvery: set `every`"):
        scheduler(Boot, NoEvery).manager.start()
    assert ran == []


def test_a_dynamic_interval_is_first_asked_after_the_startup_tasks():
    """interval() may depend on what the startup tasks prepared."""
    state = {}

    class Boot(Task.Startup):
        def run(self, db, sv):
            state["period"] = 123.0

    class Configured(Task.Interval):
        def interval(self):
            return state["period"]

        def run(self, db, sv):
            pass

    with running(scheduler(Configured, Boot)) as svc:
        assert record(svc, "Configured")["interval"] == 123.0


# --- shutdown -----------------------------------------------------------------------


def test_shutdown_tasks_run_in_priority_order_and_a_raising_one_does_not_stop_others(caplog):
    """Shutdown tasks run at teardown, lower priority first; one that raises is logged."""
    seen = []

    def shutdown(name, priority, fail=False):
        def run(self, db, sv):
            seen.append(name)
            if fail:
                raise ValueError(f"{name} broke")
        return type(name, (Task.Shutdown,), {"priority": priority, "run": run})

    svc = scheduler(shutdown("late", 9), shutdown("broken", 1, fail=True), shutdown("first", 0))
    with caplog.at_level(logging.ERROR, "lexicons.scheduler"):
        with running(svc):
            assert seen == []
    assert seen == ["first", "broken", "late"]
    assert record(svc, "broken")["failures"] == 1
    assert any(r.exc_info for r in caplog.records if "broken" in r.getMessage())


def test_shutdown_task_that_overruns_is_abandoned_after_the_timeout(caplog):
    """A shutdown task past TASK_TIMEOUT is logged and the next one still runs."""
    release, seen = threading.Event(), []

    class Stuck(Task.Shutdown):
        priority = 0

        def run(self, db, sv):
            release.wait(30)

    class After(Task.Shutdown):
        priority = 1

        def run(self, db, sv):
            seen.append("after")

    svc = scheduler(Stuck, After, TASK_TIMEOUT=0.2)
    try:
        with caplog.at_level(logging.ERROR, "lexicons.scheduler"):
            with running(svc):
                started = time.monotonic()
        took = time.monotonic() - started
    finally:
        release.set()
    assert seen == ["after"]
    assert took < 5.0
    assert any("Stuck" in r.getMessage() and "still running" in r.getMessage()
               for r in caplog.records)
    assert record(svc, "Stuck")["failures"] == 1


# --- interval -----------------------------------------------------------------------


def test_interval_tasks_use_their_own_scheduler():
    """The service schedules on its own schedule.Scheduler, not the module-level one."""
    svc = scheduler(counting("Tick"))
    svc.setup()
    assert schedule.get_jobs() == []
    assert len(svc._scheduler.get_jobs()) == 1
    svc.teardown()


def test_a_raising_interval_task_does_not_stop_the_scheduler(caplog):
    """An interval task that raises is logged and counted; it and the others keep running."""
    Broken, Fine = counting("Broken", fail=True), counting("Fine")
    svc = scheduler(Broken, Fine)
    with caplog.at_level(logging.ERROR, "lexicons.scheduler"):
        with running(svc):
            assert wait_for(lambda: Broken.calls >= 3 and Fine.calls >= 3)
            assert svc.thread.is_alive() and svc.last_error is None
    broken = record(svc, "Broken")
    assert broken["failures"] == broken["runs"] >= 3
    assert "ValueError: Broken broke" == broken["last_error"]
    assert record(svc, "Fine")["failures"] == 0
    assert any(r.exc_info for r in caplog.records if "Broken" in r.getMessage())


def test_a_long_task_does_not_delay_another():
    """While one interval task blocks, another keeps running on its interval."""
    hold = threading.Event()
    Long, Quick = counting("Long", hold=hold), counting("Quick")
    svc = scheduler(Long, Quick)
    try:
        with running(svc):
            assert wait_for(lambda: Long.calls == 1)
            before = Quick.calls
            assert wait_for(lambda: Quick.calls >= before + 3)
            assert Long.calls == 1 and record(svc, "Long")["running"] is True
            hold.set()
    finally:
        hold.set()


def test_an_interval_task_never_overlaps_itself(caplog):
    """A run that comes due while the previous one is going is skipped and counted."""
    hold, active, most = threading.Event(), [0], [0]
    lock = threading.Lock()

    class Slow(Task.Interval):
        every = 0.02

        def run(self, db, sv):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            hold.wait(10)
            with lock:
                active[0] -= 1

    svc = scheduler(Slow)
    try:
        with caplog.at_level(logging.WARNING, "lexicons.scheduler"):
            with running(svc):
                assert wait_for(lambda: record(svc, "Slow")["skipped"] >= 3)
                assert record(svc, "Slow")["runs"] == 0
                hold.set()
                assert wait_for(lambda: record(svc, "Slow")["runs"] >= 2)
    finally:
        hold.set()
    assert most[0] == 1
    assert any("skipping" in r.getMessage() for r in caplog.records)


def test_the_interval_is_asked_after_every_run_and_changes_the_schedule():
    """A dynamic interval takes effect after the run that changed it."""
    class Backoff(Task.Interval):
        runs = 0
        asked = 0

        def interval(self):
            type(self).asked += 1
            return FAST if type(self).runs < 3 else 3600.0

        def run(self, db, sv):
            type(self).runs += 1

    svc = scheduler(Backoff)
    with running(svc):
        assert wait_for(lambda: record(svc, "Backoff")["interval"] == 3600.0)
        time.sleep(0.3)  # many FAST intervals: no run may happen any more
        info = record(svc, "Backoff")
        assert Backoff.runs == 3 and info["runs"] == 3
        assert Backoff.asked == 4  # once before the first run, then after each
        next_run = datetime.datetime.fromisoformat(info["next_run"])
        assert next_run > datetime.datetime.now() + datetime.timedelta(seconds=3000)


def test_a_shorter_interval_takes_effect_at_once():
    """An interval shortened by a run applies to the very next run, not after the old one."""
    class Speedup(Task.Interval):
        runs = 0

        def interval(self):
            return 3600.0 if type(self).runs == 0 else FAST

        def run(self, db, sv):
            type(self).runs += 1

    svc = scheduler(Speedup)
    with running(svc):
        with svc._lock:  # as run_pending does: make the first run due now, not in an hour
            svc._scheduler.run_all()
        assert wait_for(lambda: record(svc, "Speedup")["interval"] == FAST)
        next_run = datetime.datetime.fromisoformat(record(svc, "Speedup")["next_run"])
        assert next_run < datetime.datetime.now() + datetime.timedelta(seconds=60)
        assert wait_for(lambda: Speedup.runs >= 3)


def test_main_beats_its_heartbeat():
    """The main loop beats well within heartbeat_timeout, even with nothing to run."""
    svc = scheduler()
    with running(svc):
        first = svc.last_beat
        assert wait_for(lambda: svc.last_beat > first, timeout=svc.heartbeat_timeout)


def test_an_interval_method_that_raises_keeps_the_previous_interval(caplog):
    """An interval() raising after a run is logged and counted; the task keeps its period."""
    class Flaky(Task.Interval):
        runs = 0

        def interval(self):
            if type(self).runs:
                raise ZeroDivisionError("rate")
            return FAST

        def run(self, db, sv):
            type(self).runs += 1

    svc = scheduler(Flaky)
    with caplog.at_level(logging.ERROR, "lexicons.scheduler"):
        with running(svc):
            assert wait_for(lambda: Flaky.runs >= 3)
    info = record(svc, "Flaky")
    assert info["interval"] == FAST
    assert info["failures"] >= 3
    assert "ZeroDivisionError" in info["last_error"]
    assert any("Flaky" in r.getMessage() and r.exc_info for r in caplog.records)


def test_status_lists_each_task_with_its_counters():
    """info() shows every task with runs, failures, timings and the next run."""
    class Boot(Task.Startup):
        def run(self, db, sv):
            pass

    class Bye(Task.Shutdown):
        priority = 3

        def run(self, db, sv):
            pass

    Tick = counting("Tick", every=0.1)
    svc = scheduler(Boot, Tick, Bye)
    with running(svc):
        assert wait_for(lambda: record(svc, "Tick")["runs"] >= 2)
        info = svc.info()
    by_name = {t["name"]: t for t in info["tasks"]}
    assert [t["name"] for t in info["tasks"]] == ["Boot", "Tick", "Bye"]
    assert by_name["Boot"]["kind"] == "startup" and by_name["Boot"]["runs"] == 1
    assert by_name["Bye"] == {"name": "Bye", "kind": "shutdown", "runs": 0, "failures": 0,
                              "last_run": None, "last_duration": None, "last_error": None,
                              "priority": 3}
    tick = by_name["Tick"]
    assert tick["kind"] == "interval" and tick["interval"] == 0.1
    assert tick["runs"] >= 2 and tick["failures"] == 0 and tick["skipped"] == 0
    assert 0 <= tick["last_duration"] < 5
    now = datetime.datetime.now()
    last_run = datetime.datetime.fromisoformat(tick["last_run"])
    next_run = datetime.datetime.fromisoformat(tick["next_run"])
    assert now - datetime.timedelta(seconds=30) < last_run <= now
    assert next_run >= last_run - datetime.timedelta(seconds=1)
    assert record(svc, "Bye")["runs"] == 1


def test_stop_waits_for_a_running_interval_task():
    """teardown waits for an interval task that is still running, within TASK_TIMEOUT."""
    started, finished = threading.Event(), []

    class Flush(Task.Interval):
        every = FAST

        def run(self, db, sv):
            started.set()
            time.sleep(0.3)
            finished.append(1)

    svc = scheduler(Flush, TASK_TIMEOUT=10.0)
    with running(svc):
        assert started.wait(10)
    assert finished == [1]
    assert record(svc, "Flush")["runs"] == 1 and record(svc, "Flush")["running"] is False


def test_stop_gives_up_on_an_interval_task_after_the_timeout(caplog):
    """An interval task still running after TASK_TIMEOUT is logged and left; stop goes on."""
    hold, bye = threading.Event(), []

    Stuck = counting("Stuck", hold=hold)

    class Bye(Task.Shutdown):
        def run(self, db, sv):
            bye.append(1)

    svc = scheduler(Stuck, Bye, TASK_TIMEOUT=0.2)
    try:
        with caplog.at_level(logging.ERROR, "lexicons.scheduler"):
            with running(svc):
                assert wait_for(lambda: Stuck.calls == 1)
                began = time.monotonic()
            took = time.monotonic() - began
    finally:
        hold.set()
    assert took < 5.0
    assert bye == [1]
    assert any("Stuck" in r.getMessage() and "still running" in r.getMessage()
               for r in caplog.records)


def test_lexiconsd_status_shows_one_line_per_task():
    """`lexiconsd status` shows the scheduler's task count and a line per task."""
    Tick = counting("Tick")

    class Bye(Task.Shutdown):
        def run(self, db, sv):
            pass

    svc = scheduler(Tick, Bye)
    with running(svc):
        assert wait_for(lambda: record(svc, "Tick")["runs"] >= 1)
        text = format_status(svc.manager.status())
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("scheduler"))
    assert "RUNNING" in row and "tasks=2" in row
    tick = next(line for line in lines if "name=Tick" in line)
    assert "kind=interval" in tick and "runs=" in tick and "next_run=" in tick
    assert any("name=Bye" in line and "kind=shutdown" in line for line in lines)


def test_default_service_list_runs_the_scheduler():
    """The default SERVICE_LIST includes the scheduler service."""
    assert "services.scheduler/SchedulerService" in settings_mod.DECLARED["SERVICE_LIST"].default


# --- the original API: execute (async too) and set() ------------------------------------


def test_async_execute_tasks_of_every_kind_are_awaited(caplog):
    """Startup, interval and shutdown tasks written with `async def execute` all run."""
    import asyncio

    seen = []

    class Boot(Task.Startup):
        async def execute(self, db, sv):
            await asyncio.sleep(0)
            seen.append("startup")

    class Tick(Task.Interval):
        def set(self):
            return FAST

        async def execute(self, **kwargs):
            await asyncio.sleep(0)
            seen.append("interval")

    class OnShutdown(Task.Shutdown):
        async def execute(self, db, sv):
            await asyncio.sleep(0)
            seen.append("shutdown")

    with caplog.at_level(logging.WARNING):
        with running(scheduler(Boot, Tick, OnShutdown)) as svc:
            assert wait_for(lambda: seen.count("interval") >= 2)
            assert record(svc, "Tick")["interval"] == FAST
    assert seen[0] == "startup" and seen[-1] == "shutdown"
    assert record(svc, "OnShutdown")["failures"] == 0
    assert "never awaited" not in caplog.text and "NotImplementedError" not in caplog.text
