"""The original lexicons README's chat example runs unchanged: `python main.py run`.

``original_chat.py`` is the example as its README wrote it (a ``Login`` header
function checking the hashed password, ``User`` with a password property,
``ChatMessage``, the ``Public`` channel, ``CreateChatMessage`` answering with
``self.response``, asynchronous tasks, ``Server(protocol='ws', ..., trust=[])``).
It is copied into a fresh directory as ``main.py`` and run as a user would, the
port given on the command line (the example says 5000); clients connect with
the ``websockets`` library over real sockets.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from lexicons.utils import encrypt
from tests.support.daemon import ROOT, wait_for

EXAMPLE = Path(__file__).with_name("original_chat.py")
ALICE = {"email": "alice@example.com", "password": "wonderland"}
BOB = {"email": "bob@example.com", "password": "builder"}


class Running:
    """``python main.py run --port 0`` in a directory; its log read on a thread."""

    def __init__(self, directory: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
        env["PYTHONPATH"] = str(ROOT)
        env["LEXICONS_LOG_PATH"] = "-"
        env["LEXICONS_PING_INTERVAL"] = "0"
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "run", "--port", "0"], cwd=directory, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        found = wait_for(lambda: self._port() or self.process.poll() is not None, 60,
                         what="the example to listen")
        if found is True or not self._port():
            self.stop()
            pytest.fail("the example did not start:\n" + "".join(self.lines))
        self.port = self._port()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def _port(self) -> int | None:
        for line in self.lines:
            found = re.search(r"listening on ws://localhost:(\d+)", line)
            if found:
                return int(found.group(1))
        return None

    def url(self) -> str:
        return f"ws://localhost:{self.port}/"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.reader.join(10)
        self.process.stderr.close()
        return code


@pytest.fixture
def chat(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "main.py")
    running = Running(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def login(chat: Running, credentials: dict):
    return connect(chat.url(), additional_headers={"Login": json.dumps(credentials)},
                   open_timeout=20)


def receive(ws, name: str, timeout: float = 20.0):
    """Return the payload of the next message named *name* (skipping the others)."""
    while True:
        message = json.loads(ws.recv(timeout=timeout))
        for item in message:
            if name in item:
                return item[name]


def test_the_original_readme_chat_runs_and_broadcasts(chat, tmp_path):
    """Login with the hashed password, subscribe to Public, a message reaches both users."""
    with login(chat, ALICE) as alice, login(chat, BOB) as bob:
        for ws in (alice, bob):
            ws.send(json.dumps({"Subscribe": {"channel": "Public"}}))
            assert receive(ws, "Subscribe") == "Public"    # ws.auth is a pk string
        alice.send(json.dumps({"CreateChatMessage": {"message": "hello, Bob"}}))
        expected = {"name": "Alice", "message": "hello, Bob"}
        assert receive(alice, "CreateChatMessage") == expected
        assert receive(bob, "CreateChatMessage") == expected
        assert "time" in receive(bob, "Online")          # the interval task, every set() s
    assert chat.stop() == 0
    with open(tmp_path / "data" / "User.csv", newline="") as f:
        users = {row["email"]: row for row in csv.DictReader(f)}
    assert users["alice@example.com"]["password"] == encrypt("wonderland")   # the hash
    with open(tmp_path / "data" / "ChatMessage.csv", newline="") as f:
        messages = [(row["user"], row["message"]) for row in csv.DictReader(f)]
    assert (users["alice@example.com"]["pk"], "hello, Bob") in messages
    assert messages[-1][1] == "Server stopped"     # OnShutdown's async execute was awaited
    log = "".join(chat.lines)
    assert "never awaited" not in log and "Traceback" not in log
    again = Running(tmp_path)        # the hashes load back: the same password logs in
    try:
        with login(again, BOB) as bob:
            bob.send(json.dumps({"Subscribe": {"channel": "Public"}}))
            assert receive(bob, "Subscribe") == "Public"
    finally:
        assert again.stop() == 0


def test_a_wrong_password_is_refused_with_the_headers_message(chat):
    """The Login header's ws.send before refusing reaches the client with the refusal."""
    with pytest.raises(InvalidStatus) as refused:
        login(chat, {"email": "alice@example.com", "password": "guess"})
    response = refused.value.response
    assert response.status_code == 401
    body = json.loads(response.body)
    assert body["messages"] == [[{"Errors": ["Authentication failed"]}]]
    assert body["reason"] == "Login: Authentication failed"
    with login(chat, ALICE) as alice:       # the server is fine, and trust=[] admits anyone
        alice.send(json.dumps({"Subscribe": {"channel": "Public"}}))
        assert receive(alice, "Subscribe") == "Public"
