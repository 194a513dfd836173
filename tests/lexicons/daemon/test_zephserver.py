"""zephserver services under the service manager: adapter, names, resurrection on get_service."""
import pytest

from lexicons.daemon import zephserver
from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.service import ServiceState
from tests.support.daemon import make_settings, wait_for

SUPPORT = "tests.support.zeph"


@pytest.fixture
def manager(tmp_path):
    made = []

    def build(*classes, **settings):
        m = ServiceManager(make_settings(tmp_path, SERVICE_LIST=[f"{SUPPORT}/{c}"
                                                                 for c in classes], **settings),
                           Application())
        made.append(m)
        m.start()
        return m
    yield build
    for m in made:
        m.stop()


def test_a_zephserver_service_runs_and_disable_stops_it(manager):
    """A class with main() and disable() runs as a service named by its entry; stop
    calls disable() and main() returns."""
    m = manager("Steady")
    service = m.get_service(f"{SUPPORT}/Steady")
    assert isinstance(service, zephserver.ZephService)
    wait_for(lambda: service.target.runs == 1)
    assert zephserver.ServiceManager.get_instance().get_service(f"{SUPPORT}/Steady") \
        is service.target
    assert zephserver.ServiceManager.get_instance().get_service("nothing/Here") is None
    m.stop()
    assert service.target.disabled == 1
    assert service.state is ServiceState.STOPPED


def test_get_service_resurrects_a_service_whose_main_died(manager):
    """A zephserver service whose main() died is started again by get_service() at once,
    without waiting for the supervisor's backoff."""
    m = manager("DiesFirst", RESTART_BACKOFF=600.0, RESTART_BACKOFF_MAX=600.0)
    service = m.services[f"{SUPPORT}/DiesFirst"]
    wait_for(lambda: service.state is ServiceState.BACKOFF, what="the first main() to die")
    got = zephserver.ServiceManager.get_instance().get_service(f"{SUPPORT}/DiesFirst")
    assert got is service.target
    wait_for(lambda: service.target.runs == 2, what="main() to run again")
    assert service.state is ServiceState.RUNNING
    assert m.status()["services"][0]["restarts"] == 1


def test_get_service_does_not_resurrect_a_fatal_service(manager):
    """The restart limit still holds: a FATAL service is not started again by get_service()."""
    m = manager("AlwaysDies", RESTART_LIMIT=0, ON_FATAL="degrade")
    service = m.services[f"{SUPPORT}/AlwaysDies"]
    wait_for(lambda: service.state is ServiceState.FATAL, what="the service to be FATAL")
    m.get_service(f"{SUPPORT}/AlwaysDies")
    assert service.state is ServiceState.FATAL
    assert service.target.runs == 1


def test_zephserver_module_names_import_the_lexicons_classes():
    """With the aliases installed, zephserver's module names give lexicons' classes."""
    from lexicons.daemon import aliases
    aliases.install()
    from zephserver.infra.cluster_adapter import ClusterAdapter
    from zephserver.infra.service_manager import ServiceManager as ZephManager
    from zephserver.service.service_interface import ServiceInterface
    from zephserver.task.task_interface import TaskInterface

    assert ZephManager is zephserver.ServiceManager
    assert ClusterAdapter is zephserver.ClusterAdapter
    assert ServiceInterface is zephserver.ServiceInterface
    assert TaskInterface is zephserver.TaskInterface
    assert zephserver.__spec__.name == "lexicons.daemon.zephserver"
