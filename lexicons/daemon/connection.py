"""Websocket connections: one reader thread each, one outbound buffer each, one flusher.

Theory of operation
-------------------
A :class:`Connection` is a simple-websocket ``Base`` (server side) whose
handshake is fed the request the listener already parsed and checked. After
the upgrade the wsproto/h11 objects are dropped (memory) and frames are
decoded by :class:`lexicons.frames.FrameDecoder`, about ten times faster.

Reading. Connections do not own a thread. Every open connection's socket is
registered (one-shot) in the hub's epoll, and the hub's readers wait on it: the
kernel wakes one reader per readable connection, oldest first, and that reader
reads, decodes and dispatches the connection's messages to its handler
(``handler.on_message``) itself, then re-arms the socket and waits again. One
reader usually serves every connection in turn, like an event loop: under load
it goes from one ready connection to the next without sleeping, and clients are
served in the order their messages arrived. Messages of one connection are
handled in order (the socket is disarmed while a reader holds it), and a
client that floods is slowed by TCP itself. A handler may block (a signal
waiting on a database, a backend): when no reader has been waiting on the epoll
for ``patience`` seconds the flusher starts another, so a slow call holds up
only its own connection; spare readers park when the slow call ends (see
_ReaderThread). A connection's first thread runs ``on_open`` (which may block
too) and hands the socket to the readers.

Writing. simple-websocket writes to ``self.sock`` from several places and has
no write lock; here ``self.sock`` is an outlet whose ``send`` goes through
the connection's single outbound buffer, and every write (reply, broadcast,
pong, ping, close) takes the connection's one ``lock``:

* a reply (:meth:`Connection.send_frame`) is written at once with a
  non-blocking ``send`` when nothing is queued; what does not fit is queued.
* a broadcast (:func:`fan_out`) appends the already-framed bytes to each
  member's buffer and marks it dirty. Dirty connections are flushed, each
  one's queued frames joined into one ``send``, by the reader thread that
  made the broadcast once it has handled everything its last ``recv``
  brought and what arrived meanwhile (``MORE_READS`` non-blocking reads at
  most), so when a publisher's calls arrive faster than they are served their
  broadcasts leave together, without any thread hand-off; they sit in that
  reader's own batch, which no other thread touches unless it waits over a
  tick (a signal still running after it published: the flusher sends then).
  The hub's flusher thread flushes the broadcasts made by other threads.
  (A flusher that sent from a shared queue while the reader was still
  filling it sent about one frame per ``send`` and fought the reader for
  every connection's lock: twice the CPU per delivery.)
* when the kernel takes only part, the connection is marked ``writing`` and
  from then on only the flusher sends to it, when its selector reports the
  socket writable. One slow client never holds up the others.
* when the queued bytes exceed the limit the queue is dropped (keeping a
  partly sent frame, so the stream stays well-formed) and the connection is
  closed with 1008 ``"outbound buffer over N bytes: slow consumer"``. Pongs
  count too, so a client that pings without reading is cut off as well.

Closing. States go OPEN -> CLOSING (a close frame is queued; the reader keeps
reading until the peer's close, EOF or ``close_timeout``) -> CLOSED (no reader
serves it any more). A socket is closed, under the connection's lock, only once
no reader serves it and its close frame went out: by the reader that saw the end
when nothing is left to send, else by the flusher once it is sent (or the
timeout passed); so a file descriptor is never closed under a thread still
using it, and every socket is closed explicitly. If a peer does not answer a
close in time the flusher shuts the socket down, which wakes a reader.

After a protocol violation (1002, 1007) the FIN follows the close frame at
once (``shutdown(SHUT_WR)``: the server closes TCP first) and the reader only
drains until the peer's FIN.
"""
from __future__ import annotations

import _thread
import collections
import enum
import functools
import itertools
import json
import logging
import os
import select
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from simple_websocket.ws import Base
from wsproto import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.events import Request as WSRequest
from wsproto.extensions import PerMessageDeflate

from lexicons.daemon import aio
from lexicons.wire import frames, protocol
from lexicons.wire.events import (
    BinaryMessage,
    CloseReceived,
    Ping,
    Pong,
    Request,
    TextMessage,
    Violation,
)
from lexicons.wire.frames import CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY

log = logging.getLogger("lexicons.connection")

_MSG_DONTWAIT = socket.MSG_DONTWAIT
_ids = itertools.count(1)
#: The batch of each reader thread, by thread id: fan_out made on a reader thread
#: leaves the sending to that reader, which flushes after its batch.
_readers: dict[int, _Batch] = {}
#: After a batch that made broadcasts, a reader reads on without waiting while more has
#: already arrived, up to this many reads and bytes, so those broadcasts share its sends.
MORE_READS = 16
MORE_BYTES = 16384
#: what a reader waits for on a connection's socket; one-shot: one reader at a time
_ARMED = select.EPOLLIN | select.EPOLLONESHOT


class State(enum.Enum):
    """Where a connection is in its life."""

    CONNECTING = "CONNECTING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


_TRANSITIONS = {
    State.CONNECTING: {State.OPEN, State.CLOSED},
    State.OPEN: {State.CLOSING, State.CLOSED},
    State.CLOSING: {State.CLOSED},
    State.CLOSED: set(),
}


