"""The bootstrap: embedded use, lock, logging, reload, systemd notifications."""
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lexicons.daemon.application import Application
from lexicons.daemon.bootstrap import Bootstrap
from lexicons.daemon.notify import Notifier
from lexicons.daemon.service import ServiceState
from lexicons.errors import LockError
from tests.support.daemon import ROOT, make_settings, wait_for

SUPPORT = "tests.support.services"


def test_context_manager_starts_and_stops(tmp_path):
    """`with Bootstrap(settings)` runs the services and releases everything after."""
    settings = make_settings(tmp_path, SERVICE_LIST=["services.control/ControlService",
                                                     f"{SUPPORT}/Counter"])
    with Bootstrap(settings, Application()) as daemon:
        counter = daemon.manager.get_service("counter")
        assert counter.state is ServiceState.RUNNING
        assert (tmp_path / "lexiconsd.pid").exists()
        assert (tmp_path / "lexiconsd.sock").exists()
    assert counter.state is ServiceState.STOPPED
    assert not (tmp_path / "lexiconsd.pid").exists()
    assert not (tmp_path / "lexiconsd.sock").exists()
    log = (tmp_path / "lexiconsd.log").read_text()
    assert "lexiconsd running" in log and "lexiconsd stopped" in log


def test_second_bootstrap_on_same_lock_is_refused(tmp_path):
    """A second daemon on the same lock file is refused with the running pid."""
    import os

    settings = make_settings(tmp_path)
    with Bootstrap(settings, Application()):
        with pytest.raises(LockError, match=f"already running \\(pid {os.getpid()}"):
            Bootstrap(settings, Application()).start()


def test_failed_start_releases_lock(tmp_path):
    """A start-up that fails releases the lock so that a fixed daemon can start."""
    settings = make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/FailsSetup"])
    with pytest.raises(Exception, match="failssetup"):
        Bootstrap(settings, Application()).start()
    assert not (tmp_path / "lexiconsd.pid").exists()


def test_fatal_with_stop_policy_stops(tmp_path):
    """ON_FATAL=stop: a FATAL service makes run() return with a failure code."""
    settings = make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/Flaky"], RESTART_LIMIT=1,
                             ON_FATAL="stop")
    daemon = Bootstrap(settings, Application())
    daemon.start()
    try:
        daemon.manager.get_service("flaky").crash(always=True)
        assert daemon.wait(timeout=10), "daemon did not stop"
    finally:
        daemon.stop()
    assert daemon.exit_code == 1 and "flaky is FATAL" in daemon.stop_reason


def test_fatal_with_degrade_policy_keeps_running(tmp_path):
    """ON_FATAL=degrade: the daemon keeps running and status says degraded."""
    settings = make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/Counter", f"{SUPPORT}/Flaky"],
                             RESTART_LIMIT=0, ON_FATAL="degrade")
    with Bootstrap(settings, Application()) as daemon:
        daemon.manager.get_service("flaky").crash()
        wait_for(lambda: daemon.manager.fatal() == ["flaky"], what="FATAL")
        assert daemon.wait(timeout=0.3) is False
        assert daemon.manager.status()["degraded"] is True


def test_reload_applies_live_settings(tmp_path):
    """reload() applies live settings (log level) and lists the ones needing a restart."""
    path = tmp_path / "settings.py"
    path.write_text(f"LOCK_FILE = {str(tmp_path / 'l.pid')!r}\n"
                    f"CONTROL_SOCKET = {str(tmp_path / 'c.sock')!r}\n"
                    f"LOG_PATH = {str(tmp_path / 'l.log')!r}\nLOG_LEVEL = 'INFO'\n"
                    f"DATA_DIR = {str(tmp_path / 'data')!r}\nPORT = 0\n")
    from lexicons.daemon import settings as settings_mod
    settings = settings_mod.load(str(path), env={})
    with Bootstrap(settings, Application()) as daemon:
        path.write_text(path.read_text().replace("'INFO'", "'DEBUG'") + "PORT = 5999\n")
        result = daemon.reload()
        assert result == {"applied": ["LOG_LEVEL"], "restart_needed": ["PORT"]}
        assert daemon.manager.settings.LOG_LEVEL == "DEBUG"
        assert daemon.manager.settings.PORT == 0


def _notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    return sock


