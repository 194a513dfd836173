"""lexiconsd running code written for zephserver: services, tasks and a static cluster."""
import json
import socket
import textwrap
import time

import pytest

from lexicons.client import Client
from tests.support.daemon import kill_leftover_daemon, lexiconsd, wait_for, write_settings_file

# A zephserver service module, as zephserver's README has users write them: a class
# with __init__, main (the thread's body) and disable (ask main to return).
SERVICES = '''
import json
import pathlib
import threading

from lexicons.daemon.zephserver import ClusterAdapter, ServiceInterface

HERE = pathlib.Path({here!r})


class Clock(ServiceInterface):
    def __init__(self):
        self._stop = threading.Event()
        self.ticks = 0

    def main(self):
        self._stop.clear()
        while not self._stop.wait(0.05):
            self.ticks += 1

    def disable(self):
        self._stop.set()


class Crashy(object):
    """Its main dies on its first run; the next runs keep going until disabled."""

    def __init__(self):
        self._stop = threading.Event()
        self.runs = 0

    def main(self):
        self.runs += 1
        (HERE / "crashy-runs.txt").write_text(str(self.runs))
        if self.runs == 1:
            raise RuntimeError("crashy dies on its first run")
        self._stop.clear()
        self._stop.wait()

    def disable(self):
        self._stop.set()


class Listener(ServiceInterface):
    """Writes every 'hello' cluster event it hears to heard.txt."""

    def __init__(self):
        self._stop = threading.Event()

    def main(self):
        self._stop.clear()
        ClusterAdapter.get_instance().subscribe("hello", self.heard)
        self._stop.wait()

    def heard(self, message):
        with open(HERE / "heard.txt", "a") as out:
            out.write(json.dumps(message) + "\\n")

    def disable(self):
        self._stop.set()
'''

# zephserver tasks: built with the request, then main() runs; interrupt() must be fast.
# This module imports zephserver's own module names, as code written for it does.
TASKS = '''
import pathlib
import threading

from zephserver.infra.cluster_adapter import ClusterAdapter
from zephserver.infra.service_manager import ServiceManager
from zephserver.task.task_interface import TaskInterface

HERE = pathlib.Path({here!r})
CLIENT_SOCKET = "zephserver.service.clientsocket_service/StartClientSocket"


def say(request, data):
    ServiceManager.get_instance().get_service(CLIENT_SOCKET).say(
        {{"cid": request["cid"], "task": request["task"], "data": data}})


class EchoTask(TaskInterface):
    def main(self):
        user = self._request["usersession"]
        say(self._request, {{"echo": self._request["data"], "cid": self._request["cid"],
                             "user": user.username}})


class ServicesTask(TaskInterface):
    def main(self):
        manager = ServiceManager.get_instance()
        crashy = manager.get_service("zephservices/Crashy")
        clock = manager.get_service("zephservices/Clock")
        say(self._request, {{"crashy_runs": crashy.runs, "clock_ticks": clock.ticks,
                             "missing": manager.get_service("zephservices/Nothing")}})


class WaitTask(TaskInterface):
    def __init__(self, request):
        self._request = request
        self._stop = threading.Event()

    def main(self):
        (HERE / "waiting.txt").write_text("waiting")
        self._stop.wait(120)
        (HERE / "wait-ended.txt").write_text("interrupted" if self._stop.is_set() else "timeout")

    def interrupt(self):
        self._stop.set()


class AnnounceTask(TaskInterface):
    def main(self):
        ServiceManager.get_instance().get_service(CLIENT_SOCKET).say(
            {{"all": True, "task": "announce", "data": self._request["data"]}})


class HelloTask(TaskInterface):
    def main(self):
        ClusterAdapter.get_instance().send("hello", {{"from": self._request["data"]}})
        say(self._request, "said")
'''

# The application: a header putting the user on the connection (ws.auth).
APP = '''
from lexicons.daemon.application import HeaderManager
from lexicons.header import Header


class Session(Header):
    def execute(self, id: int, username: str, ws) -> bool:
        ws.auth["id"] = id
        ws.auth["username"] = username
        return True


headers = HeaderManager(Session)
'''

