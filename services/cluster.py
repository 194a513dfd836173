"""The cluster service: cluster events sent straight to the nodes of a static list.

Theory of operation
-------------------
With two or more entries in ``CLUSTER_SERVER_LIST`` (zephserver's static
cluster) the service is *active*: it listens on its own entry's address and
port, and cluster events (``sv.say``, ``sv.subscribe``; zephserver's
``ClusterAdapter``) go through it instead of the backplane. With fewer
entries it does nothing and events stay on the backplane, so an application
runs the same with or without a cluster.

``say(event, data)`` queues the event for this node's handlers and for one
sender thread per other node. Each sender keeps one TCP connection to its
node, writes one JSON line per event in the order they were said, and
reconnects with a backoff (up to ``BACKPLANE_RETRY_MAX``) when the node is
down; the event that could not be written is written first on the next
connection, and events past ``BACKPLANE_QUEUE`` waiting for one node are
dropped for it (and counted). The listening side reads lines from the nodes of the list
(connections from any other address are closed) in one selector thread; an
event thread runs the handlers, one event after another, in arrival order.
"""
from __future__ import annotations

import collections
import json
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

from lexicons.daemon.service import Service
from lexicons.wire import cluster

EventHandler = Callable[[str, Any], None]

#: Events waiting for their handlers; past that new ones are dropped (and counted).
EVENT_QUEUE = 10000


class _Peer:
    """Another node: the events waiting for it and its sender's state."""

    def __init__(self, node: cluster.Node):
        self.node = node
        self.queue: collections.deque[bytes] = collections.deque()
        self.ready = threading.Event()
        self.sock: socket.socket | None = None
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None


