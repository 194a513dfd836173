"""lexiconsd end to end, as a user runs it: start, status, restart, stop, kill -9."""
import json
import os
import signal
import time

import pytest

from tests.support.daemon import kill_leftover_daemon, lexiconsd, wait_for, write_settings_file

SERVICES = ["services.control/ControlService", "tests.support.services/Counter",
            "tests.support.services/Flaky"]


@pytest.fixture
def workdir(tmp_path):
    write_settings_file(tmp_path, SERVICE_LIST=SERVICES, LOCK_FILE="run/lexiconsd.pid",
                        CONTROL_SOCKET="run/lexiconsd.sock", LOG_PATH="lexiconsd.log",
                        RESTART_BACKOFF=0.05)
    yield tmp_path
    kill_leftover_daemon(tmp_path)  # never leave a daemon behind


def status_json(workdir):
    done = lexiconsd("status", "--json", cwd=workdir)
    return done.returncode, json.loads(done.stdout)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_status_restart_stop(workdir):
    """start daemonizes; status lists every service RUNNING; restart works; stop returns 0."""
    started = lexiconsd("start", cwd=workdir)
    assert started.returncode == 0, started.stderr
    assert "lexiconsd started (pid" in started.stdout
    code, status = status_json(workdir)
    assert code == 0 and status["running"] is True
    assert [(s["name"], s["state"]) for s in status["services"]] == [
        ("control", "RUNNING"), ("counter", "RUNNING"), ("flaky", "RUNNING")]
    pid = status["pid"]
    assert pid != os.getpid() and os.getppid() != pid
    text = lexiconsd("status", cwd=workdir)
    assert text.returncode == 0 and "counter" in text.stdout and "RUNNING" in text.stdout

    restarted = lexiconsd("restart", "counter", cwd=workdir)
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout == "restarted counter: RUNNING\n"
    dumped = lexiconsd("restart", "counter", "--json", cwd=workdir)
    assert dumped.returncode == 0 and json.loads(dumped.stdout)["name"] == "counter"
    _, status = status_json(workdir)
    assert status["services"][1]["info"]["runs"] == 3

    stopped = lexiconsd("stop", cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(pid)
    assert not (workdir / "run" / "lexiconsd.pid").exists()
    assert not (workdir / "run" / "lexiconsd.sock").exists()
    log = (workdir / "lexiconsd.log").read_text()
    assert "lexiconsd stopped" in log


def test_second_start_is_refused(workdir):
    """A second start on the same lock is refused, naming the running pid."""
    assert lexiconsd("start", cwd=workdir).returncode == 0
    try:
        _, status = status_json(workdir)
        again = lexiconsd("start", cwd=workdir)
        assert again.returncode == 1
        assert f"already running (pid {status['pid']}" in again.stderr
    finally:
        assert lexiconsd("stop", cwd=workdir).returncode == 0


def test_start_after_kill_9(workdir):
    """After kill -9 the stale lock and socket are taken over by a new start."""
    assert lexiconsd("start", cwd=workdir).returncode == 0
    _, status = status_json(workdir)
    os.kill(status["pid"], signal.SIGKILL)
    wait_for(lambda: not alive(status["pid"]), what="killed daemon to vanish")
    assert (workdir / "run" / "lexiconsd.pid").exists()
    gone = lexiconsd("status", cwd=workdir)
    assert gone.returncode == 1 and "stale lock file" in gone.stdout
    again = lexiconsd("start", cwd=workdir)
    assert again.returncode == 0, again.stderr
    code, status2 = status_json(workdir)
    assert code == 0 and status2["pid"] != status["pid"]
    assert "took over the stale lock" in (workdir / "lexiconsd.log").read_text()
    assert lexiconsd("stop", cwd=workdir).returncode == 0


def test_status_and_stop_with_nothing_running(workdir):
    """status exits 3 and stop is non-zero with a clear message when nothing runs."""
    status = lexiconsd("status", cwd=workdir)
    assert status.returncode == 3 and "not running" in status.stdout
    stop = lexiconsd("stop", cwd=workdir)
    assert stop.returncode == 3 and "not running" in stop.stdout
    for said in (status.stdout, stop.stdout):  # which lock file and socket were looked at
        assert str(workdir / "run" / "lexiconsd.pid") in said
        assert str(workdir / "run" / "lexiconsd.sock") in said


def test_status_and_stop_from_another_directory(workdir, tmp_path_factory):
    """With --settings, status and stop find the daemon from any directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert lexiconsd("start", cwd=workdir).returncode == 0
    try:
        status = lexiconsd("status", "--settings", str(workdir / "settings.py"), cwd=elsewhere)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "lexiconsd running" in status.stdout
    finally:
        stop = lexiconsd("stop", "--settings", str(workdir / "settings.py"), cwd=elsewhere)
        assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not list(elsewhere.iterdir())  # nothing made where it ran


def test_crashing_service_restarted_in_daemon(workdir):
    """A service that raises inside the daemon is restarted; status counts it."""
    assert lexiconsd("start", cwd=workdir).returncode == 0
    try:
        from lexicons.daemon import control
        sock = str(workdir / "run" / "lexiconsd.sock")
        control.request(sock, "crash")
        wait_for(lambda: status_json(workdir)[1]["services"][2]["restarts"] == 1,
                 what="restart count")
        _, status = status_json(workdir)
        assert status["services"][2]["state"] == "RUNNING"
        assert status["services"][1]["restarts"] == 0
    finally:
        assert lexiconsd("stop", cwd=workdir).returncode == 0


def test_sigterm_stops_cleanly(workdir):
    """SIGTERM makes the daemon stop its services and release the lock."""
    assert lexiconsd("start", cwd=workdir).returncode == 0
    _, status = status_json(workdir)
    os.kill(status["pid"], signal.SIGTERM)
    wait_for(lambda: not alive(status["pid"]), what="daemon exit")
    assert not (workdir / "run" / "lexiconsd.pid").exists()
    assert "signal SIGTERM" in (workdir / "lexiconsd.log").read_text()


@pytest.mark.parametrize("env, words", [
    ({"LEXICONS_PORT": "http"}, "LEXICONS_PORT"),
    ({"LEXICONS_RESTART_LIMIT": "-3"}, "RESTART_LIMIT"),
])
def test_bad_setting_stops_start(workdir, env, words):
    """A bad setting stops start-up with exit 6 and a message naming it."""
    done = lexiconsd("start", cwd=workdir, env=env)
    assert done.returncode == 6
    assert words in done.stderr and "bad settings" in done.stderr
    assert not (workdir / "run" / "lexiconsd.pid").exists()


def test_foreground_with_python_m(workdir):
    """`python -m lexicons start --foreground` runs until SIGTERM and exits 0."""
    import subprocess
    import sys

    from tests.support.daemon import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEXICONS_LOG_PATH": "-"}
    proc = subprocess.Popen([sys.executable, "-m", "lexicons", "start", "--foreground"],
                            cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: status_json(workdir)[0] == 0, what="foreground daemon")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "lexiconsd stopped" in proc.stderr.read()


def test_hup_reloads_and_usr1_reopens_log(workdir):
    """SIGHUP applies a changed log level; the log reopens after logrotate moves it."""
    assert lexiconsd("start", cwd=workdir).returncode == 0
    try:
        _, status = status_json(workdir)
        settings = workdir / "settings.py"
        settings.write_text(settings.read_text() + "LOG_LEVEL = 'DEBUG'\n")
        os.kill(status["pid"], signal.SIGHUP)
        log = workdir / "lexiconsd.log"
        wait_for(lambda: "applied LOG_LEVEL" in log.read_text(), what="reload logged")
        log.rename(workdir / "lexiconsd.log.1")
        os.kill(status["pid"], signal.SIGUSR1)
        wait_for(lambda: log.exists() and "log file reopened" in log.read_text(),
                 what="reopened log")
        reload = lexiconsd("reload", cwd=workdir)
        assert reload.returncode == 0 and reload.stdout == "reloaded: applied nothing changed\n"
        reload = lexiconsd("reload", "--json", cwd=workdir)
        assert reload.returncode == 0 and json.loads(reload.stdout)["applied"] == []
    finally:
        assert lexiconsd("stop", cwd=workdir).returncode == 0
    assert "lexiconsd stopped" in (workdir / "lexiconsd.log").read_text()


def test_cli_loads_no_threads_before_daemonizing():
    """Importing the CLI loads neither pandas nor numpy (their thread pools break fork)."""
    import subprocess
    import sys

    from tests.support.daemon import ROOT

    code = ("import sys, threading, lexicons.cli; "
            "print(sorted(m for m in ('pandas', 'numpy') if m in sys.modules), "
            "threading.active_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert done.stdout.strip() == "[] 1", done.stderr


@pytest.mark.parametrize("env, words", [
    ({"LEXICONS_TRUST": "1.2.3.4/99"}, "TRUST"),
    ({"LEXICONS_BOOTSTRAP_URL": "ftp:/x"}, "BOOTSTRAP_URL"),
    ({"LEXICONS_TLS_CERT": "/nonexistent/cert.pem", "LEXICONS_TLS_KEY": "/nonexistent/k.pem"},
     "TLS"),
])
def test_settings_refused_by_a_service_exit_6(workdir, env, words):
    """A setting found bad while the services start is reported as bad settings (exit 6)."""
    write_settings_file(workdir, LOCK_FILE="run/lexiconsd.pid", PORT=0,
                        CONTROL_SOCKET="run/lexiconsd.sock", LOG_PATH="lexiconsd.log")
    done = lexiconsd("start", cwd=workdir, env=env)
    assert done.returncode == 6, (done.stdout, done.stderr)
    assert words in done.stderr and "bad settings" in done.stderr


def test_second_daemon_on_the_same_data_dir_is_refused(tmp_path):
    """Two daemons with their own lock files cannot share a DATA_DIR: the second names the pid."""
    shared = tmp_path / "shared-data"
    dirs = [tmp_path / "one", tmp_path / "two"]
    for directory in dirs:
        directory.mkdir()
        write_settings_file(directory, SERVICE_LIST=["services.control/ControlService",
                                                     "services.persister/PersisterService"],
                            LOCK_FILE="run/lexiconsd.pid", CONTROL_SOCKET="run/lexiconsd.sock",
                            LOG_PATH="lexiconsd.log", DATA_DIR=str(shared))
    try:
        first = lexiconsd("start", cwd=dirs[0])
        assert first.returncode == 0, first.stderr
        _, status = status_json(dirs[0])
        second = lexiconsd("start", cwd=dirs[1])
        assert second.returncode != 0
        assert f"data directory {shared} is in use by another process (pid {status['pid']}" \
            in second.stderr, second.stderr
        assert status_json(dirs[1])[0] == 3
        assert lexiconsd("stop", cwd=dirs[0]).returncode == 0
        third = lexiconsd("start", cwd=dirs[1])  # free again once the first has stopped
        assert third.returncode == 0, third.stderr
        assert lexiconsd("stop", cwd=dirs[1]).returncode == 0
    finally:
        for directory in dirs:
            kill_leftover_daemon(directory)


@pytest.mark.parametrize("entry, reason", [
    ("services.nope/Nope", "SERVICE_LIST: cannot import 'services.nope'"),
    ("services.control/Nope", "SERVICE_LIST: module 'services.control' has no class 'Nope'"),
])
def test_unknown_service_or_class_is_a_bad_setting(tmp_path, entry, reason):
    """An entry of SERVICE_LIST naming nothing exits 6 (bad settings); the log says why."""
    write_settings_file(tmp_path, SERVICE_LIST=["services.control/ControlService", entry],
                        LOCK_FILE="run/lexiconsd.pid", CONTROL_SOCKET="run/lexiconsd.sock",
                        LOG_PATH="lexiconsd.log")
    try:
        for args in (["start"], ["start", "--foreground"]):
            done = lexiconsd(*args, cwd=tmp_path)
            assert done.returncode == 6, done.stdout + done.stderr
            assert reason in done.stderr
            assert not (tmp_path / "run" / "lexiconsd.pid").exists()
        assert reason in (tmp_path / "lexiconsd.log").read_text()
    finally:
        kill_leftover_daemon(tmp_path)


def test_status_and_stop_answer_while_control_clients_hog_the_socket(workdir):
    """`lexiconsd status` and `stop` work, answered within 2 s more than usual, while 72
    clients hold the control socket sending nothing or half a request."""
    import socket

    assert lexiconsd("start", cwd=workdir).returncode == 0
    socks = []
    try:
        started = time.monotonic()
        assert lexiconsd("status", cwd=workdir).returncode == 0
        usual = time.monotonic() - started
        for n in range(72):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(workdir / "run" / "lexiconsd.sock"))
            if n % 2:
                sock.sendall(b'{"command": "sta')
            socks.append(sock)
        started = time.monotonic()
        status = lexiconsd("status", cwd=workdir)
        assert status.returncode == 0, status.stdout + status.stderr
        assert time.monotonic() - started < usual + 2.0
        stopped = lexiconsd("stop", cwd=workdir)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    finally:
        for sock in socks:
            sock.close()


REFUSED = "lexiconsd: service failssetup failed to start: OSError: port already in use (on purpose)"


def refusing(workdir):
    write_settings_file(workdir, SERVICE_LIST=["services.control/ControlService",
                                               "tests.support.services/FailsSetup"],
                        LOCK_FILE="run/lexiconsd.pid", CONTROL_SOCKET="run/lexiconsd.sock",
                        LOG_PATH="lexiconsd.log")


@pytest.mark.parametrize("args, env, traceback", [
    ((), {}, False),
    (("--debug",), {}, True),
    ((), {"LEXICONS_LOG_LEVEL": "DEBUG"}, True),
])
def test_refused_start_on_the_terminal_is_one_clear_line(workdir, args, env, traceback):
    """A refused foreground start logging to the terminal ends with one line saying why;
    the traceback shows only with --debug or LOG_LEVEL=DEBUG."""
    refusing(workdir)
    done = lexiconsd("start", "--foreground", *args, cwd=workdir,
                     env={"LEXICONS_LOG_PATH": "-", **env})
    assert done.returncode == 1
    assert done.stderr.rstrip().splitlines()[-1] == REFUSED
    assert ("Traceback" in done.stderr) is traceback, done.stderr
    if not traceback:
        assert "failssetup failed to set up (traceback with --debug)" in done.stderr


def test_refused_start_prints_one_line_and_the_log_keeps_the_traceback(workdir):
    """A refused start (daemon or foreground with a log file) prints exactly one line; the
    log file has the whole story."""
    refusing(workdir)
    for args in ((), ("--foreground",)):
        done = lexiconsd("start", *args, cwd=workdir)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [REFUSED]
    log = (workdir / "lexiconsd.log").read_text()
    assert log.count("Traceback") == 2 and "port already in use (on purpose)" in log


@pytest.mark.parametrize("env, code, line", [
    ({"LEXICONS_LOG_PATH": "afile/lexiconsd.log"}, 6,
     "lexiconsd: bad settings: LOG_PATH: cannot open {dir}/afile/lexiconsd.log: "),
    ({"LEXICONS_LOCK_FILE": "afile/lexiconsd.pid", "LEXICONS_LOG_PATH": "-"}, 1,
     "lexiconsd: cannot open lock file {dir}/afile/lexiconsd.pid: "),
])
def test_unusable_log_or_lock_path_is_one_line(workdir, env, code, line):
    """A log or lock file that cannot be made is named in one line, no traceback."""
    (workdir / "afile").write_text("a file where a directory is needed\n")
    for args in ((), ("--foreground",)):
        done = lexiconsd("start", *args, cwd=workdir, env=env)
        assert done.returncode == code, done.stderr
        [said] = done.stderr.splitlines()
        assert said.startswith(line.format(dir=workdir)), said


def test_the_journal_keeps_tracebacks(workdir):
    """Under systemd (standard error is the journal named by JOURNAL_STREAM) a refused
    start logs its traceback there: the journal is the log, not a terminal."""
    import subprocess

    from tests.support.daemon import LEXICONSD, ROOT

    refusing(workdir)
    journal = workdir / "journal"
    with open(journal, "wb") as stream:
        info = os.fstat(stream.fileno())
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
        env.update(PYTHONPATH=str(ROOT), LEXICONS_LOG_PATH="-",
                   JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        done = subprocess.run([*LEXICONSD, "start", "--foreground"], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=stream, timeout=60)
    assert done.returncode == 1
    text = journal.read_text()
    assert "Traceback" in text and text.rstrip().splitlines()[-1] == REFUSED