class Handler(Protocol):
    """What a connection tells the protocol spoken on its path."""

    def on_open(self, conn: Connection) -> None: ...
    def on_message(self, conn: Connection, data: str | bytes) -> None: ...
    def on_close(self, conn: Connection) -> None: ...


class Peer:
    """Who is connecting: what the handshake said and what the headers establish.

    Header classes receive it as ``ws``; what they set on it (``ws.auth[...]``,
    ``ws.user = ...``) is carried over to the :class:`Connection`.
    """

    def __init__(self, address: Any, request: Request):
        self.address = address
        self.request = request
        self.auth: Any = {}
        self.outbox: list[str | bytes] = []

    @property
    def ip(self) -> str:
        """Return the client's IP address."""
        return self.address[0] if isinstance(self.address, tuple) else str(self.address)

    def send(self, data: str | bytes) -> Any:
        """Queue a message for the client (str: text, bytes: binary); return a done awaitable.

        An admitted client gets the queued messages right after the upgrade; a
        refused one gets them in the refusal's body. The awaitable lets code
        written for an asyncio server (``asyncio.ensure_future(ws.send(...))``,
        ``await ws.send(...)``) run unchanged.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"send takes str or bytes, not {type(data).__name__}")
        self.outbox.append(data if isinstance(data, str) else bytes(data))
        return aio.completed()

    def sent_messages(self, start: int = 0) -> list[Any]:
        """Return the messages queued from *start* on, as JSON values where they are JSON."""
        out = []
        for data in self.outbox[start:]:
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            try:
                out.append(json.loads(text))
            except (ValueError, RecursionError):
                out.append(text)
        return out

    def errors_sent(self, start: int = 0) -> str:
        """Return the texts of ``[{"Errors": [...]}]`` messages queued from *start* on."""
        texts: list[str] = []
        for message in self.sent_messages(start):
            for item in message if isinstance(message, list) else (message,):
                errors = item.get(protocol.ERRORS) if isinstance(item, dict) else None
                if isinstance(errors, list):
                    texts.extend(str(e) for e in errors)
                elif isinstance(errors, str):
                    texts.append(errors)
        return "; ".join(texts)


class TLS:
    """TLS over memory buffers, so the raw socket works like a plain one.

    Needs the connection's lock held (an SSLObject is not thread-safe).
    """

    __slots__ = ("obj", "incoming", "outgoing")

    def __init__(self, context: ssl.SSLContext):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self, data: bytes) -> tuple[bool, bytes]:
        """Feed handshake bytes; return (finished, bytes to send)."""
        if data:
            self.incoming.write(data)
        try:
            self.obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        return done, self.outgoing.read()

    def encrypt(self, data: bytes) -> bytes:
        """Return the TLS records carrying *data*."""
        self.obj.write(data)
        return self.outgoing.read()

    def decrypt(self, data: bytes) -> tuple[bytes, bytes]:
        """Return (plain bytes received, TLS bytes to send back)."""
        if data:
            self.incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self.outgoing.read()


class _Batch:
    """The connections a reader thread's broadcasts made dirty, for it to flush.

    Only the reader appends; the reader, or the flusher for a batch older than a
    tick (a signal still running after it published), pops. ``since`` is when the
    batch gained its first connection (0.0: empty as far as the flusher knows).
    """

    __slots__ = ("hub", "dirty", "since")

    def __init__(self, hub: Hub):
        self.hub = hub
        self.dirty: list[Connection] = []
        self.since = 0.0

    def add(self, conn: Connection) -> None:
        """Queue a connection that was just marked dirty (conn.lock held)."""
        if not self.since:
            self.since = now = time.monotonic()
            self.hub._batches.append((now, self))
        self.dirty.append(conn)

    def flush(self) -> None:
        """Send what is queued for every connection of the batch (any thread)."""
        self.since = 0.0
        dirty = self.dirty
        send = self.hub._send_queued
        while dirty:
            try:
                conn = dirty.pop()
            except IndexError:  # the other flushing thread took the last one
                return
            send(conn)


class _NoEvent:
    """Stands in for simple-websocket's Event: messages are dispatched, never awaited."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return False


class _Parked:
    """A reader thread waiting for its next connection: ``gate`` opens with a target set
    (serve it) or with None (end)."""

    __slots__ = ("gate", "target")

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.gate.acquire()
        self.target: Any = None


