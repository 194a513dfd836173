"""Keep every test away from a real deployment in the same checkout.

A lexicons deployment (``bin/run-example``, or a daemon started from the
checkout) listens on the default port and keeps its data, lock and socket in
paths relative to its directory. So every test runs in a temporary working
directory of its own (a default relative path lands there, never in the
checkout's ``data/`` or ``run/``), and binding the default port fails the test
at once instead of fighting the deployment for it.
"""
from __future__ import annotations

import socket

import pytest

from lexicons.daemon.settings import DECLARED

DEPLOYMENT_PORT = DECLARED["PORT"].default
_bind = socket.socket.bind


def _guarded_bind(self: socket.socket, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
            and len(address) >= 2 and address[1] == DEPLOYMENT_PORT:
        raise AssertionError(f"a test bound port {DEPLOYMENT_PORT}, the port of a real "
                             "deployment: bind port 0 and read the port bound")
    return _bind(self, address)


@pytest.fixture(autouse=True)
def away_from_deployments(tmp_path, monkeypatch):
    """Run each test in its own temporary directory, with the deployment port off limits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket.socket, "bind", _guarded_bind)