class ClusterService(Service):
    """Send cluster events to every node of ``CLUSTER_SERVER_LIST`` (see the module doc)."""

    name = "cluster"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.nodes = cluster.parse_servers(list(self.settings.CLUSTER_SERVER_LIST))
        self.active = len(self.nodes) >= 2
        self.me: cluster.Node | None = None
        self.peers: list[_Peer] = []
        self._handlers: dict[str, list[EventHandler]] = {}
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._events_ready = threading.Event()
        self._server: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._allowed: set[str] = set()
        self._threads: list[threading.Thread] = []
        self.received = 0
        self.said = 0
        self.events_dropped = 0
        self.handler_errors = 0
        self.refused = 0

    def setup(self) -> None:
        if not self.active:
            return
        self.me = cluster.find_self(self.nodes, self.settings.CLUSTER_SELF,
                                     socket.gethostname())
        self.peers = [_Peer(n) for n in self.nodes if n != self.me]
        for node in self.nodes:
            try:
                for info in socket.getaddrinfo(node.address, node.port, type=socket.SOCK_STREAM):
                    self._allowed.add(info[4][0])
            except OSError as exc:
                self.log.warning("cluster node %s does not resolve: %s", node.label, exc)
        family = socket.AF_INET6 if ":" in self.me.address else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((self.me.address, self.me.port))
        except OSError as exc:
            server.close()
            raise OSError(f"cluster: cannot listen on {self.me.label}: {exc}") from exc
        server.listen(64)
        server.setblocking(False)
        self._server = server
        self.log.info("static cluster: this node is %s; other nodes: %s", self.me.label,
                      ", ".join(p.node.label for p in self.peers))

    def main(self) -> None:
        if not self.active:
            self.stopping.wait()
            return
        self._threads = [threading.Thread(target=self._run_events, daemon=True,
                                          name="lexicons-cluster-events")]
        self._threads += [threading.Thread(target=self._run_sender, args=(peer,), daemon=True,
                                           name=f"lexicons-cluster-{peer.node.label}")
                          for peer in self.peers]
        for thread in self._threads:
            thread.start()
        try:
            self._run_listener()
        finally:
            self.stopping.set()
            self.interrupt()
            for thread in self._threads:
                thread.join(5.0)
            self._threads = []

    def interrupt(self) -> None:
        self._events_ready.set()
        for peer in self.peers:
            peer.ready.set()
            sock = peer.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def teardown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._wake_r.close()
        self._wake_w.close()

    def info(self) -> dict[str, Any]:
        if not self.active:
            return {"cluster": False}
        return {"cluster": True, "self": self.me.label if self.me else None,
                "nodes": [{"node": p.node.label, "connected": p.connected, "sent": p.sent,
                           "queued": len(p.queue), "dropped": p.dropped,
                           "last_error": p.last_error} for p in self.peers],
                "said": self.said, "received": self.received,
                "events_dropped": self.events_dropped, "handler_errors": self.handler_errors,
                "refused": self.refused}

    # --- cluster events --------------------------------------------------------------------

    def say(self, event: str, data: Any = None) -> None:
        """Send *event* with JSON data to its handlers on every listed node (this one too).

        Raises TypeError or ValueError at once if *data* is not JSON-serialisable.
        Never blocks on another node.
        """
        if not isinstance(event, str) or not event:
            raise ValueError("an event name must be a non-empty string")
        line = cluster.encode(event, self.me.label if self.me else "", data)
        self.said += 1
        self._queue_event(event, json.loads(line)["data"])  # handlers here see what others see
        limit = self.settings.BACKPLANE_QUEUE
        for peer in self.peers:
            if len(peer.queue) >= limit:
                peer.dropped += 1
                continue
            peer.queue.append(line)
            peer.ready.set()

    def subscribe(self, event: str, fn: EventHandler) -> None:
        """Call ``fn(event, data)`` for every *event* said on any node (this one too)."""
        if not callable(fn):
            raise TypeError("an event handler must be callable")
        with self._lock:
            handlers = self._handlers.setdefault(event, [])
            if fn not in handlers:
                handlers.append(fn)

    def unsubscribe(self, event: str, fn: EventHandler) -> None:
        """Stop calling *fn* for *event*; unknown pairs are ignored."""
        with self._lock:
            handlers = self._handlers.get(event, [])
            if fn in handlers:
                handlers.remove(fn)
            if not handlers:
                self._handlers.pop(event, None)

    def _queue_event(self, event: str, data: Any) -> None:
        with self._lock:
            if event not in self._handlers:
                return
        if len(self._events) >= EVENT_QUEUE:
            self.events_dropped += 1
            return
        self._events.append((event, data))
        self._events_ready.set()

    def _run_events(self) -> None:
        """Event thread: call the handlers of each event in arrival order."""
        while not self.stopping.is_set():
            self._events_ready.wait()
            self._events_ready.clear()
            while self._events and not self.stopping.is_set():
                event, data = self._events.popleft()
                with self._lock:
                    handlers = list(self._handlers.get(event, ()))
                for fn in handlers:
                    try:
                        fn(event, data)
                    except Exception:  # user code: log and go on with the next handler
                        self.handler_errors += 1
                        self.log.exception("handler of event %r failed", event)

    # --- sending ---------------------------------------------------------------------------

    def _run_sender(self, peer: _Peer) -> None:
        """Write the events queued for *peer*, in order, on one connection kept open."""
        delay = 0.05
        while not self.stopping.is_set():
            if not peer.queue:
                peer.ready.wait(1.0)
                peer.ready.clear()
                continue
            try:
                if peer.sock is None:
                    peer.sock = socket.create_connection((peer.node.address, peer.node.port),
                                                         timeout=5.0)
                    peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer.connected, peer.last_error, delay = True, None, 0.05
                    self.log.info("cluster node %s reached", peer.node.label)
                line = peer.queue[0]
                peer.sock.sendall(line)
                peer.queue.popleft()
                peer.sent += 1
            except OSError as exc:
                self._sender_failed(peer, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.settings.BACKPLANE_RETRY_MAX)
        self._close_peer(peer)

    def _sender_failed(self, peer: _Peer, exc: OSError, delay: float) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != peer.last_error and not self.stopping.is_set():
            self.log.warning("cluster node %s: %s; retrying in %.2g s", peer.node.label,
                             message, delay)
        peer.last_error = message
        self._close_peer(peer)

    @staticmethod
    def _close_peer(peer: _Peer) -> None:
        sock, peer.sock = peer.sock, None
        peer.connected = False
        if sock is not None:
            sock.close()

    # --- receiving -------------------------------------------------------------------------

    def _run_listener(self) -> None:
        """Accept the other nodes' connections and read their event lines."""
        selector = selectors.DefaultSelector()
        selector.register(self._server, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not self.stopping.is_set():
                for key, _ in selector.select(1.0):
                    if key.data == "wake":
                        self._wake_r.recv(64)
                    elif key.data is None:
                        self._accept(selector, buffers)
                    else:
                        self._read(selector, buffers, key.fileobj)
        finally:
            for sock in list(buffers):
                sock.close()
            selector.close()

    def _accept(self, selector: selectors.BaseSelector,
                buffers: dict[socket.socket, bytearray]) -> None:
        try:
            sock, address = self._server.accept()
        except OSError:
            return
        if address[0] not in self._allowed:
            self.refused += 1
            self.log.warning("cluster: connection from %s refused (not in "
                             "CLUSTER_SERVER_LIST)", address[0])
            sock.close()
            return
        sock.setblocking(False)
        buffers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ, "peer")

    def _read(self, selector: selectors.BaseSelector, buffers: dict[socket.socket, bytearray],
              sock: Any) -> None:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buffer = buffers[sock]
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[:end + 1]
            self._received(line)
        if not chunk or len(buffer) > cluster.MAX_LINE:
            selector.unregister(sock)
            del buffers[sock]
            sock.close()

    def _received(self, line: bytes) -> None:
        decoded = cluster.decode(line)
        if decoded is None:
            self.log.warning("cluster: a line that is not an event was ignored")
            return
        event, _source, data = decoded
        self.received += 1
        self._queue_event(event, data)