class _ReaderThread:
    """Run a target (a new connection's greeting, a hub reader) on a parked thread, or
    on a new one with a small stack.

    A thread whose target returned parks instead of ending: starting and ending a
    thread costs more CPU than a whole handshake, and connections arrive in crowds.
    The next target reuses a parked thread (newest first: its stack is warm);
    :meth:`trim` lets the spares end a few at a time, later.
    """

    __slots__ = ("target", "name")
    stack_size = 512 * 1024
    _lock = threading.Lock()
    #: parked threads, oldest first; the GIL makes append and pop atomic
    _parked: collections.deque[_Parked] = collections.deque()

    def __init__(self, target: Any):
        self.target = target
        self.name = "lexicons-reader"

    def start(self) -> None:
        try:
            parked = self._parked.pop()
        except IndexError:
            pass
        else:
            parked.target = self.target
            parked.gate.release()
            return
        # the stack size is process-wide: set it only around this thread's start
        with _ReaderThread._lock:
            old = _thread.stack_size(self.stack_size)
            try:
                _thread.start_new_thread(_ReaderThread._serve, (self.target,))
            finally:
                _thread.stack_size(old)

    @staticmethod
    def _serve(target: Any) -> None:
        """Run targets one after another, parked in between, until trimmed."""
        parked = _Parked()
        parking = _ReaderThread._parked
        while target is not None:
            try:
                target()
            except BaseException:  # the target logs its own failures; the thread goes on
                pass
            target = parked.target = None
            parking.append(parked)
            parked.gate.acquire()
            target = parked.target

    @classmethod
    def trim(cls, keep: int, most: int) -> int:
        """End up to *most* parked threads beyond *keep*, oldest first; return how many."""
        parking = cls._parked
        ended = 0
        while ended < most and len(parking) > keep:
            try:
                parked = parking.popleft()
            except IndexError:
                break
            parked.target = None
            parked.gate.release()
            ended += 1
        return ended

    @classmethod
    def parked(cls) -> int:
        """Return how many reader threads wait for a connection."""
        return len(cls._parked)


