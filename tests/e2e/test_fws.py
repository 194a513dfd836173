"""`lexicons serve` as filtered_websocket's server: filter chains from the command line."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest
import simple_websocket

from tests.support.daemon import ROOT, kill_leftover_daemon, lexiconsd, wait_for

REDIS_URL = "redis://127.0.0.1:6379/0"

# A filter module written the way filtered_websocket's README has them: classes with a
# classmethod filter(cls, web_socket_instance, data), registered by being imported (the
# message filter imports filtered_websocket's own module name).
SHOUT = '''
from filtered_websocket.filters.base import WebSocketMessageFilter

from lexicons.fws import WebSocketOutgoingFilter


class CountMessages(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, msg):
        if msg == "how many?":
            web_socket_instance.sendMessage("clients: %d" % len(web_socket_instance.users))


class Shout(WebSocketOutgoingFilter):
    """The per-socket consumer stage: every message this socket is sent, uppercased;
    a message with 'secret' in it is not sent at all."""

    @classmethod
    def filter(cls, web_socket_instance, msg):
        if "secret" in msg:
            return False
        return msg.upper()
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A `python -m lexicons serve ...` process and its standard output."""

    def __init__(self, cwd, *args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        self.out = open(cwd / "stdout.txt", "w+")
        self.err = open(cwd / "stderr.txt", "w+")
        self.cwd = cwd
        self.process = subprocess.Popen([sys.executable, "-m", "lexicons", "serve", *args],
                                        cwd=cwd, env=env, stdout=self.out, stderr=self.err,
                                        stdin=subprocess.DEVNULL)

    def wait_port(self, port):
        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: "
                                     f"{(self.cwd / 'stderr.txt').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=30, what=f"port {port}")

    def wait_sockets(self, count):
        """Wait until the server's filters know *count* sockets (connect filters ran)."""
        def sockets():
            done = lexiconsd("status", "--json", cwd=self.cwd)
            if done.returncode != 0:
                return False
            fws = next(s for s in json.loads(done.stdout)["services"] if s["name"] == "fws")
            return fws["info"]["sockets"] == count
        wait_for(sockets, timeout=30, what=f"{count} sockets")

    def stdout(self):
        return (self.cwd / "stdout.txt").read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.out.close()
        self.err.close()
        return self.process.returncode


@pytest.fixture
def serve(tmp_path):
    started = []

    def run(*args):
        started.append(Served(tmp_path, *args))
        return started[-1]
    yield run
    for served in started:
        served.stop()


def connect(port):
    return simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/")


def receive(ws, timeout=10.0):
    message = ws.receive(timeout=timeout)
    if message is None:
        raise AssertionError("no message")
    return message


def close(*sockets):
    for ws in sockets:
        try:
            ws.close()
        except simple_websocket.ConnectionClosed:
            pass  # closed already


def nothing(ws, timeout=0.5):
    """Assert *ws* gets no message within *timeout* seconds."""
    assert ws.receive(timeout=timeout) is None


def test_serve_with_a_config_file_runs_the_filter_chain_it_names(tmp_path, serve):
    """`serve -c config.json` takes port, filters and other settings from the file:
    broadcast_messages sends each message to every other client, stdout_messages prints it."""
    port = free_port()
    (tmp_path / "config.json").write_text(
        "# the server of the chat room\n"
        + json.dumps({"port": port, "filters": ["filtered_websocket.filters.broadcast_messages",
                                                "stdout_messages"], "log_level": "DEBUG"}))
    served = serve("-c", "config.json")
    served.wait_port(port)
    a, b, c = connect(port), connect(port), connect(port)
    served.wait_sockets(3)
    try:
        a.send("hello from a")
        assert receive(b) == "hello from a"
        assert receive(c) == "hello from a"
        nothing(a)
        wait_for(lambda: "=> hello from a" in served.stdout(), what="the printed message")
        lines = served.stdout().splitlines()
        at = lines.index("--MESSAGE--")
        assert lines[at + 1].endswith(" => hello from a")
    finally:
        close(a, b, c)
    assert served.stop() == 0


def test_serve_with_no_filter_and_no_app_broadcasts_every_message(tmp_path, serve):
    """With no filter and no application, serve is filtered_websocket's broadcast server."""
    port = free_port()
    served = serve("-p", str(port))
    served.wait_port(port)
    a, b = connect(port), connect(port)
    served.wait_sockets(2)
    try:
        b.send("from b")
        assert receive(a) == "from b"
        nothing(b)
    finally:
        close(a, b)


def test_a_user_filter_module_and_the_per_socket_outgoing_stage(tmp_path, serve):
    """-f takes the user's own filter modules; an outgoing filter sees (and may change or
    drop) every message each socket is about to be sent."""
    (tmp_path / "shout.py").write_text(textwrap.dedent(SHOUT))
    port = free_port()
    served = serve("-p", str(port), "-f", "broadcast_messages", "shout")
    served.wait_port(port)
    a, b = connect(port), connect(port)
    served.wait_sockets(2)
    try:
        a.send("quiet words")
        assert receive(b) == "QUIET WORDS"
        a.send("a secret")
        a.send("how many?")
        assert receive(a) == "CLIENTS: 2"
        assert receive(b) == "HOW MANY?"   # the secret never came
    finally:
        close(a, b)


def test_token_groups_keep_their_members_in_redis_for_other_applications(tmp_path, serve):
    """broadcast_messages_by_token: 'token:KEY' joins a group; messages reach the group only.
    With the Redis storage object the groups are Redis sets another program can read."""
    import redis

    prefix = f"fws-test-{uuid.uuid4().hex}"
    port = free_port()
    served = serve("-p", str(port), "-f", "broadcast_messages_by_token",
                   "--storage", "redis", "--redis_host", "127.0.0.1", "--redis_port", "6379",
                   "--redis_key", prefix)
    served.wait_port(port)
    other_app = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    a, b, c = connect(port), connect(port), connect(port)
    served.wait_sockets(3)
    try:
        a.send("too early")
        assert receive(a) == "Error: No token has been set"
        for ws, token in ((a, "red"), (b, "red"), (c, "blue")):
            ws.send(f"token:{token}")
            assert receive(ws) == f"Successfully registered with broadcast group: {token}"
        assert len(other_app.smembers(f"{prefix}:red")) == 2
        a.send("to the reds")
        assert receive(b) == "to the reds"
        nothing(c)
        nothing(a)
        close(b)
        wait_for(lambda: len(other_app.smembers(f"{prefix}:red")) == 1,
                 what="the closed client to leave its group")
    finally:
        close(a, b, c)
        other_app.delete(f"{prefix}:red", f"{prefix}:blue")
        other_app.close()


def published(listener):
    """Return the data of the next message *listener* (a redis-py pubsub) receives."""
    got = wait_for(lambda: listener.get_message(timeout=0.5), what="a published message")
    return got["data"]


def test_broadcast_pubsub_relays_redis_channels_to_clients_and_back(tmp_path, serve):
    """--redis_channels: what another application publishes reaches every client, and what a
    client sends is published on the channel (and reaches the other clients, not itself)."""
    import redis

    channel = f"fws-test-{uuid.uuid4().hex}"
    port = free_port()
    served = serve("-p", str(port), "-f", "broadcast_pubsub", "--redis_channels", channel,
                   "--redis_host", "127.0.0.1")
    served.wait_port(port)
    other_app = redis.Redis.from_url(REDIS_URL)
    listener = other_app.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    wait_for(lambda: other_app.pubsub_numsub(channel)[0][1] == 2, what="both subscribers")
    a, b = connect(port), connect(port)
    served.wait_sockets(2)
    try:
        other_app.publish(channel, "news from redis")
        assert receive(a) == "news from redis"
        assert receive(b) == "news from redis"
        assert published(listener) == b"news from redis"
        a.send("a client speaks")
        assert receive(b) == "a client speaks"
        assert published(listener) == b"a client speaks"
        nothing(a)
    finally:
        close(a, b)
        listener.close()
        other_app.close()


def test_bad_config_and_bad_filter_stop_the_start_with_their_names(tmp_path):
    """An unknown option in the config file, or a filter module that does not import, stops
    `serve` at once with a message naming it."""
    (tmp_path / "config.json").write_text(json.dumps({"port": 0, "colour": "blue"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "lexicons", "serve", "-c", "config.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 6
    assert "unknown option 'colour'" in done.stderr
    done = subprocess.run([sys.executable, "-m", "lexicons", "serve", "-p", "0", "-f",
                           "no_such_filter"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 6  # names nothing: bad settings
    assert "cannot import 'no_such_filter'" in done.stderr


def fws_status(cwd):
    done = lexiconsd("status", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return next(s for s in json.loads(done.stdout)["services"] if s["name"] == "fws")


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    kill_leftover_daemon(tmp_path)


def test_lexiconsd_start_takes_the_same_flags(workdir):
    """`lexiconsd start -p PORT -f ...` runs the filter chain as a daemon."""
    port = free_port()
    (workdir / "settings.py").write_text("LOCK_FILE = 'run/lexiconsd.pid'\n"
                                         "CONTROL_SOCKET = 'run/lexiconsd.sock'\n")
    done = lexiconsd("start", "-p", str(port), "-f", "broadcast_messages", cwd=workdir)
    assert done.returncode == 0, done.stderr
    try:
        a, b = connect(port), connect(port)
        wait_for(lambda: fws_status(workdir)["info"]["sockets"] == 2, what="2 sockets")
        a.send("daemonized")
        assert receive(b) == "daemonized"
        close(a, b)
        assert fws_status(workdir)["info"]["filters"] == ["broadcast_messages"]
    finally:
        assert lexiconsd("stop", cwd=workdir).returncode == 0



ECHO_APP = '''
from lexicons.daemon.application import SignalManager
from lexicons.signal import Signal


class Echo(Signal):
    def execute(self, text: str):
        return text


signals = SignalManager(Echo)
'''


def test_with_an_application_messages_run_as_calls_too(tmp_path, serve):
    """With APP set, a message goes through the filter chain and also runs as calls."""
    (tmp_path / "echoapp.py").write_text(textwrap.dedent(ECHO_APP))
    (tmp_path / "settings.py").write_text("APP = 'echoapp'\n")
    port = free_port()
    served = serve("--settings", "settings.py", "-p", str(port), "-f", "stdout_messages")
    served.wait_port(port)
    a = connect(port)
    served.wait_sockets(1)
    try:
        a.send(json.dumps({"Echo": {"text": "hi"}, "#": 1}))
        assert json.loads(receive(a)) == [{"Echo": "hi", "#": 1}]
        wait_for(lambda: '=> {"Echo"' in served.stdout(), what="the printed message")
    finally:
        close(a)
