"""Run the chat example in the real daemon, as a user would, for the chat tests."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from lexicons.client import Client
from tests.support.daemon import lexiconsd, write_settings_file

TIMEOUT = 10.0  # seconds any answer may take

SERVICES = [
    "services.control/ControlService",
    "services.persister/PersisterService",
    "services.rooms/RoomsService",
    "services.router/RouterService",
    "services.gate/GateService",
    "services.scheduler/SchedulerService",
    "services.listener/ListenerService",
]


class ChatDaemon:
    """``lexiconsd start`` with ``APP = "examples.chat"`` in a directory of its own."""

    def __init__(self, workdir: Path, app: str = "examples.chat",
                 services: list[str] | None = None, **settings: Any):
        self.workdir = workdir
        self.port = 0
        self.app = app
        self.services = services or SERVICES
        self.settings = settings  # more settings for the file

    def start(self, port: int = 0) -> ChatDaemon:
        """Start the daemon (on *port*, or any free port) and learn the port it bound."""
        write_settings_file(self.workdir, APP=self.app, PORT=port, SERVICE_LIST=self.services,
                            LOCK_FILE="run/lexiconsd.pid", CONTROL_SOCKET="run/lexiconsd.sock",
                            LOG_PATH="lexiconsd.log", DATA_DIR="data", DB_FSYNC="always",
                            **self.settings)
        done = lexiconsd("start", cwd=self.workdir)
        assert done.returncode == 0, done.stdout + done.stderr + self.log()
        status = lexiconsd("status", "--json", cwd=self.workdir)
        assert status.returncode == 0, status.stdout + status.stderr
        services = {s["name"]: s for s in json.loads(status.stdout)["services"]}
        self.port = int(services["listener"]["info"]["address"].rsplit(":", 1)[1])
        return self

    @property
    def url(self) -> str:
        """Return the page's URL."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        """Return the native protocol's websocket URL."""
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        """Stop the daemon cleanly; fail if it does not."""
        done = lexiconsd("stop", cwd=self.workdir)
        assert done.returncode == 0, done.stdout + done.stderr + self.log()

    def kill(self) -> None:
        """Kill a daemon a failed test left running (nothing if none runs)."""
        pid_file = self.workdir / "run" / "lexiconsd.pid"
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text.isdigit():
            try:
                os.kill(int(text), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_gone(self, timeout: float = 20.0) -> None:
        """Wait until no daemon answers in the directory any more (after :meth:`kill`)."""
        deadline = time.monotonic() + timeout
        while lexiconsd("status", cwd=self.workdir).returncode == 0:
            assert time.monotonic() < deadline, "the daemon is still running"
            time.sleep(0.1)

    def log(self) -> str:
        """Return the daemon's log (for failure messages)."""
        path = self.workdir / "lexiconsd.log"
        return path.read_text() if path.exists() else ""


class ChatClient(Client):
    """A chat user's connection (the Python client); broadcasts are kept until asked for."""

    def __init__(self, daemon: ChatDaemon, header: str, **credentials: Any):
        super().__init__(daemon.ws_url, {header: credentials}, query=True, timeout=TIMEOUT)
        self.broadcasts: list[tuple[str, Any]] = []

    def expect(self, name: str, timeout: float = TIMEOUT) -> Any:
        """Return the first broadcast named *name* (waiting for it); AssertionError if none."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (key, payload) in enumerate(self.broadcasts):
                if key == name:
                    del self.broadcasts[index]
                    return payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {name} broadcast within {timeout} s "
                                     f"(got {self.broadcasts!r})")
            try:
                message = self.receive(left)
            except TimeoutError:
                continue
            for item in message:
                self.broadcasts.extend(item.items())

    def quiet(self, name: str, wait: float = 0.3) -> bool:
        """Tell whether no broadcast named *name* arrives within *wait* seconds."""
        try:
            self.expect(name, wait)
        except AssertionError:
            return True
        return False
