"""Helpers for tests that need Redis or RabbitMQ: reach the shared ones, or run a private Redis.

A test that needs a broker which cannot be reached fails with a message saying
what is missing and how to get it; it is never skipped silently.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F"


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Tell whether a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_redis() -> str:
    """Return the shared Redis URL, or fail the test saying Redis is missing."""
    if not reachable(REDIS_HOST, REDIS_PORT):
        pytest.fail(f"this test needs Redis at {REDIS_HOST}:{REDIS_PORT}, which does not "
                    f"answer: run `bin/setup --test` (installs and starts redis-server)")
    return REDIS_URL


def require_rabbitmq() -> str:
    """Return the shared RabbitMQ URL, or fail the test saying RabbitMQ is missing."""
    if not reachable(AMQP_HOST, AMQP_PORT):
        pytest.fail(f"this test needs RabbitMQ at {AMQP_HOST}:{AMQP_PORT} (guest/guest), "
                    f"which does not answer: run `bin/setup --test` (installs and starts "
                    f"rabbitmq-server)")
    return AMQP_URL


def free_port() -> int:
    """Return a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that can be stopped and restarted."""

    def __init__(self, directory: Path, appendonly: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("this test needs the redis-server program: run `bin/setup --test` "
                        "(installs Debian's redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        # appendonly: every write is in the AOF file, fsynced, before Redis answers it
        self.persistence = (["--appendonly", "yes", "--appendfsync", "always"] if appendonly
                            else ["--appendonly", "no"])

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *self.persistence, "--dir", str(self.directory), "--daemonize", "no",
             "--logfile", os.path.join(self.directory, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not reachable("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save) and wait for it to exit."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(5)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
