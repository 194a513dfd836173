"""The AMQP consumer: high-templar triggers published by the backend through RabbitMQ.

Theory of operation
-------------------
Inert unless ``AMQP_URL`` is set. Then ``main()`` connects with pika's
BlockingConnection, declares the exchange ``AMQP_EXCHANGE`` (direct), an
exclusive server-named queue of this process bound with the routing key
``*`` (as high-templar did), and consumes. Each message body has the shape
of an HTTP trigger (``{"rooms": [...], "data": ...}``); a good one is
published by the high-templar service, a bad one is logged and counted.

Every process has its own queue, so every node receives every trigger:
the consumer delivers to this node's subscriptions only (not through the
backplane, which would deliver each trigger once per node).

When the broker goes away (restart, a closed connection), the loop logs it,
waits with an exponential backoff (0.1 s doubling up to ``RETRY_MAX``) and
connects again, with a new queue. Messages published while no queue of this
process existed are not seen by it.

An exchange that already exists with other properties (say, durable) is
used as it is: the declaration is retried as passive.
"""
from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from lexicons.daemon.service import Service
from lexicons.errors import BadTrigger, ServiceError
from lexicons.wire import hightemplar as ht

ROUTING_KEY = "*"
#: Longest wait between two attempts to reach the broker.
RETRY_MAX = 5.0
#: Seconds pika may spend in one call before the loop looks at `stopping` again.
POLL = 0.25


class AmqpService(Service):
    """Consume high-templar triggers from RabbitMQ (see the module doc)."""

    name = "amqp"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.url: str = self.settings.AMQP_URL
        self.exchange: str = self.settings.AMQP_EXCHANGE
        self.enabled = bool(self.url)
        self.connection_name = f"lexicons-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.hightemplar: Any = None
        self.consuming = threading.Event()
        self.queue = ""
        self.consumed = 0
        self.bad = 0
        self.connects = 0
        self.last_error: str | None = None
        self._connection: Any = None

    # --- lifecycle ----------------------------------------------------------------------

    def setup(self) -> None:
        if not self.enabled:
            self.log.info("amqp consumer off (AMQP_URL is not set)")
            return
        try:
            import pika  # noqa: F401  (needed only when AMQP_URL is set)
        except ImportError as exc:
            raise ServiceError("AMQP_URL is set but pika is not installed (pip install pika)"
                               ) from exc
        if not self.manager.has_service("hightemplar"):
            raise ServiceError("the amqp consumer needs the hightemplar service")
        self.hightemplar = self.manager.get_service("hightemplar")
        if not self.hightemplar.enabled:
            raise ServiceError("AMQP_URL is set but the high-templar endpoint is off: "
                               "set BOOTSTRAP_URL too (triggers go to /ws/ subscriptions)")

    def main(self) -> None:
        if not self.enabled:
            self.stopping.wait()
            return
        delay = 0.1
        while not self.stopping.is_set():
            try:
                self._consume()
                delay = 0.1
            except Exception as exc:  # any broker or network failure: back off, reconnect
                self.consuming.clear()
                message = f"{type(exc).__name__}: {exc}"
                if message != self.last_error:
                    self.log.warning("amqp: %s; connecting again in %.2g s", message, delay)
                self.last_error = message
                self.stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
            finally:
                self._close()

    def info(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "exchange": self.exchange,
                "consuming": self.consuming.is_set(), "queue": self.queue,
                "connection": self.connection_name, "consumed": self.consumed,
                "bad": self.bad, "connects": self.connects, "last_error": self.last_error}

    # --- consuming ----------------------------------------------------------------------

    def _consume(self) -> None:
        import pika

        parameters = pika.URLParameters(self.url)
        parameters.client_properties = {"connection_name": self.connection_name,
                                        "product": "lexicons"}
        parameters.socket_timeout = 5
        parameters.blocked_connection_timeout = 30
        connection = pika.BlockingConnection(parameters)
        self._connection = connection
        channel = self._declare_exchange(connection)
        result = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        self.queue = result.method.queue
        channel.queue_bind(self.queue, self.exchange, routing_key=ROUTING_KEY)
        channel.basic_consume(self.queue, self._on_message, auto_ack=True)
        self.connects += 1
        if self.connects > 1:
            self.log.info("amqp: consuming again from %s", self.exchange)
        else:
            self.log.info("amqp: consuming from exchange %s", self.exchange)
        self.last_error = None
        self.consuming.set()
        while not self.stopping.is_set():
            connection.process_data_events(time_limit=POLL)

    def _declare_exchange(self, connection: Any) -> Any:
        """Declare the exchange (direct); use an existing one as it is. Return a channel."""
        import pika.exceptions

        channel = connection.channel()
        try:
            channel.exchange_declare(self.exchange, exchange_type="direct")
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
                raise
            channel = connection.channel()
            channel.exchange_declare(self.exchange, passive=True)
        return channel

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            trigger = ht.parse_trigger(body)
        except BadTrigger as exc:
            self.bad += 1
            self.log.warning("amqp: ignored a message: %s", exc)
            return
        self.consumed += 1
        # every node consumes its own copy: deliver here only, not through the backplane
        self.hightemplar.publish(trigger, cluster=False)

    def _close(self) -> None:
        self.consuming.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                if connection.is_open:
                    connection.close()
            except Exception:  # a broken connection may fail to close; it is gone anyway
                pass
