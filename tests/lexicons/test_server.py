"""The in-code API: Server(...) with managers, start/stop, and `python main.py run`."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from lexicons import Channel, ChannelManager, Header, HeaderManager, Server, Signal, SignalManager
from lexicons.client import Client
from lexicons.errors import SettingsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Echo(Signal):
    def execute(self, data):
        return data


class Anyone(Header):
    def execute(self, ws) -> bool:
        return True


class Lobby(Channel):
    name = "lobby"


def quiet_settings(tmp_path):
    return {"LOCK_FILE": str(tmp_path / "x.pid"), "CONTROL_SOCKET": str(tmp_path / "x.sock"),
            "LOG_PATH": "-", "LOG_LEVEL": "WARNING", "PING_INTERVAL": 0.0,
            "SERVICE_LIST": ["services.control/ControlService", "services.rooms/RoomsService",
                             "services.router/RouterService", "services.gate/GateService",
                             "services.listener/ListenerService"]}


def test_server_with_managers_runs_in_the_background(tmp_path):
    """Server(...) with managers starts, serves its signals and channels, and stops."""
    server = Server(protocol="ws", host="127.0.0.1", port=0, signals=SignalManager(Echo),
                    channels=ChannelManager(Lobby), headers=HeaderManager(Anyone, gate=any),
                    data=str(tmp_path / "data"), trust=["127.0.0.1"],
                    settings=quiet_settings(tmp_path))
    assert server.application.signals == [Echo] and server.application.gate is any
    with server:
        assert server.port > 0
        with Client(f"ws://127.0.0.1:{server.port}/", headers={"Anyone": {}}) as client:
            assert client.call("Echo", data="in code") == "in code"
            client.subscribe("lobby")
    assert server.port == 0 and server.manager is None


def test_arguments_given_win_over_the_environment(monkeypatch, tmp_path):
    """Server(port=...) beats LEXICONS_PORT; what Server was not given comes from it."""
    monkeypatch.setenv("LEXICONS_PORT", "6123")
    monkeypatch.setenv("LEXICONS_HOST", "127.0.0.2")
    settings = Server(port=7000).load_settings()
    assert settings.PORT == 7000 and settings.HOST == "127.0.0.2"


def test_bad_protocol_and_wss_without_certificates_are_refused():
    """protocol must be ws or wss, and wss needs TLS_CERT and TLS_KEY."""
    with pytest.raises(SettingsError, match="protocol must be 'ws' or 'wss'"):
        Server(protocol="http")
    with pytest.raises(SettingsError, match="needs TLS_CERT and TLS_KEY"):
        Server(protocol="wss").load_settings()


def test_run_without_the_run_command_prints_usage(capsys):
    """`python main.py` without `run` prints the usage and returns 2."""
    assert Server().run([]) == 2
    assert "usage:" in capsys.readouterr().err


MAIN = """
import sys
sys.path.insert(0, {root!r})
from lexicons import Server, Signal
class Echo(Signal):
    def execute(self, data):
        return data


server = Server(signals=[Echo], settings={{
    "LOCK_FILE": "x.pid", "CONTROL_SOCKET": "x.sock", "LOG_PATH": "-", "LOG_LEVEL": "INFO",
    "DATA_DIR": "data", "PING_INTERVAL": 0.0,
    "SERVICE_LIST": ["services.rooms/RoomsService", "services.router/RouterService",
                     "services.gate/GateService", "services.listener/ListenerService"]}})

if __name__ == "__main__":
    sys.exit(server.run())
"""


@contextlib.contextmanager
def main_py_run(tmp_path, main: str):
    """Run `python main.py run --port 0` in *tmp_path*; kill it if the test did not stop it."""
    (tmp_path / "main.py").write_text(main)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
    process = subprocess.Popen([sys.executable, "main.py", "run", "--port", "0"], cwd=tmp_path,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()


def test_python_main_py_run(tmp_path):
    """`python main.py run --port 0` serves in the foreground until SIGTERM, then exits 0."""
    with main_py_run(tmp_path, textwrap.dedent(MAIN.format(root=ROOT))) as process:
        port = None
        for line in process.stderr:
            found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port
        with Client(f"ws://127.0.0.1:{port}/") as client:
            assert client.call("Echo", data=[1]) == [1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_python_main_py_run_says_where_it_listens_and_logs(tmp_path):
    """With the log in a file, `python main.py run` still says its address and its log."""
    main = textwrap.dedent(MAIN.format(root=ROOT)).replace('"LOG_PATH": "-"',
                                                           '"LOG_PATH": "main.log"')
    with main_py_run(tmp_path, main) as process:
        line = process.stderr.readline()
        found = re.fullmatch(r"lexicons: listening on ws://127\.0\.0\.1:(\d+)/; log: (.+); "
                             r"data: (.+) \(Ctrl-C stops\)\n", line)
        assert found, line
        assert found.group(2) == str(tmp_path / "main.log")
        assert found.group(3) == str(tmp_path / "data")
        with Client(f"ws://127.0.0.1:{found.group(1)}/") as client:
            assert client.call("Echo", data=[1]) == [1]
        assert "listening on" in (tmp_path / "main.log").read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
