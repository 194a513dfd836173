"""The service manager: order, supervision, backoff, FATAL, hung services."""
import threading

import pytest

from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.service import ServiceState
from lexicons.errors import ServiceError
from tests.support.daemon import make_settings, wait_for

S = ServiceState
SUPPORT = "tests.support.services"


def manager(tmp_path, services, **overrides):
    settings = make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/{s}" for s in services],
                             **overrides)
    fatal = []
    m = ServiceManager(settings, Application(), on_fatal=fatal.append)
    m.fatal_calls = fatal
    return m


@pytest.fixture
def started(tmp_path):
    made = []

    def start(services, **overrides):
        m = manager(tmp_path, services, **overrides)
        m.start()
        made.append(m)
        return m

    yield start
    for m in made:
        m.stop()


def test_starts_in_order_and_stops_in_reverse(tmp_path):
    """setup() runs in SERVICE_LIST order and teardown() in reverse."""
    m = manager(tmp_path, ["Counter", "Flaky"])
    events = []
    m.build()
    for svc in m.services.values():
        svc.setup = (lambda n: lambda: events.append(("setup", n)))(svc.name)
        svc.teardown = (lambda n: lambda: events.append(("teardown", n)))(svc.name)
    m.start()
    assert all(s.state is S.RUNNING for s in m.services.values())
    m.stop()
    assert events == [("setup", "counter"), ("setup", "flaky"),
                      ("teardown", "flaky"), ("teardown", "counter")]
    assert all(s.state is S.STOPPED for s in m.services.values())
    m.stop()  # idempotent


def test_get_service_by_name(started):
    """get_service finds a service by name and names the running ones when it cannot."""
    m = started(["Counter"])
    assert m.get_service("counter").name == "counter"
    with pytest.raises(ServiceError, match="running: counter"):
        m.get_service("nope")


@pytest.mark.parametrize("entry, words", [
    ("no.such.module/X", ["cannot import", "no.such.module"]),
    ("tests.support.services/Missing", ["no class", "Missing"]),
    ("tests.support.daemon/make_settings", ["is not a", "Service subclass"]),
])
def test_unknown_service_path_is_named(tmp_path, entry, words):
    """An entry that names no service class stops start-up with its name."""
    m = ServiceManager(make_settings(tmp_path, SERVICE_LIST=[entry]), Application())
    with pytest.raises(ServiceError) as info:
        m.start()
    for word in words:
        assert word in str(info.value)


def test_failed_setup_stops_the_started(tmp_path):
    """A service that cannot set up is named, and the ones started before it are stopped."""
    m = manager(tmp_path, ["Counter", "FailsSetup"])
    with pytest.raises(ServiceError, match="failssetup failed to start.*port already in use"):
        m.start()
    counter = m.get_service("counter")
    assert counter.state is S.STOPPED and counter.teardowns == 1


def test_raising_service_is_restarted_while_others_run(started):
    """A service whose main() raises is restarted (same instance); the others keep running."""
    m = started(["Counter", "Flaky"])
    flaky, counter = m.get_service("flaky"), m.get_service("counter")
    flaky.crash()
    wait_for(lambda: flaky.runs == 2 and flaky.state is S.RUNNING, what="restart")
    assert m.status()["services"][1]["restarts"] == 1
    assert "flaky failed on purpose" in flaky.last_error
    assert counter.state is S.RUNNING and counter.runs == 1
    assert m.fatal_calls == []


def test_backoff_grows_between_restarts(started):
    """Successive failures wait longer before each restart (exponential backoff)."""
    m = started(["Flaky"], RESTART_BACKOFF=0.2, RESTART_BACKOFF_MAX=10.0, RESTART_LIMIT=10)
    flaky = m.get_service("flaky")
    seen = []
    flaky.crash(always=True)
    wait_for(lambda: flaky.state is S.BACKOFF, what="first backoff")
    seen.append(m._records["flaky"].retry_at - m.clock())
    wait_for(lambda: flaky.runs >= 2, what="first restart")
    wait_for(lambda: flaky.state is S.BACKOFF, what="second backoff")
    seen.append(m._records["flaky"].retry_at - m.clock())
    assert seen[1] > seen[0] * 1.5


@pytest.mark.parametrize("policy", ["stop", "degrade"])
def test_restart_limit_makes_fatal(started, policy):
    """Too many failures within the window make the service FATAL and call on_fatal."""
    m = started(["Counter", "Flaky"], RESTART_LIMIT=2, RESTART_WINDOW=60.0, ON_FATAL=policy)
    flaky = m.get_service("flaky")
    flaky.crash(always=True)
    wait_for(lambda: flaky.state is S.FATAL, what="FATAL")
    # on_fatal runs after the supervisor releases its lock, so a moment after the state
    # changes: a busy machine can show FATAL before the call has happened
    wait_for(lambda: m.fatal_calls, what="on_fatal")
    assert flaky.runs == 3  # the first run and two restarts
    assert m.fatal_calls == [flaky]
    status = m.status()
    assert status["degraded"] is True and status["healthy"] is False
    assert m.get_service("counter").state is S.RUNNING


def test_restart_command_revives_fatal(started):
    """restart() runs a FATAL service again and clears its failure count."""
    m = started(["Flaky"], RESTART_LIMIT=0)
    flaky = m.get_service("flaky")
    flaky.crash()
    wait_for(lambda: flaky.state is S.FATAL, what="FATAL")
    described = m.restart("flaky")
    assert described["state"] == "RUNNING" and flaky.runs == 2


def test_restart_running_service(started):
    """restart() stops main() and runs it again, keeping the instance and its state."""
    m = started(["Counter"])
    counter = m.get_service("counter")
    m.restart("counter")
    assert counter.runs == 2 and counter.setups == 1 and counter.state is S.RUNNING


def test_hung_service_is_reported_and_recovers(started):
    """A service that stops beating is reported hung; beating again clears it."""
    m = started(["Counter", "Hanging"])
    hanging = m.get_service("hanging")
    assert m.hung() == []
    hanging.hang.set()
    wait_for(lambda: m.hung() == ["hanging"], what="hung report")
    assert m.status()["services"][1]["hung"] is True
    assert m.healthy() is False
    hanging.hang.clear()
    wait_for(lambda: m.hung() == [], what="recovery")


def test_service_that_will_not_stop_is_reported(tmp_path):
    """A main() that ignores stop is reported, and restart refuses to start a second copy."""
    from lexicons.daemon.service import Service

    release = threading.Event()

    class Stubborn(Service):
        name = "stubborn"

        def main(self):
            release.wait(10)

    m = ServiceManager(make_settings(tmp_path, STOP_TIMEOUT=0.2), Application())
    m.add(Stubborn(m, m.settings))
    m.start()
    try:
        with pytest.raises(ServiceError, match="did not stop"):
            m.restart("stubborn")
    finally:
        release.set()
        m.stop()
