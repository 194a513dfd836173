"""The listener service: the listening socket, HTTP handshakes, plain HTTP routes.

Theory of operation
-------------------
One acceptor thread (``main``) holds the listening socket and every
handshake in progress, all non-blocking, in one selector. For each client it
reads the request head until its blank line, within ``HANDSHAKE_TIMEOUT`` and
``MAX_HEADER_SIZE``, and checks it *before* simple-websocket ever sees the
socket. A bad request gets a real HTTP error with a JSON body saying why
(400 bad request/key/version, 403 untrusted, 404, 405, 408 too slow, 413,
414, 426, 431, 503 full, 505), after which the acceptor half-closes the
socket, discards what the client still sends for a moment (so the answer is
not lost to a reset) and closes it. Every socket is closed explicitly, on
every path.

A checked upgrade request becomes an :class:`Admission` handed to the
protocol handler registered for its path (``websocket(path, handler)``; the
gate serves ``/``). The handler decides off this thread, then calls
``admission.upgrade(...)`` or ``admission.refuse(...)``; a refusal comes back
to the acceptor, which writes it. Plain HTTP routes (``route(path, fn)``,
``/health`` built in) run on a small pool and answer the same way.

With ``TLS_CERT`` and ``TLS_KEY`` set, TLS runs over memory buffers: the TLS
handshake is one more non-blocking phase here, and connections encrypt and
decrypt under their own lock, so the write path stays the same.
"""
from __future__ import annotations

import collections
import enum
import os
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lexicons.daemon.connection import TLS, Connection, Handler, Hub, Peer
from lexicons.daemon.pool import Pool
from lexicons.daemon.service import Service, ServiceState
from lexicons.daemon.static import StaticFiles
from lexicons.daemon.trust import TrustList, client_trust
from lexicons.errors import ServiceError, SettingsError
from lexicons.wire import http
from lexicons.wire.events import Request
from lexicons.wire.http import HTTPError

LINGER = 1.0            # seconds to discard input after an error answer
LINGER_BYTES = 65536    # most bytes discarded after an error answer
ACCEPTS_PER_TURN = 64   # accept() calls per readable event, so handshakes are not starved


@dataclass(frozen=True)
class HTTPResponse:
    """What a plain HTTP route returns (a dict/list body is sent as JSON)."""

    status: int = 200
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    def render(self) -> bytes:
        """Return the response bytes."""
        return http.response(self.status, self.body, self.headers, self.content_type)


Route = Callable[[Request], HTTPResponse]


class WebsocketHandler(Protocol):
    """What a websocket path's protocol handler offers the listener."""

    def admit(self, admission: Admission) -> bool:
        """Take an admission (decide off the acceptor thread); False if too busy."""
        ...


class Phase(enum.Enum):
    """Where a handshake in the acceptor is."""

    TLS = "TLS"          # TLS handshake
    HEAD = "HEAD"        # reading the request head
    BODY = "BODY"        # reading a plain HTTP request's body
    WRITE = "WRITE"      # writing an answer
    LINGER = "LINGER"    # answer written: discarding input until EOF or timeout


class _Pending:
    """One client in the acceptor's hands."""

    __slots__ = ("sock", "address", "phase", "buf", "deadline", "out", "tls", "request",
                 "body_len", "discarded")

    def __init__(self, sock: socket.socket, address: Any, deadline: float, tls: TLS | None):
        self.sock = sock
        self.address = address
        self.phase = Phase.TLS if tls is not None else Phase.HEAD
        self.buf = bytearray()
        self.deadline = deadline
        self.out = b""
        self.tls = tls
        self.request: Request | None = None
        self.body_len = 0
        self.discarded = 0