class _Outlet:
    """The socket simple-websocket sees: every write goes through the outbound buffer."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection):
        self.conn = conn

    def send(self, data: bytes) -> int:
        self.conn.send_frame(bytes(data))
        return len(data)

    sendall = send

    def recv(self, size: int) -> bytes:
        return self.conn.raw.recv(size)

    def close(self) -> None:
        self.conn.close()


class Connection(Base):
    """One websocket connection (server side); see the module doc."""

    def __init__(self, sock: socket.socket, peer: Peer, handler: Handler, hub: Hub, *,
                 trailing: bytes = b"", tls: TLS | None = None):
        self.id = next(_ids)
        sock.setblocking(True)  # reads and writes pass MSG_DONTWAIT
        self.raw = sock
        self.hub = hub
        self.handler = handler
        self.tls = tls
        self.lock = threading.Lock()
        self.state = State.CONNECTING
        self.out: list[bytes] = []  # a list: an empty deque costs ~600 bytes per connection
        self.out_bytes = 0
        self.head_partial = False  # out[0] is the rest of a frame partly sent
        self.dirty = False         # waiting in the hub's dirty queue
        self.writing = False       # the kernel was full: only the flusher sends, on writability
        self.linger = False        # a close frame must go out before the socket closes
        self.deadline = 0.0        # when a CLOSING connection is cut off
        self.busy = False          # the handler is running (a call may take long)
        self.channels: set[str] = set()
        self.deflate_bits = 0
        self.decoder: frames.FrameDecoder | None = None
        self._trailing = trailing
        self.address = peer.address
        self.request = peer.request
        self.auth = peer.auth
        self._early = peer.outbox   # what the headers sent: goes out right after the 101
        for key, value in vars(peer).items():
            if key not in ("address", "request", "auth", "outbox") and not hasattr(self, key):
                setattr(self, key, value)
        hub.add(self)
        try:
            super().__init__(sock=_Outlet(self), connection_type=ConnectionType.SERVER,
                             receive_bytes=hub.receive_bytes, ping_interval=None,
                             max_message_size=hub.max_message_size,
                             thread_class=_ReaderThread, event_class=_NoEvent)
        except BaseException:
            hub.discard(self)
            raise

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.address!r} {self.state.value.lower()}>"

    # --- handshake (called by simple-websocket's Base.__init__) -------------------------

    def handshake(self) -> None:
        """Feed the parsed request to wsproto, choose extensions, send the 101."""
        request = self.request
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
        self.ws.initiate_upgrade_connection(headers, request.target)
        event = next(self.ws.events())
        if not isinstance(event, WSRequest):  # the listener checked the request already
            raise RuntimeError(f"unexpected handshake event {type(event).__name__}")
        extensions = []
        if self.hub.deflate and any(e.split(";")[0].strip() == "permessage-deflate"
                                    for e in event.extensions):
            # one compressed frame must serve every connection: no context takeover
            extensions = [PerMessageDeflate(client_no_context_takeover=True,
                                            server_no_context_takeover=True)]
        data = self.ws.send(AcceptConnection(extensions=extensions))
        inflate_bits = 0
        if extensions and extensions[0].enabled():
            self.deflate_bits = extensions[0].server_max_window_bits
            inflate_bits = extensions[0].client_max_window_bits
        self.decoder = frames.FrameDecoder(self.hub.max_message_size, inflate_bits)
        self.ws = None  # the handshake objects are not needed any more
        self._set_state(State.OPEN)
        self.connected = True
        self.send_frame(data)
        early, self._early = self._early, ()
        for message in early:
            self.send(message)

    # --- the reader thread ----------------------------------------------------------------

    def _thread(self) -> None:
        """The connection's first thread: greet the handler, handle what came with the
        request, then give the socket to the hub's readers (see :meth:`Hub.watch`)."""
        ident = threading.get_ident()
        batch = _readers[ident] = _Batch(self.hub)
        alive = False
        try:
            self.handler.on_open(self)
            alive = True
            if self._trailing:  # sent right behind the request head; already decrypted
                data, self._trailing = self._trailing, b""
                alive = self._receive(data, plain=True)
        except OSError:
            alive = False  # reset, or shut down by the flusher
        except Exception:
            log.exception("connection %s: reader failed", self.id)
            alive = False
        finally:
            if batch.dirty:
                batch.flush()
            _readers.pop(ident, None)
        if not (alive and self.hub.watch(self)):
            self._finish()

    def _readable(self, batch: _Batch) -> bool:
        """Read and handle what arrived (a hub reader's call); False: the connection is over.

        When the messages made broadcasts, what has arrived meanwhile is handled too
        (``_read_more``) before *batch*, the reader's, is sent: so broadcasts of a
        publisher's calls that arrive faster than they are served leave together.
        """
        recv = self.raw.recv
        size = self.receive_bytes
        try:
            data = recv(size, _MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False  # reset, or shut down by the flusher: the connection is over
        try:
            if not data or not self._receive(data):
                return False
            return self._read_more(recv, size) if batch.dirty else True
        except OSError:
            return False
        except Exception:
            log.exception("connection %s: reader failed", self.id)
            return False
        finally:
            if batch.dirty:  # also when the connection ended in this read
                batch.flush()

    def _read_more(self, recv: Any, size: int) -> bool:
        """Handle what has already arrived too (see MORE_READS); False: stop reading."""
        got = 0
        for _ in range(MORE_READS):
            try:
                data = recv(size, _MSG_DONTWAIT)
            except BlockingIOError:
                return True
            if not data or not self._receive(data):
                return False
            got += len(data)
            if got >= MORE_BYTES:
                break
        return True

    def _receive(self, data: bytes, plain: bool = False) -> bool:
        """Handle bytes read; False when reading should stop."""
        if self.tls is not None and not plain:
            with self.lock:
                data, reply = self.tls.decrypt(data)
                if reply:
                    self._queue_locked(reply, encrypted=True)
            if not data:
                return True
        events = self.decoder.feed(data)
        return self._handle_events(events) if events else True

    def _handle_events(self, events: Iterable[Any] = ()) -> bool:
        """Act on decoded frame events; False when reading should stop."""
        for event in events:
            kind = type(event)
            if kind is TextMessage:
                if self.state is State.OPEN:
                    self._dispatch(event.text)
            elif kind is BinaryMessage:
                if self.state is State.OPEN:
                    self._dispatch(event.data)
            elif kind is Ping:
                self.send_frame(frames.frame(frames.OP_PONG, event.payload))
            elif kind is Pong:
                self.pong_received = True
            elif kind is CloseReceived:
                self._close_received(event)
                return False
            elif kind is Violation:
                log.debug("connection %s: %s (%d)", self.id, event.reason, event.code)
                self.close(event.code, event.reason)
                if self.decoder.closed and not self._end_output():
                    return False
        return True

    def _end_output(self) -> bool:
        """Send FIN right behind the close frame of a violation; False if it is still queued.

        Nothing more will be decoded, so the server closes the TCP connection first
        (RFC 6455 7.1.1) instead of waiting ``close_timeout`` for a close the peer may
        never send. Only the write side is shut: the reader goes on draining until the
        peer's FIN (closing with unread data would send a reset that can destroy the
        close frame in flight). With the frame still queued the reader stops instead
        and the flusher closes once it is out.
        """
        with self.lock:
            if self.out:
                return False
            try:
                self.raw.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return True

    def _dispatch(self, data: str | bytes) -> None:
        self.busy = True
        try:
            self.handler.on_message(self, data)
        except Exception:
            # the handler answers its own errors; one escaping is a bug: no zombie, close
            log.exception("connection %s: handler failed", self.id)
            self.close(CLOSE_INTERNAL, "internal error")
        finally:
            self.busy = False

    def _close_received(self, event: CloseReceived) -> None:
        with self.lock:
            self.close_reason = event.code
            self.close_message = event.reason
            if self.state is State.OPEN:
                code = event.code if event.code is not None else CLOSE_NORMAL
                self._begin_close(code, "", echo=True)

    def _finish(self) -> None:
        """End of the reader thread: run on_close, hand the socket to the flusher."""
        with self.lock:
            self.linger = self.state is State.CLOSING and bool(self.out)
            self._set_state(State.CLOSED)
            self.connected = False
        try:
            self.handler.on_close(self)
        except Exception:
            log.exception("connection %s: on_close failed", self.id)
        self.hub.retire(self)

    # --- writing ----------------------------------------------------------------------

    def send_frame(self, data: bytes) -> bool:
        """Write framed bytes now if nothing is queued, else queue them (the reply path)."""
        with self.lock:
            if self.state is not State.OPEN:
                return False
            return self._queue_locked(data, immediate=True)

    def push(self, data: bytes) -> None:
        """Queue framed bytes for the flusher (the broadcast path); call hub.wake() after."""
        with self.lock:
            if self.state is State.OPEN:
                self._queue_locked(data)

    def _queue_locked(self, data: bytes, immediate: bool = False,
                      encrypted: bool = False) -> bool:
        """Send or queue *data*; False if the connection was cut off. Needs self.lock."""
        if self.tls is not None and not encrypted:
            data = self.tls.encrypt(data)
        if immediate and not self.out:
            try:
                sent = self.raw.send(data, _MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._broken_locked()
                return False
            if sent == len(data):
                return True
            if sent:
                data = data[sent:]
                self.head_partial = True
        self.out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes > self.hub.outbox_limit and self.state is State.OPEN:
            self._overflow_locked()
            return False
        if not self.dirty:
            self.dirty = True
            self.hub.mark(self)
        return True

    def _overflow_locked(self) -> None:
        """Drop the queue (keeping a partly sent frame) and close: slow consumer."""
        keep = self.out[0] if self.head_partial and self.out else None
        self.out.clear()
        self.out_bytes = 0
        if keep is not None:
            self.out.append(keep)
            self.out_bytes = len(keep)
        limit = self.hub.outbox_limit
        log.info("connection %s: outbound buffer over %d bytes, closing (slow consumer)",
                 self.id, limit)
        self.hub.slow_consumers += 1
        self._begin_close(CLOSE_POLICY, f"outbound buffer over {limit} bytes: slow consumer")

    def _broken_locked(self) -> None:
        """The socket failed on send: drop everything, wake the reader. Needs self.lock."""
        self.out.clear()
        self.out_bytes = 0
        if self.state is State.OPEN:
            self._set_state(State.CLOSING)
            self.connected = False
        _shutdown_locked(self)

    # --- closing ----------------------------------------------------------------------

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Start the closing handshake (default 1000). Does nothing if already closing."""
        with self.lock:
            if self.state is State.OPEN:
                self._begin_close(reason or CLOSE_NORMAL, message or "")

    def _begin_close(self, code: int, reason: str, echo: bool = False) -> None:
        """Queue a close frame and move to CLOSING. Needs self.lock."""
        self._set_state(State.CLOSING)
        self.connected = False
        if not echo:
            self.close_reason = code
            self.close_message = reason
        self._queue_locked(frames.close_frame(code, reason), immediate=True)
        self.hub.closing(self)

    def _set_state(self, new: State) -> None:
        """Move to *new*; the only place the state changes. Needs self.lock (or no reader yet)."""
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"connection {self.id}: illegal transition "
                               f"{self.state.value} -> {new.value}")
        self.state = new

    # --- what signals use -------------------------------------------------------------

    def send(self, data: str | bytes) -> Any:  # simple-websocket's API, kept working
        """Send one message (text for str, binary for bytes) to this client.

        Returns an awaitable that is already done, for code written for an
        asyncio server (``await ws.send(...)``); the message is queued before.
        """
        if isinstance(data, str):
            self.send_frame(frames.text_frame(data.encode("utf-8")))
        else:
            self.send_frame(frames.frame(frames.OP_BINARY, bytes(data)))
        return aio.completed()

    def receive(self, timeout: float | None = None) -> Any:
        """Not available: messages are dispatched to the handler as they arrive."""
        raise RuntimeError("lexicons dispatches messages to the handler; receive() is not used")

    @property
    def open(self) -> bool:
        """Tell whether messages can still be sent to this client."""
        return self.state is State.OPEN


def fan_out(members: Iterable[Connection], frame: bytes, payload: bytes) -> int:
    """Queue one broadcast for every member; return how many got it.

    *frame* is the text frame of *payload*, made once; members that negotiated
    permessage-deflate get one compressed frame, also made once. Each member's
    flusher is woken once at the end. This is the broadcast hot path: it does
    inline what :meth:`Connection.push` does.
    """
    compressed: dict[int, bytes] = {}
    hubs: list[Hub] = []  # hubs whose flusher must be woken
    batch = _readers.get(threading.get_ident())
    mine = batch.hub if batch is not None else None
    count = 0
    size = len(frame)
    for conn in members:
        data = frame
        bits = conn.deflate_bits
        if bits:
            data = compressed.get(bits)
            if data is None:
                data = compressed[bits] = frames.deflate_frame(payload, bits)
        hub = conn.hub
        with conn.lock:
            if conn.state is not State.OPEN:
                continue
            if conn.tls is not None or bits or conn.out_bytes + size > hub.outbox_limit:
                conn._queue_locked(data)
            else:
                conn.out.append(data)
                conn.out_bytes += size
                if not conn.dirty:
                    conn.dirty = True
                    if hub is mine:  # this reader sends after its batch
                        batch.add(conn)
                    else:
                        hub._dirty.append(conn)
                        if hub not in hubs:
                            hubs.append(hub)
        count += 1
    for hub in hubs:
        hub.wake()
    return count


class Hub:
    """The open connections of one listener, and the flusher thread that writes for them.

    The flusher owns a selector and is the only thread that registers sockets
    in it or closes them. It wakes on: a connection marked dirty by a thread
    that is not a reader, a connection that needs to wait for writability, a
    socket becoming writable, a connection retired by its reader, and every
    ``tick`` to enforce close deadlines and send pings.

    The readers (see :meth:`watch`) wait on the hub's epoll for readable
    connections; the flusher adds one when none has been waiting for ``patience``.
    """

    #: Seconds between the flusher's rounds when nothing wakes it: close deadlines, pings,
    #: and broadcasts a reader left queued while its signal kept running after publishing.
    tick = 0.05
    #: Threads kept parked for new connections and readers (see _ReaderThread); the others
    #: end, trim_per_tick a tick, once no connection has been retired by the flusher for
    #: trim_after seconds.
    spare_readers = 32
    trim_per_tick = 100
    trim_after = 1.0

    def __init__(self, *, outbox_limit: int = 1 << 20, max_message_size: int = 1 << 20,
                 ping_interval: float = 25.0, close_timeout: float = 2.0,
                 deflate: bool = False, receive_bytes: int = 65536,
                 stack_size: int = 512 * 1024, patience: float = 0.01):
        self.outbox_limit = outbox_limit
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.deflate = deflate
        self.receive_bytes = receive_bytes
        self.stack_size = stack_size
        self.patience = patience
        self.connections: set[Connection] = set()
        self.opened = 0
        self.slow_consumers = 0
        self.sends = 0   # send calls of the flusher
        self.chunks = 0  # frames (or rests of frames) those sends carried
        self._lock = threading.Lock()
        self._dirty: collections.deque[Connection] = collections.deque()
        # (since, batch) of reader batches, oldest first: the flusher sends for those
        # left waiting over a tick (see _Batch)
        self._batches: collections.deque[tuple[float, _Batch]] = collections.deque()
        self._retired: collections.deque[Connection] = collections.deque()
        # (deadline, connection) in the order the close frames went out: every deadline
        # is CLOSE_TIMEOUT after that, so the oldest is first (a mass close stays linear)
        self._closing: collections.deque[tuple[float, Connection]] = collections.deque()
        self._lingering: set[Connection] = set()
        self._waiting: collections.deque[Connection] = collections.deque()
        self._registered: set[Connection] = set()  # in the selector (flusher thread only)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._woken = False
        self._last_retired = 0.0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: dict[int, Connection] = {}  # fd -> connection, in the epoll
        self._epoll: Any = None
        self._pool_lock = threading.Lock()
        self._waiting_readers = 0  # readers waiting on the epoll (or about to)
        self._reader_left = 0.0    # when a reader last stopped waiting to handle something
        self._next_ping = time.monotonic() + ping_interval if ping_interval else float("inf")

    # --- registry ---------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        """Count a new connection (before its reader starts)."""
        with self._lock:
            self.connections.add(conn)
            self.opened += 1

    def discard(self, conn: Connection) -> None:
        """Forget a connection whose handshake failed (its socket is the caller's)."""
        with self._lock:
            self.connections.discard(conn)

    def __len__(self) -> int:
        return len(self.connections)

    # --- called from any thread -------------------------------------------------------

    def mark(self, conn: Connection) -> None:
        """Queue a dirty connection (conn.lock held by the caller): in the batch of the
        reader thread calling, which flushes it after its batch, else for the flusher."""
        batch = _readers.get(threading.get_ident())
        if batch is not None and batch.hub is self:
            batch.add(conn)
        else:
            self._dirty.append(conn)
            self.wake()

    def wake(self) -> None:
        """Wake the flusher if it is not already awake."""
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass  # the pipe is full: the flusher is awake anyway

    def retire(self, conn: Connection) -> None:
        """Close the socket of a connection no reader serves any more.

        With nothing left to send the socket is closed here and now: the peer gets
        its FIN right behind the close frame. Otherwise (a close frame still queued,
        the socket waiting for writability) the flusher closes it once that is done.
        """
        with conn.lock:
            closed = not (conn.out or conn.writing or conn in self._registered)
            if closed:
                try:
                    conn.raw.close()
                except OSError:
                    pass
        if closed:
            with self._lock:
                self.connections.discard(conn)
        else:
            self._retired.append(conn)
            self.wake()

    def closing(self, conn: Connection) -> None:
        """Start the close deadline of a connection that sent its close frame."""
        conn.deadline = deadline = time.monotonic() + self.close_timeout
        self._closing.append((deadline, conn))

    def shutdown(self, conn: Connection) -> None:
        """Shut a connection's socket down: a reader sees end-of-file.

        Under the connection's lock, which a reader closing the socket holds too:
        the descriptor of a socket closed meanwhile may already be a new client's.
        """
        with conn.lock:
            _shutdown_locked(conn)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Open the epoll, start the first reader, then the flusher (which may add more)."""
        _ReaderThread.stack_size = self.stack_size
        widen_futex_hash()
        self._stopped.clear()
        self._epoll = select.epoll()
        self._stop_r, self._stop_w = os.pipe()  # readable from stop() on: ends every reader
        self._epoll.register(self._stop_r, select.EPOLLIN)
        self._add_reader()
        self._thread = threading.Thread(target=self._run, name="lexicons-flusher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection (1001), wait for their readers, stop the flusher."""
        for conn in list(self.connections):
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        for conn in list(self.connections):  # readers that did not end: wake them
            self.shutdown(conn)
        deadline = time.monotonic() + 1.0
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopped.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._epoll is not None:
            os.write(self._stop_w, b"x")
            deadline = time.monotonic() + timeout
            while self._waiting_readers and time.monotonic() < deadline:
                time.sleep(0.01)
            with self._pool_lock:
                self._epoll.close()
                self._epoll = None
            os.close(self._stop_r)
            os.close(self._stop_w)
        self._watched.clear()
        for conn in list(self.connections):  # a reader stuck in a signal: close anyway
            self._finalize(conn)
        _ReaderThread.trim(0, len(_ReaderThread._parked))
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- the readers ------------------------------------------------------------------

    def watch(self, conn: Connection) -> bool:
        """Give an open connection's socket to the readers; False if the hub is stopping.

        A thread blocked in ``recv`` per connection would cost its stack, and every
        message a wake-up, a switch and a GIL hand-off among dozens of threads, which
        serve clients in no particular order; when thousands leave at once, thousands
        of threads wake together. The readers instead take readable connections from
        one epoll in the order they became readable (see the module doc).
        """
        fd = conn.raw.fileno()
        with self._pool_lock:  # stop() closes the epoll under it
            if self._epoll is None or self._stopped.is_set():
                return False
            self._watched[fd] = conn
            try:
                self._epoll.register(fd, _ARMED)
            except (OSError, ValueError):
                self._watched.pop(fd, None)
                return False
        return True

    def watched(self) -> int:
        """Return how many connections the readers watch (every open one past on_open)."""
        return len(self._watched)

    def readers(self) -> int:
        """Return how many readers wait for a readable connection now."""
        return self._waiting_readers

    def _add_reader(self) -> None:
        """Start a reader (on a parked thread if there is one), counted as waiting.

        Counted before it runs, so that the flusher does not start a second one
        meanwhile; uncounted again if no thread could be started (the flusher tries
        again a turn later).
        """
        epoll = self._epoll
        with self._pool_lock:
            self._waiting_readers += 1
        try:
            _ReaderThread(functools.partial(self._read, epoll)).start()
        except BaseException:
            with self._pool_lock:
                self._waiting_readers -= 1
            raise

    def _read(self, epoll: Any) -> None:
        """A reader: wait on *epoll* for a readable connection, serve it, wait again.

        It counts in ``_waiting_readers`` while it waits (from before it starts: see
        _add_reader). A reader that finds another one waiting when it is done leaves
        (its thread parks): readers beyond one exist only while handlers block.
        """
        ident = threading.get_ident()
        batch = _readers[ident] = _Batch(self)
        watched = self._watched
        counted = True
        try:
            while True:
                try:
                    ready = epoll.poll(-1, 1)
                except (OSError, ValueError, AttributeError):  # closed: the hub stopped
                    ready = ()
                with self._pool_lock:
                    self._waiting_readers -= 1
                    counted = False
                    self._reader_left = time.monotonic()
                for fd, _ in ready:
                    conn = watched.get(fd)
                    if conn is not None:
                        self._serve(conn, fd, batch, epoll)
                with self._pool_lock:
                    if self._waiting_readers or self._stopped.is_set() or (
                            epoll is not self._epoll):  # spare, or the hub was restarted
                        return
                    self._waiting_readers += 1
                    counted = True
        finally:
            if counted:  # left by an exception while counted as waiting
                with self._pool_lock:
                    self._waiting_readers -= 1
            if batch.dirty:
                batch.flush()
            _readers.pop(ident, None)

    def _serve(self, conn: Connection, fd: int, batch: _Batch, epoll: Any) -> None:
        """Handle a readable connection, then re-arm it in *epoll*, or end it."""
        if conn._readable(batch):
            try:
                epoll.modify(fd, _ARMED)
                return
            except (OSError, ValueError):
                pass  # the hub stopped meanwhile
        self._watched.pop(fd, None)
        try:
            epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        conn._finish()
        if batch.dirty:  # what on_close broadcast (a member left)
            batch.flush()

    def _check_readers(self, now: float) -> None:
        """Start a reader when every reader has been busy for ``patience`` (a handler
        that blocks must not hold up the other connections)."""
        if (not self._waiting_readers and now - self._reader_left > self.patience
                and not self._stopped.is_set()):
            self._add_reader()

    # --- the flusher thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._turn()
            except Exception:  # the flusher must outlive any one bad connection
                log.exception("flusher failed a turn")
                time.sleep(0.01)

    def _turn(self) -> None:
        # while connections are watched, look at the readers every ``patience``
        timeout = min(self.tick, self.patience) if self._watched else self.tick
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                self._woken = False
            else:
                self._writable(key.data)
        waiting = self._waiting
        while waiting:
            conn = waiting.popleft()
            if conn not in self._registered and conn.writing and conn.raw.fileno() >= 0:
                self._selector.register(conn.raw, selectors.EVENT_WRITE, conn)
                self._registered.add(conn)
        self.flush_dirty()
        if self._batches:
            self._flush_stale_batches()
        retired = self._retired
        now = time.monotonic()
        if retired:
            self._last_retired = now
            while retired:
                self._retire(retired.popleft())
        if self._closing:
            self._enforce_deadlines(now)
        self._check_readers(now)
        if now - self._last_retired > self.trim_after and _ReaderThread._parked:
            _ReaderThread.trim(self.spare_readers, self.trim_per_tick)
        if now >= self._next_ping:
            self._next_ping = now + self.ping_interval
            self._ping_all()

    def _flush_stale_batches(self) -> None:
        """Send for reader batches waiting over a tick (their signal is still running)."""
        batches = self._batches
        limit = time.monotonic() - self.tick
        while batches:
            since, batch = batches[0]
            if batch.since == since and since > limit:
                return  # the oldest live batch is recent
            batches.popleft()
            if batch.since == since:
                batch.flush()

    def flush_dirty(self) -> None:
        """Send what is queued for the dirty connections that no reader will flush.

        Broadcasts made on a reader thread go into that reader's batch
        (:class:`_Batch`), which the reader flushes once it has handled what its
        reads brought, so the broadcasts of all the messages in that batch leave in
        one send per member and no other thread sends for them meanwhile; this
        sends for the broadcasts made elsewhere (tasks, the backplane).
        """
        dirty = self._dirty
        while dirty:
            try:
                conn = dirty.popleft()
            except IndexError:
                return
            self._send_queued(conn)

    def _send_queued(self, conn: Connection, writable: bool = False) -> bool:
        """Send everything queued for *conn* in one send; True when nothing is left.

        Any thread may call this. When the kernel takes only part, the rest stays
        queued, the connection is marked ``writing`` and handed to the flusher,
        which alone waits for writability (writable=True: the flusher's call).
        """
        with conn.lock:
            conn.dirty = False
            if conn.writing and not writable:
                return False  # the flusher waits for writability and sends then
            out = conn.out
            if out:
                self.sends += 1
                self.chunks += len(out)
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                try:
                    sent = conn.raw.send(data, _MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    conn._broken_locked()
                    conn.writing = False
                    return True
                conn.out_bytes -= sent
                if sent < len(data):
                    out.append(data[sent:])
                    conn.head_partial = conn.head_partial or sent > 0
                    if not conn.writing:
                        conn.writing = True
                        self._waiting.append(conn)
                        self.wake()
                    return False
                conn.head_partial = False
            conn.writing = False
            return True

    def _writable(self, conn: Connection) -> None:
        """The selector says *conn* can take more: send, and stop waiting once drained."""
        if self._send_queued(conn, writable=True):
            self._unregister(conn)
            if conn in self._lingering:
                self._lingering.discard(conn)
                self._finalize(conn)

    def _unregister(self, conn: Connection) -> None:
        if conn in self._registered:
            self._registered.discard(conn)
            try:
                self._selector.unregister(conn.raw)
            except (KeyError, ValueError):
                pass

    def _retire(self, conn: Connection) -> None:
        """Close a finished connection's socket, after its close frame went out."""
        if conn.linger and conn.out and time.monotonic() < conn.deadline:
            self._lingering.add(conn)  # its deadline is in self._closing
            if not self._send_queued(conn, writable=True):
                return
        self._finalize(conn)

    def _finalize(self, conn: Connection) -> None:
        self._unregister(conn)
        fd = conn.raw.fileno()
        if self._watched.get(fd) is conn:  # the hub stops: a reader is stuck in a handler
            del self._watched[fd]
        with conn.lock:
            conn.writing = False
            conn.out.clear()
            conn.out_bytes = 0
            try:
                conn.raw.close()
            except OSError:
                pass
        self._lingering.discard(conn)
        with self._lock:
            self.connections.discard(conn)

    def _enforce_deadlines(self, now: float) -> None:
        """Act on the close deadlines that passed (oldest first; see ``_closing``)."""
        closing = self._closing
        while closing and closing[0][0] <= now:
            conn = closing.popleft()[1]
            if conn in self._lingering:
                self._lingering.discard(conn)
                self._finalize(conn)
            elif conn.state is not State.CLOSED:
                self.shutdown(conn)  # the peer did not answer the close: wake the reader

    def _ping_all(self) -> None:
        ping = frames.frame(frames.OP_PING)
        timeout = f"no pong within {self.ping_interval:g} s"
        for conn in list(self.connections):
            if conn.state is not State.OPEN or conn.busy:
                continue
            if not conn.pong_received:
                conn.close(CLOSE_POLICY, timeout)
                continue
            conn.pong_received = False
            conn.push(ping)
        self.wake()


def _shutdown_locked(conn: Connection) -> None:
    """Shut *conn*'s socket down unless it is closed already. Needs conn.lock."""
    try:
        conn.raw.shutdown(socket.SHUT_RDWR)  # a closed socket's fd is -1: EBADF
    except OSError:
        pass


def widen_futex_hash(slots: int = 1 << 14) -> bool:
    """Give this process a futex hash table sized for thousands of threads; True if done.

    Linux 6.16 and later give each process a private futex hash of 16 buckets on a
    2-core machine. Every thread waiting for the GIL or parked for a connection waits
    on a futex, so with 10,000 reader threads each bucket holds hundreds of waiters
    and every lock hand-off walks them: in a disconnect storm futex_wake was the
    largest cost of the process. Older kernels refuse the call; nothing changes then.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_FUTEX_HASH, _PR_FUTEX_HASH_SET_SLOTS, slots, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_PR_FUTEX_HASH = 78
_PR_FUTEX_HASH_SET_SLOTS = 1


def stack_size_valid(size: int) -> bool:
    """Tell whether *size* is a thread stack size this platform accepts."""
    return size >= 32768 and size % os.sysconf("SC_PAGE_SIZE") == 0