BASE = ["services.control/ControlService", "services.backplane/BackplaneService",
        "services.cluster/ClusterService", "services.rooms/RoomsService",
        "services.router/RouterService", "services.gate/GateService",
        "services.tasks/TasksService", "services.listener/ListenerService"]
TASKS_PATH = {"echo": "zephtasks/EchoTask", "services": "zephtasks/ServicesTask",
              "wait": "zephtasks/WaitTask", "hello": "zephtasks/HelloTask",
              "announce": "zephtasks/AnnounceTask"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(workdir, port, zeph_services, **settings):
    for name, text in (("zephservices.py", SERVICES), ("zephtasks.py", TASKS),
                       ("zephapp.py", APP)):
        (workdir / name).write_text(textwrap.dedent(text).format(here=str(workdir)))
    write_settings_file(workdir, APP="zephapp", HOST="127.0.0.1", PORT=port,
                        LOCK_FILE="run/lexiconsd.pid", CONTROL_SOCKET="run/lexiconsd.sock",
                        LOG_PATH="lexiconsd.log", LOG_LEVEL="DEBUG",
                        SERVICE_LIST=BASE + [f"zephservices/{s}" for s in zeph_services],
                        TASKS_PATH=TASKS_PATH, **settings)


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    kill_leftover_daemon(tmp_path)  # never leave a daemon behind


def start(workdir):
    done = lexiconsd("start", cwd=workdir)
    assert done.returncode == 0, done.stderr + (workdir / "lexiconsd.log").read_text()


def stop(workdir):
    done = lexiconsd("stop", cwd=workdir)
    assert done.returncode == 0, done.stderr


def task(client, name, data=None, timeout=10.0):
    """Send a zephserver task message and return the answer to it."""
    client.send_text(json.dumps({"task": name, "data": data}))
    return receive_task(client, name, timeout)


def receive_task(client, name, timeout=10.0):
    """Return the next zephserver answer of task *name* the client receives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.receive(timeout=deadline - time.monotonic())
        if isinstance(message, dict) and message.get("task") == name:
            return message
    raise AssertionError(f"no answer to task {name!r}")


def session(port, user_id=7, username="ada"):
    return Client(f"ws://127.0.0.1:{port}/",
                  {"Session": {"id": user_id, "username": username}}, timeout=10)


def service_status(workdir, name):
    done = lexiconsd("status", "--json", cwd=workdir)
    assert done.returncode == 0, done.stderr
    return next(s for s in json.loads(done.stdout)["services"] if s["name"] == name)


def test_zephserver_services_run_and_die_back_to_life_on_get_service(workdir):
    """zephserver services run under lexiconsd; one whose main died is started again by
    get_service() long before the supervisor's backoff would restart it."""
    port = free_port()
    prepare(workdir, port, ["Clock", "Crashy"], RESTART_BACKOFF=600.0,
            RESTART_BACKOFF_MAX=600.0)
    start(workdir)
    wait_for(lambda: service_status(workdir, "zephservices/Crashy")["state"] == "BACKOFF",
             what="crashy's first main() to die")
    assert service_status(workdir, "zephservices/Clock")["state"] == "RUNNING"
    with session(port) as client:
        answer = task(client, "services")
    assert answer["data"]["crashy_runs"] == 2      # get_service started it again
    assert answer["data"]["clock_ticks"] >= 0
    assert answer["data"]["missing"] is None        # zephserver: unknown name -> None
    crashy = service_status(workdir, "zephservices/Crashy")
    assert crashy["state"] == "RUNNING" and crashy["restarts"] == 1
    assert (workdir / "crashy-runs.txt").read_text() == "2"
    ticks = service_status(workdir, "zephservices/Clock")
    assert ticks["info"] == {"zephserver": "Clock"}
    stop(workdir)                                   # disable() made both main()s return


def test_zephserver_tasks_get_the_connection_and_user_and_are_interrupted_at_stop(workdir):
    """A {"task": ...} message runs the TASKS_PATH task with cid and usersession in its
    request; a task still running at stop is interrupted, so the stop stays fast."""
    port = free_port()
    prepare(workdir, port, [], TASK_TIMEOUT=30.0)
    start(workdir)
    with session(port, 7, "ada") as ada, session(port, 8, "bob") as bob:
        answer = task(ada, "echo", {"text": "hi"})
        assert answer["data"]["echo"] == {"text": "hi"}
        assert answer["data"]["user"] == "ada"
        other = task(bob, "echo", "x")
        assert other["data"]["user"] == "bob"
        assert other["data"]["cid"] != answer["data"]["cid"]  # each its own connection
        unknown = task(ada, "nope")
        assert unknown["error"] == "unknown task 'nope'"
        ada.send_text(json.dumps({"task": "wait"}))
        wait_for(lambda: (workdir / "waiting.txt").exists(), what="the wait task to start")
        began = time.monotonic()
        stop(workdir)
        took = time.monotonic() - began
    assert (workdir / "wait-ended.txt").read_text() == "interrupted"
    assert took < 25.0  # well under TASK_TIMEOUT: interrupt() ended the task


def cluster_node(directory, port, cluster_ports, me):
    directory.mkdir()
    servers = [{"hostname": f"node{n}", "address": "127.0.0.1", "port": p}
               for n, p in enumerate(cluster_ports)]
    prepare(directory, port, ["Listener"], CLUSTER_SERVER_LIST=servers,
            CLUSTER_SELF=f"node{me}")
    return directory


def heard(directory):
    path = directory / "heard.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def nodes(tmp_path):
    made = []
    yield made
    for directory in made:
        lexiconsd("stop", cwd=directory)
        kill_leftover_daemon(directory)


def test_static_cluster_say_reaches_every_listed_server(tmp_path, nodes):
    """With CLUSTER_SERVER_LIST of three nodes and no broker, an event said on one node
    reaches the subscribers of all three, straight over TCP."""
    ports = [free_port() for _ in range(3)]
    cluster_ports = [free_port() for _ in range(3)]
    for n in range(3):
        nodes.append(cluster_node(tmp_path / f"n{n}", ports[n], cluster_ports, n))
        start(nodes[-1])
    with session(ports[1]) as client:
        assert task(client, "hello", "node1")["data"] == "said"
        with session(ports[0]) as first, session(ports[2]) as last:
            task(first, "echo", "ready")  # both connections are served by now
            task(last, "echo", "ready")
            # zephserver's say() to 'all' reaches the clients of every node
            assert task(client, "announce", "to everyone")["data"] == "to everyone"
            assert receive_task(first, "announce")["data"] == "to everyone"
            assert receive_task(last, "announce")["data"] == "to everyone"
    for directory in nodes:
        got = wait_for(lambda d=directory: heard(d), what=f"the event on {directory.name}")
        assert got == [{"event": "hello", "data": {"from": "node1"}}]
    status = service_status(nodes[1], "cluster")
    assert status["info"]["self"] == f"127.0.0.1:{cluster_ports[1]}"
    assert {n["node"] for n in status["info"]["nodes"]} == {
        f"127.0.0.1:{cluster_ports[0]}", f"127.0.0.1:{cluster_ports[2]}"}


def test_one_server_is_no_cluster_and_say_succeeds(workdir):
    """A CLUSTER_SERVER_LIST of one entry is no cluster: say() succeeds and this node's
    subscribers hear it (through the backplane)."""
    port = free_port()
    prepare(workdir, port, ["Listener"],
            CLUSTER_SERVER_LIST=[{"hostname": "solo", "address": "127.0.0.1", "port": 1}])
    start(workdir)
    with session(port) as client:
        assert task(client, "hello", "solo")["data"] == "said"
    assert wait_for(lambda: heard(workdir)) == [{"event": "hello", "data": {"from": "solo"}}]
    assert service_status(workdir, "cluster")["info"] == {"cluster": False}
    stop(workdir)