def test_systemd_ready_watchdog_and_hung(tmp_path):
    """READY=1 at start, WATCHDOG=1 while healthy, none while a service is hung, STOPPING=1."""
    sock = _notify_socket(tmp_path)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
    settings = make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/Hanging"])
    daemon = Bootstrap(settings, Application(), notifier=Notifier(env))
    received = []

    def drain(seconds):
        import time

        end = time.monotonic() + seconds
        got = []
        while time.monotonic() < end:
            daemon.wait(timeout=0.05)
            sock.settimeout(0.01)
            try:
                while True:
                    got.append(sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                pass
        received.extend(got)
        return got

    try:
        daemon.start()
        first = drain(0.5)
        assert any(m.startswith("READY=1") for m in first)
        assert sum(m == "WATCHDOG=1" for m in first) >= 2
        daemon.manager.get_service("hanging").hang.set()
        wait_for(lambda: daemon.manager.hung(), what="hung")
        drain(0.2)
        assert [m for m in drain(0.6) if m == "WATCHDOG=1"] == []
        daemon.manager.get_service("hanging").hang.clear()
        wait_for(lambda: not daemon.manager.hung(), what="recovered")
        assert "WATCHDOG=1" in drain(0.5)
    finally:
        daemon.stop()
        sock.settimeout(1)
        received.append(sock.recv(4096).decode())
        sock.close()
    assert received[-1] == "STOPPING=1"
    assert "watchdog not fed: hung service(s) hanging" in (tmp_path / "lexiconsd.log").read_text()


HOST_PROGRAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from lexicons.daemon import settings as settings_mod
    from lexicons.daemon.bootstrap import Bootstrap
    from lexicons.daemon import control
    settings = settings_mod.load(None, env={{}}, base_dir={tmp!r}, overrides={{
        "SERVICE_LIST": ["services.control/ControlService", "tests.support.services/Counter"],
        "LOG_PATH": "host.log"}})
    with Bootstrap(settings) as daemon:
        status = control.request(settings.CONTROL_SOCKET, "status")
        print(json.dumps([s["state"] for s in status["services"]]))
    print("host program still running after stop")
""")


def test_embedded_in_a_host_program(tmp_path):
    """A small host program embeds the bootstrap, talks to it and exits cleanly."""
    program = tmp_path / "host.py"
    program.write_text(HOST_PROGRAM.format(root=str(ROOT), tmp=str(tmp_path)))
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[0]) == ["RUNNING", "RUNNING"]
    assert lines[1] == "host program still running after stop"
    assert not (tmp_path / "lexiconsd.pid").exists()


def test_reload_keeps_in_code_overrides_and_base_dir(tmp_path, monkeypatch):
    """A reload reads the same sources as the start: overrides and relative paths survive."""
    from lexicons.daemon import settings as settings_mod
    path = tmp_path / "settings.py"
    path.write_text("LOG_LEVEL = 'INFO'\nLOCK_FILE = 'l.pid'\nCONTROL_SOCKET = 'c.sock'\n"
                    "LOG_PATH = 'l.log'\nPORT = 0\n")
    settings = settings_mod.load(str(path), env={}, base_dir=str(tmp_path),
                                 overrides={"TRUST": ["10.0.0.0/8"]})
    monkeypatch.chdir("/")  # as a daemon does
    with Bootstrap(settings, Application()) as daemon:
        path.write_text(path.read_text().replace("'INFO'", "'DEBUG'"))
        assert daemon.reload() == {"applied": ["LOG_LEVEL"], "restart_needed": []}
        assert daemon.manager.settings.TRUST == ["10.0.0.0/8"]
        path.write_text(path.read_text().replace("'DEBUG'", "'WARNING'"))
        assert daemon.reload()["applied"] == ["LOG_LEVEL"]
        assert daemon.manager.settings.LOG_LEVEL == "WARNING"


def test_a_stop_signal_arriving_inside_the_main_loops_wait_neither_blocks_nor_is_lost(tmp_path):
    """The SIGTERM handler only records and wakes: run while the main thread holds the stop
    Event's own lock (as inside Event.wait), it returns at once, and the loop then stops."""
    settings = make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/Counter"])
    with Bootstrap(settings, Application()) as daemon:
        done = threading.Event()
        with daemon._stop_requested._cond:   # what the main thread holds inside Event.wait
            worker = threading.Thread(target=lambda: (
                daemon._record_signal(signal.SIGTERM, None), done.set()), daemon=True)
            worker.start()
            assert done.wait(2), "the signal handler blocked on the stop Event's lock"
        started = time.monotonic()
        assert daemon.wait(timeout=10) is True
        assert time.monotonic() - started < 0.4     # woken at once, not at the next tick
        assert daemon.stop_reason == "signal SIGTERM"
