"""A client of the real daemon recovers what it missed across a daemon restart."""
from __future__ import annotations

import time
import uuid

import pytest

from lexicons.client import Client
from tests.examples.chat_daemon import ChatDaemon
from tests.support.brokers import free_port, require_redis
from tests.support.daemon import wait_for
from tests.support.nodes import NATIVE_SERVICES

SERVICES = ["services.control/ControlService", *NATIVE_SERVICES]


@pytest.fixture
def make_daemon(tmp_path):
    made = []

    def make(**settings):
        daemon = ChatDaemon(tmp_path, app="tests.support.historyapp", services=SERVICES,
                            **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


def posts(client, channel, last, timeout=30.0):
    """Return the n of each Post on *channel* until n == *last*."""
    seen = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != last:
        assert time.monotonic() < deadline, f"got {seen[-5:]} before timing out"
        for item in client.receive(timeout):
            if "Post" in item and item["@"]["channel"] == channel:
                seen.append(item["Post"]["n"])
    return seen


def post(daemon, channel, numbers):
    with Client(daemon.ws_url, headers={"User": {"name": "pub"}}, timeout=10) as pub:
        for n in numbers:
            pub.call("Post", channels=[channel], n=n)


def restart_under(daemon, sub, channel, port):
    """Post 0..9, restart the daemon, post 10..19; return what *sub* got on *channel*."""
    post(daemon, channel, range(10))
    before = posts(sub, channel, 9)
    daemon.stop()
    daemon.start(port=port)
    post(daemon, channel, range(10, 20))
    wait_for(lambda: sub.reconnects >= 1, timeout=30, what="the client to reconnect")
    assert sub.wait_resubscribed(30)
    return before + posts(sub, channel, 19)


def test_a_persisted_memory_history_survives_lexiconsd_restart(make_daemon):
    """history_persist: after stop + start, the client gets 0..19 once, in order."""
    port = free_port()
    daemon = make_daemon().start(port=port)
    with Client(daemon.ws_url, headers={"User": {"name": "sub"}}, timeout=10,
                reconnect=True, retry_max=2.0) as sub:
        sub.subscribe("kept:r")
        sub.subscribe("feed:r")
        assert restart_under(daemon, sub, "kept:r", port) == list(range(20))
        assert sub.recovered["kept:r"] is True
        # not persisted: its history died with the daemon, and the client is told
        assert sub.recovered["feed:r"] is False
    daemon.stop()


def test_a_redis_history_survives_lexiconsd_restart(make_daemon):
    """BACKPLANE=redis: the history is in Redis, so a restart loses nothing."""
    port = free_port()
    daemon = make_daemon(BACKPLANE=require_redis(),
                         BACKPLANE_PREFIX=f"t{uuid.uuid4().hex[:12]}",
                         HISTORY_META_TTL=300.0).start(port=port)
    with Client(daemon.ws_url, headers={"User": {"name": "sub"}}, timeout=10,
                reconnect=True, retry_max=2.0) as sub:
        sub.subscribe("feed:r")
        assert restart_under(daemon, sub, "feed:r", port) == list(range(20))
        assert sub.recovered["feed:r"] is True
    daemon.stop()
