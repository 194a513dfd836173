"""lexiconsd as a user runs it: /health and /metrics of the real daemon, FILTERS at start-up."""
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lexicons.client import Client
from lexicons.daemon import control
from lexicons.errors import CallFailed
from tests.support.daemon import kill_leftover_daemon, lexiconsd, wait_for, write_settings_file
from tests.support.websocket import http_exchange

SERVICES = ["services.control/ControlService", "tests.support.services/Flaky",
            "services.persister/PersisterService", "services.rooms/RoomsService",
            "services.router/RouterService", "services.gate/GateService",
            "services.listener/ListenerService"]
COMMON = {"SERVICE_LIST": SERVICES, "LOCK_FILE": "run/lexiconsd.pid",
          "CONTROL_SOCKET": "run/lexiconsd.sock", "LOG_PATH": "lexiconsd.log", "PORT": 0,
          "RESTART_LIMIT": 0, "ON_FATAL": "degrade", "PING_INTERVAL": 0.0}


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    kill_leftover_daemon(tmp_path)  # never leave a daemon behind


def port_of(workdir):
    done = lexiconsd("status", "--json", cwd=workdir)
    status = json.loads(done.stdout)
    listener = next(s for s in status["services"] if s["name"] == "listener")
    return int(listener["info"]["address"].rsplit(":", 1)[1])


def get(port, path):
    status, _, body = http_exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return status, body


def test_health_turns_503_when_a_service_is_fatal_and_metrics_say_so(workdir):
    """With ON_FATAL=degrade the daemon keeps serving; /health is 503 naming the FATAL service."""
    write_settings_file(workdir, **COMMON)
    started = lexiconsd("start", cwd=workdir)
    assert started.returncode == 0, started.stderr
    try:
        port = port_of(workdir)
        status, body = get(port, "/health")
        assert status == 200 and json.loads(body)["healthy"] is True
        with Client(f"ws://127.0.0.1:{port}/", timeout=5) as client:
            with pytest.raises(CallFailed):
                client.call("Nothing")
        control.request(str(workdir / "run" / "lexiconsd.sock"), "crash")
        wait_for(lambda: get(port, "/health")[0] == 503, what="/health 503")
        health = json.loads(get(port, "/health")[1])
        assert health["failing"] == {"flaky": "FATAL"}
        assert health["services"]["listener"] == "RUNNING"
        status, body = get(port, "/metrics")
        assert status == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode())
                   for s in family.samples}
        assert samples["lexicons_service_state", (("service", "flaky"), ("state", "FATAL"))] == 1
        assert samples["lexicons_healthy", ()] == 0
        assert ("lexicons_journal_lag_records", ()) in samples
        assert samples["lexicons_calls_rejected_total", ()] == 1
        assert "degraded" in lexiconsd("status", cwd=workdir).stdout.lower()
    finally:
        assert lexiconsd("stop", cwd=workdir).returncode == 0


@pytest.mark.parametrize("filters, code, words", [
    ({"data": ["tests.nowhere/Ghost"]}, 6, "tests.nowhere"),  # names nothing: bad settings
    ({"mesage": ["lexicons.filters/TrafficLog"]}, 6, "unknown stage 'mesage'"),
])
def test_a_bad_filters_setting_stops_start_up(workdir, filters, code, words):
    """An unloadable filter or an unknown stage stops `lexiconsd start`, naming FILTERS."""
    write_settings_file(workdir, **COMMON, FILTERS=filters)
    done = lexiconsd("start", cwd=workdir)
    assert done.returncode == code
    assert "FILTERS" in done.stderr and words in done.stderr
    assert not (workdir / "run" / "lexiconsd.pid").exists()