class Admission:
    """A checked websocket upgrade request, waiting for its protocol handler's decision."""

    def __init__(self, listener: ListenerService, sock: socket.socket, address: Any,
                 request: Request, trailing: bytes, tls: TLS | None):
        self.listener = listener
        self.sock = sock
        self.address = address
        self.request = request
        self.trailing = trailing
        self.tls = tls
        self.done = False

    @property
    def ip(self) -> str:
        """Return the client's IP address."""
        return self.address[0] if isinstance(self.address, tuple) else str(self.address)

    def upgrade(self, handler: Handler, peer: Peer | None = None) -> Connection | None:
        """Complete the upgrade: the 101 goes out and the connection's reader starts.

        Returns None (and answers an HTTP error) if the handshake cannot complete.
        """
        self._end()
        peer = peer or Peer(self.address, self.request)
        try:
            return Connection(self.sock, peer, handler, self.listener.hub,
                              trailing=self.trailing, tls=self.tls)
        except Exception as exc:
            self.listener.log.warning("handshake from %s failed: %s: %s", self.ip,
                                      type(exc).__name__, exc)
            self.listener.respond(self.sock, http.error_response(
                HTTPError(400, "the websocket handshake could not complete")), self.tls)
            return None

    def refuse(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
               body: dict[str, Any] | None = None) -> None:
        """Answer the request with an HTTP error (JSON body, plus *body*'s keys) and close."""
        self._end()
        self.listener.refused[status] += 1
        error = HTTPError(status, reason, headers, body)
        self.listener.respond(self.sock, http.error_response(error), self.tls)

    def _end(self) -> None:
        if self.done:
            raise RuntimeError("this admission was already decided")
        self.done = True
        with self.listener._admitting_lock:
            self.listener._admitting -= 1


