"""The AMQP trigger consumer against the real RabbitMQ at 127.0.0.1:5672."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pika
import pytest

from tests.support.backend import Backend
from tests.support.brokers import require_rabbitmq, require_redis
from tests.support.daemon import wait_for
from tests.support.nodes import HIGHTEMPLAR_SERVICES, nodes_of, ws_client

SERVICES = HIGHTEMPLAR_SERVICES[:2] + ["services.amqp/AmqpService"] + HIGHTEMPLAR_SERVICES[2:]
ROOM = {"target": "message", "customer": "1"}
OTHER = {"target": "user", "id": 1}


@pytest.fixture
def exchange():
    """A fresh exchange name; the exchange is deleted at the end."""
    url = require_rabbitmq()
    name = "lexicons-test-" + uuid.uuid4().hex[:8]
    yield url, name
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().exchange_delete(name)
    finally:
        connection.close()


@pytest.fixture
def backend():
    with Backend() as running:
        yield running


@pytest.fixture
def nodes(tmp_path):
    with nodes_of(tmp_path) as running:
        yield running


def publish(url: str, exchange: str, body: bytes | dict) -> None:
    """Publish one message to the exchange with routing key '*', as a backend would."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, exchange_type="direct")
        channel.basic_publish(exchange, "*", body)
    finally:
        connection.close()


def start(nodes, backend, url, exchange, **overrides):
    node = nodes.start(SERVICES, BOOTSTRAP_URL=backend.url("/ok"), AMQP_URL=url,
                       AMQP_EXCHANGE=exchange, **overrides)
    amqp = node.get_service("amqp")
    assert amqp.consuming.wait(10), amqp.info()
    return node


def client_in(node, room, request_id):
    client = ws_client(node)
    assert json.loads(client.recv(timeout=5))["is_authorized"] is True
    client.send(json.dumps({"type": "subscribe", "room": room, "requestId": request_id}))
    assert json.loads(client.recv(timeout=5)) == {"code": "success"}
    return client


def next_message(client):
    return json.loads(client.recv(timeout=5))


def no_more_messages(client):
    client.send("ping")
    assert client.recv(timeout=5) == "pong"


def test_amqp_trigger_reaches_exactly_the_room(nodes, backend, exchange):
    """A message on the exchange reaches the subscriptions of its rooms, and no others."""
    url, name = exchange
    node = start(nodes, backend, url, name)
    inside = client_in(node, ROOM, "in")
    outside = client_in(node, OTHER, "out")
    publish(url, name, {"rooms": [{"customer": "1", "target": "message"}], "data": [1, 2]})
    assert next_message(inside) == {"type": "publish", "data": [1, 2], "requestId": "in"}
    wait_for(lambda: node.get_service("amqp").consumed == 1)
    no_more_messages(inside)
    no_more_messages(outside)
    inside.close()
    outside.close()


def test_bad_amqp_bodies_are_counted_and_skipped(nodes, backend, exchange):
    """Bodies that are not triggers are counted; the next good one is still delivered."""
    url, name = exchange
    node = start(nodes, backend, url, name)
    client = client_in(node, ROOM, "r")
    publish(url, name, b"not json")
    publish(url, name, {"rooms": [ROOM]})
    publish(url, name, {"rooms": [ROOM], "data": "ok"})
    assert next_message(client)["data"] == "ok"
    amqp = node.get_service("amqp")
    wait_for(lambda: amqp.bad == 2, what="two bad bodies counted")
    client.send(json.dumps({"type": "status"}))  # counted as high-templar 3.1.0 does
    assert next_message(client)["rabbitmq_messages_received"] == 3
    client.close()


def test_existing_durable_exchange_is_used(nodes, backend, exchange):
    """An exchange already declared durable by the backend is used as it is."""
    url, name = exchange
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().exchange_declare(name, exchange_type="direct", durable=True)
    finally:
        connection.close()
    node = start(nodes, backend, url, name)
    client = client_in(node, ROOM, "r")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().basic_publish(name, "*", json.dumps(
            {"rooms": [ROOM], "data": 5}).encode())
    finally:
        connection.close()
    assert next_message(client)["data"] == 5
    client.close()


def test_every_node_consumes_and_delivers_once(nodes, backend, exchange):
    """Two nodes on one Redis backplane: an AMQP trigger reaches each subscriber once."""
    url, name = exchange
    redis_url = require_redis()
    prefix = "lexicons-test-" + uuid.uuid4().hex[:8]
    pair = [start(nodes, backend, url, name, BACKPLANE=redis_url, BACKPLANE_PREFIX=prefix)
            for _ in range(2)]
    clients = [client_in(n, ROOM, f"r{i}") for i, n in enumerate(pair)]
    for n in pair:
        assert n.get_service("backplane").wait_synced(10)
    publish(url, name, {"rooms": [ROOM], "data": "first"})
    publish(url, name, {"rooms": [ROOM], "data": "second"})
    for i, client in enumerate(clients):
        assert next_message(client) == {"type": "publish", "data": "first",
                                        "requestId": f"r{i}"}
        assert next_message(client)["data"] == "second"  # not a second "first"
        client.close()


def rabbitmqctl(*args: str) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("this test needs rabbitmqctl (Debian's rabbitmq-server) to close a "
                    "connection from the broker side: run `bin/setup --test`")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def test_consumer_reconnects_after_the_broker_closes_it(nodes, backend, exchange):
    """The broker closing the consumer's connection: it connects again and consumes again."""
    url, name = exchange
    node = start(nodes, backend, url, name)
    amqp = node.get_service("amqp")
    client = client_in(node, ROOM, "r")
    listing = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid",
                          "client_properties")
    names = [line.split("\t")[0] for line in listing.splitlines()
             if amqp.connection_name in line]
    assert len(names) == 1, listing
    rabbitmqctl("close_connection", names[0], "closed by the lexicons test suite")
    wait_for(lambda: amqp.connects == 2 and amqp.consuming.is_set(), timeout=20,
             what="the consumer to connect again")
    assert amqp.last_error is None
    publish(url, name, {"rooms": [ROOM], "data": "after"})
    assert next_message(client)["data"] == "after"
    client.close()


def test_amqp_without_the_endpoint_stops_start_up(nodes, exchange):
    """AMQP_URL without BOOTSTRAP_URL is refused at start with a message naming both."""
    from lexicons.errors import ServiceError

    url, name = exchange
    with pytest.raises(ServiceError) as caught:
        nodes.start(SERVICES, AMQP_URL=url, AMQP_EXCHANGE=name)
    assert "BOOTSTRAP_URL" in str(caught.value) and "AMQP_URL" in str(caught.value)
