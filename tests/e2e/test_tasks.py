"""lexiconsd with an application's tasks: startup before serving, interval, shutdown at stop."""
import json
import textwrap

import pytest

from tests.support.daemon import kill_leftover_daemon, lexiconsd, wait_for, write_settings_file

APP = '''
import pathlib
from lexicons import Task
from lexicons.daemon.application import TaskManager

HERE = pathlib.Path({here!r})


class Boot(Task.Startup):
    def run(self, db, sv):
        if {fail!r}:
            raise RuntimeError("cannot prepare the lobby")
        (HERE / "boot.txt").write_text("booted")


class Tick(Task.Interval):
    every = 0.1

    def run(self, db, sv):
        pass


class Bye(Task.Shutdown):
    def run(self, db, sv):
        (HERE / "bye.txt").write_text("bye")


tasks = TaskManager(Boot, Tick, Bye)
'''


def prepare(workdir, fail=False):
    (workdir / "taskapp.py").write_text(textwrap.dedent(APP).format(here=str(workdir),
                                                                     fail=fail))
    write_settings_file(workdir, APP="taskapp", LOCK_FILE="run/lexiconsd.pid",
                        CONTROL_SOCKET="run/lexiconsd.sock", LOG_PATH="lexiconsd.log",
                        SERVICE_LIST=["services.control/ControlService",
                                      "services.scheduler/SchedulerService"])


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    kill_leftover_daemon(tmp_path)  # never leave a daemon behind


def tasks_status(workdir):
    done = lexiconsd("status", "--json", cwd=workdir)
    assert done.returncode == 0, done.stderr
    scheduler = next(s for s in json.loads(done.stdout)["services"] if s["name"] == "scheduler")
    return {t["name"]: t for t in scheduler["info"]["tasks"]}


def test_tasks_run_in_the_daemon(workdir):
    """Startup runs before start returns, the interval task runs, shutdown runs on stop."""
    prepare(workdir)
    started = lexiconsd("start", cwd=workdir)
    assert started.returncode == 0, started.stderr
    assert (workdir / "boot.txt").read_text() == "booted"
    wait_for(lambda: tasks_status(workdir)["Tick"]["runs"] >= 3, what="interval runs")
    status = tasks_status(workdir)
    assert status["Boot"]["runs"] == 1 and status["Tick"]["failures"] == 0
    assert not (workdir / "bye.txt").exists()
    text = lexiconsd("status", cwd=workdir).stdout
    assert "tasks=3" in text and "name=Tick kind=interval" in text
    stopped = lexiconsd("stop", cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert (workdir / "bye.txt").read_text() == "bye"


def test_failed_startup_task_stops_the_start_naming_it(workdir):
    """A required startup task that raises makes `lexiconsd start` fail, naming the task."""
    prepare(workdir, fail=True)
    done = lexiconsd("start", cwd=workdir)
    assert done.returncode != 0
    assert "startup task Boot failed" in done.stderr
    assert "cannot prepare the lobby" in done.stderr
    assert not (workdir / "bye.txt").exists()
    wait_for(lambda: not (workdir / "run" / "lexiconsd.pid").exists(), timeout=5,
             what="the lock file to go")