class ListenerService(Service):
    """Accept connections, check handshakes, serve plain HTTP routes (see the module doc)."""

    name = "listener"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.routes: dict[str, Route] = {"/health": self._health}
        self.websockets: dict[str, WebsocketHandler] = {}
        self.sock: socket.socket | None = None
        self.hub: Hub | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.pool = Pool("http", 2, 256)
        self.refused: collections.Counter[int] = collections.Counter()
        self.accepted = 0
        self._pending: dict[int, _Pending] = {}
        self._inbox: collections.deque[tuple[socket.socket, bytes, TLS | None]] = \
            collections.deque()
        self._admitting = 0  # admissions handed to a handler and not decided yet
        self._admitting_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._trust: tuple[list[str], TrustList] | None = None
        self.static: StaticFiles | None = None
        self.metrics: Any = None  # lexicons.metrics.Metrics, when METRICS_PATH is set
        self._switch_interval: float | None = None  # Python's, restored at teardown

    # --- registration (other services call these in their setup) ------------------------

    def route(self, path: str, handler: Route) -> None:
        """Serve plain HTTP requests for *path* with ``handler(request) -> HTTPResponse``."""
        self.routes[path] = handler

    def websocket(self, path: str, handler: WebsocketHandler) -> None:
        """Hand websocket upgrade requests for *path* to *handler*."""
        self.websockets[path] = handler

    # --- lifecycle --------------------------------------------------------------------

    def setup(self) -> None:
        s = self.settings
        if s.TLS_CERT or s.TLS_KEY:
            if not (s.TLS_CERT and s.TLS_KEY):
                raise SettingsError("TLS needs both TLS_CERT and TLS_KEY")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(s.TLS_CERT, s.TLS_KEY)
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(f"cannot load TLS_CERT/TLS_KEY: {exc}") from exc
            self.tls_context = context
        if "/" not in self.websockets and self.manager.has_service("gate"):
            self.websockets["/"] = self.manager.get_service("gate")
        root = s.STATIC_DIR or getattr(self.manager.app, "static_dir", "")
        if root:
            if not os.path.isdir(root):
                raise ServiceError(f"the static files directory {root} does not exist")
            self.static = StaticFiles(root)
        if s.METRICS_PATH:
            from lexicons.daemon.metrics import Metrics  # prometheus_client only when served
            self.metrics = Metrics(self.manager)
            self.route(s.METRICS_PATH, self._metrics)
        family = socket.AF_INET6 if ":" in s.HOST else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((s.HOST, s.PORT))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ServiceError(f"cannot listen on {s.HOST}:{s.PORT}: "
                               f"{exc.strerror or exc}") from exc
        self.sock = sock
        self.hub = Hub(outbox_limit=s.OUTBOX_LIMIT, max_message_size=s.MAX_MESSAGE_SIZE,
                       ping_interval=s.PING_INTERVAL, close_timeout=s.CLOSE_TIMEOUT,
                       deflate=s.PERMESSAGE_DEFLATE, stack_size=s.THREAD_STACK_SIZE,
                       patience=s.READER_PATIENCE)
        if s.SWITCH_INTERVAL > 0:
            # fewer forced GIL hand-offs between the reader, the flusher and the tasks
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(s.SWITCH_INTERVAL)
        self.hub.start()
        self.pool.start()
        self.log.info("listening on %s://%s:%d", "wss" if self.tls_context else "ws",
                      s.HOST, self.port)

    def main(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for pending in self._pending.values():
            selector.register(pending.sock, self._events(pending), pending)
        try:
            while not self.stopping.is_set():
                self._turn(selector)
        finally:
            selector.close()

    def interrupt(self) -> None:
        self._wake()

    def teardown(self) -> None:
        if self.sock is not None:
            self.sock.close()
        for pending in list(self._pending.values()):
            self._close(pending)
        while self._inbox:
            sock, _, _ = self._inbox.popleft()
            sock.close()
        if self.hub is not None:
            self.hub.stop(self.settings.CLOSE_TIMEOUT + 1.0)
        self.pool.stop()
        self._wake_r.close()
        self._wake_w.close()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def info(self) -> dict[str, Any]:
        hub = self.hub
        return {
            "address": f"{self.settings.HOST}:{self.port}",
            "tls": self.tls_context is not None,
            "connections": len(hub) if hub is not None else 0,
            "readers_waiting": hub.readers() if hub is not None else 0,
            "handshakes": len(self._pending),
            "accepted": self.accepted,
            "slow_consumers": hub.slow_consumers if hub is not None else 0,
            "flusher_sends": hub.sends if hub is not None else 0,
            "flusher_frames": hub.chunks if hub is not None else 0,
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
        }

    @property
    def port(self) -> int:
        """Return the bound port (useful with PORT = 0)."""
        return self.sock.getsockname()[1] if self.sock is not None else 0

    # --- the acceptor loop ------------------------------------------------------------

    def _turn(self, selector: selectors.BaseSelector) -> None:
        for key, mask in selector.select(0.25):
            if key.data == "accept":
                self._accept(selector)
            elif key.data == "wake":
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                pending = key.data
                if pending.sock.fileno() < 0:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._write(selector, pending)
                elif mask & selectors.EVENT_READ:
                    self._read(selector, pending)
        while self._inbox:
            sock, data, tls = self._inbox.popleft()
            if sock.fileno() < 0:
                continue
            sock.setblocking(False)  # a failed upgrade may have made it blocking
            pending = _Pending(sock, None, time.monotonic(), tls)
            self._pending[id(pending)] = pending
            selector.register(sock, selectors.EVENT_WRITE, pending)
            self._answer(selector, pending, data)
        self._sweep(selector, time.monotonic())

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, back off a little
                self.log.error("accept failed: %s", exc)
                time.sleep(0.05)
                return
            self.accepted += 1
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            tls = TLS(self.tls_context) if self.tls_context is not None else None
            pending = _Pending(sock, address, time.monotonic() + self.settings.HANDSHAKE_TIMEOUT,
                               tls)
            self._pending[id(pending)] = pending
            selector.register(sock, selectors.EVENT_READ, pending)
            load = len(self.hub) + len(self._pending) + self._admitting
            if load > self.settings.MAX_CONNECTIONS:
                self._refuse(selector, pending, HTTPError(
                    503, f"the server holds its maximum of {self.settings.MAX_CONNECTIONS} "
                         f"connections; try again later"))
            elif not self._trusted(address):
                self._refuse(selector, pending, HTTPError(403, "client address not trusted"))

    def _read(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(pending, selector)
            return
        if pending.phase is Phase.LINGER:
            pending.discarded += len(data)
            if pending.discarded > LINGER_BYTES:
                self._close(pending, selector)
            return
        try:
            if pending.tls is not None:
                data = self._tls_read(selector, pending, data)
                if data is None:
                    return
            pending.buf += data
            if pending.phase is Phase.HEAD:
                self._head(selector, pending)
            elif pending.phase is Phase.BODY:
                self._body(selector, pending)
        except HTTPError as error:
            self._refuse(selector, pending, error)
        except (ssl.SSLError, OSError) as exc:
            self.log.debug("handshake from %s failed: %s", pending.address, exc)
            self._close(pending, selector)
        except Exception:  # a bug must cost this client, never the acceptor
            self.log.exception("handshake from %s failed", pending.address)
            self._refuse(selector, pending, HTTPError(400, "the request could not be read"))

    def _tls_read(self, selector: selectors.BaseSelector, pending: _Pending,
                  data: bytes) -> bytes | None:
        """Run TLS on received bytes; return plain bytes, or None while handshaking."""
        tls = pending.tls
        if pending.phase is Phase.TLS:
            done, out = tls.handshake(data)
            if out:
                pending.sock.send(out)  # a few KiB: fits an empty socket buffer
            if not done:
                return None
            pending.phase = Phase.HEAD
            data = b""
        plain, out = tls.decrypt(data)
        if out:
            pending.sock.send(out)
        return plain

    def _head(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        buf = pending.buf
        end = http.head_end(buf)
        if end < 0:
            http.check_partial(buf, self.settings.MAX_HEADER_SIZE)
            return
        if end > self.settings.MAX_HEADER_SIZE:
            raise HTTPError(431, f"request head larger than {self.settings.MAX_HEADER_SIZE} "
                                 f"bytes")
        request = http.parse_head(bytes(buf[:end]))
        del buf[:end]
        handler = self.websockets.get(request.path)
        if handler is not None and (request.wants_upgrade or not self._is_static(request)):
            http.check_upgrade(request)
            self._admit(selector, pending, request, handler)
            return
        if request.wants_upgrade:
            raise HTTPError(404, f"no websocket endpoint at {request.path[:100]}")
        if request.path not in self.routes and not self._is_static(request):
            raise HTTPError(404, f"nothing at {request.path[:100]}")
        if request.header("transfer-encoding") is not None:
            raise HTTPError(411, "send a Content-Length, not a chunked body")
        length = request.header("content-length") or "0"
        if not length.isdigit():
            raise HTTPError(400, "bad Content-Length")
        if int(length) > self.settings.MAX_MESSAGE_SIZE:
            raise HTTPError(413, f"body larger than {self.settings.MAX_MESSAGE_SIZE} bytes")
        pending.request = request
        pending.body_len = int(length)
        pending.phase = Phase.BODY
        self._body(selector, pending)

    def _body(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        if len(pending.buf) < pending.body_len:
            return
        request = pending.request
        body = bytes(pending.buf[:pending.body_len])
        address = pending.address
        request = Request(request.method, request.target, request.path, request.query,
                          request.version, request.headers, body,
                          address[0] if isinstance(address, tuple) else "")
        route = self.routes.get(request.path, self._static_file)
        self._detach(selector, pending)
        if not self.pool.submit(self._serve_route, route, request, pending.sock, pending.tls):
            self.respond(pending.sock, http.error_response(
                HTTPError(503, "too many requests in progress; try again later")), pending.tls)

    def _admit(self, selector: selectors.BaseSelector, pending: _Pending, request: Request,
               handler: WebsocketHandler) -> None:
        self._detach(selector, pending)
        admission = Admission(self, pending.sock, pending.address, request,
                              bytes(pending.buf), pending.tls)
        with self._admitting_lock:
            self._admitting += 1
        try:
            taken = handler.admit(admission)
        except Exception:
            self.log.exception("websocket handler for %s failed to admit", request.path)
            taken = False
        if not taken and not admission.done:
            admission.refuse(503, "too many handshakes in progress; try again later")

    def _serve_route(self, route: Route, request: Request, sock: socket.socket,
                     tls: TLS | None) -> None:
        """Run a plain HTTP route on the pool and hand its answer to the acceptor."""
        try:
            answer = route(request).render()
        except HTTPError as error:
            answer = http.error_response(error)
        except Exception:
            self.log.exception("route %s failed", request.path)
            answer = http.error_response(HTTPError(500, f"{request.path} failed"))
        self.respond(sock, answer, tls)

    # --- answering --------------------------------------------------------------------

    def respond(self, sock: socket.socket, data: bytes, tls: TLS | None = None) -> None:
        """Write *data* to a socket the acceptor no longer holds, then close it (any thread)."""
        self._inbox.append((sock, data, tls))
        self._wake()

    def _refuse(self, selector: selectors.BaseSelector, pending: _Pending,
                error: HTTPError) -> None:
        self.refused[error.status] += 1
        self.log.debug("refused %s: %d %s", pending.address, error.status, error.reason)
        if pending.tls is not None and pending.phase is Phase.TLS:
            self._close(pending, selector)  # no TLS session to answer through
            return
        self._answer(selector, pending, http.error_response(error))

    def _answer(self, selector: selectors.BaseSelector, pending: _Pending, data: bytes) -> None:
        if pending.tls is not None:
            data = pending.tls.encrypt(data)
        pending.out = data
        pending.phase = Phase.WRITE
        pending.deadline = time.monotonic() + LINGER
        selector.modify(pending.sock, selectors.EVENT_WRITE, pending)
        self._write(selector, pending)

    def _write(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            sent = pending.sock.send(pending.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pending, selector)
            return
        pending.out = pending.out[sent:]
        if pending.out:
            return
        try:
            pending.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(pending, selector)
            return
        pending.phase = Phase.LINGER
        pending.deadline = time.monotonic() + LINGER
        selector.modify(pending.sock, selectors.EVENT_READ, pending)

    def _sweep(self, selector: selectors.BaseSelector, now: float) -> None:
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            if pending.phase in (Phase.HEAD, Phase.BODY, Phase.TLS):
                self._refuse(selector, pending, HTTPError(
                    408, f"request not complete within "
                         f"{self.settings.HANDSHAKE_TIMEOUT:g} s"))
            else:
                self._close(pending, selector)

    def _detach(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        """Take a socket out of the acceptor's hands (another thread now owns it)."""
        selector.unregister(pending.sock)
        del self._pending[id(pending)]

    def _close(self, pending: _Pending, selector: selectors.BaseSelector | None = None) -> None:
        if self._pending.pop(id(pending), None) is not None and selector is not None:
            try:
                selector.unregister(pending.sock)
            except (KeyError, ValueError):
                pass
        pending.sock.close()

    @staticmethod
    def _events(pending: _Pending) -> int:
        return selectors.EVENT_WRITE if pending.phase is Phase.WRITE else selectors.EVENT_READ

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # full (the acceptor is awake anyway) or closed (stopping)

    def _trusted(self, address: Any) -> bool:
        if self.manager.has_service("gate"):
            return self.manager.get_service("gate").trusted(address)
        entries = self.settings.TRUST
        if self._trust is None or self._trust[0] is not entries:
            self._trust = (entries, client_trust(entries))
        return self._trust[1].allows(address[0] if isinstance(address, tuple) else "")

    # --- built-in routes --------------------------------------------------------------

    def _is_static(self, request: Request) -> bool:
        """Tell whether a plain GET of *request*'s path finds a static file."""
        return (self.static is not None and request.method == "GET"
                and self.static.find(request.path) is not None)

    def _static_file(self, request: Request) -> HTTPResponse:
        """Serve a static file (on the pool); 304 when the browser's copy is current."""
        found = self.static.find(request.path) if self.static is not None else None
        if found is None:   # gone since the request came in
            raise HTTPError(404, f"nothing at {request.path[:100]}")
        headers = (("ETag", found.etag), ("Cache-Control", "no-cache"))
        if request.header("if-none-match") == found.etag:
            return HTTPResponse(304, None, headers)
        with open(found.path, "rb") as file:
            return HTTPResponse(200, file.read(), headers, found.content_type)

    def _health(self, request: Request) -> HTTPResponse:
        """Answer 200 when every service is RUNNING and none is hung, else 503 naming them."""
        status = self.manager.status()
        states = {s["name"]: s["state"] for s in status["services"]}
        healthy = all(state == ServiceState.RUNNING.value for state in states.values())
        # running but impaired (the backplane without Redis): shown, still served (200),
        # since every node would be degraded alike and a balancer must not drop them all
        degraded = [s["name"] for s in status["services"]
                    if isinstance(s.get("info"), dict) and s["info"].get("degraded")]
        body = {"healthy": healthy, "services": states, "degraded": degraded,
                "connections": len(self.hub) if self.hub else 0}
        # a hung service is RUNNING by its state: name it too
        failing = {s["name"]: "hung" if s["hung"] else s["state"] for s in status["services"]
                   if s["hung"] or s["state"] != ServiceState.RUNNING.value}
        body["healthy"] = healthy = not failing
        body["failing"] = failing
        return HTTPResponse(200 if healthy else 503, body, (("Cache-Control", "no-store"),))

    def _metrics(self, request: Request) -> HTTPResponse:
        """Answer with every metric of the daemon in the Prometheus text format."""
        return HTTPResponse(200, self.metrics.render(), (("Cache-Control", "no-store"),),
                            self.metrics.content_type)
