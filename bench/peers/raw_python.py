"""Serve the benchmark signals from one pure-Python selector loop (a ceiling, not a product).

What a server can reach in Python when it does the least work the wire format allows:
one thread, frames built once per broadcast, each connection's queued frames written
with one ``send`` per loop turn, TCP_NODELAY. No limits, no validation beyond what the
benchmark needs, no permessage-deflate: it shows how far the peers are from the machine
and checks that the load generator can measure well past them.

    python bench/peers/raw_python.py --port 5000
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import selectors
import signal
import socket
import struct

from wire import Broadcast, Join, Leave, Reply, handle

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """Return an unmasked server frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """Return ``data`` XOR-ed with the 4-byte ``mask``."""
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


class Conn:
    """One client connection: its socket, buffers and channels."""

    __slots__ = ("sock", "inbuf", "outbuf", "open", "channels", "writing")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.open = False
        self.channels: set[str] = set()
        self.writing = False


class RawServer:
    """A single-threaded selector loop speaking just enough websocket for the benchmark."""

    def __init__(self, host: str, port: int):
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server((host, port), backlog=1024)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.channels: dict[str, set[Conn]] = {}
        self.dirty: set[Conn] = set()
        self.running = True

    def serve(self) -> None:
        """Run the loop until stopped."""
        while self.running:
            for key, events in self.sel.select(1.0):
                if key.data is None:
                    self.accept()
                    continue
                conn = key.data
                if events & selectors.EVENT_READ:
                    self.read(conn)
                if events & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                    self.dirty.add(conn)
            dirty, self.dirty = self.dirty, set()
            for conn in dirty:
                self.flush(conn)

    def accept(self) -> None:
        """Accept every pending connection."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, selectors.EVENT_READ, Conn(sock))

    def close(self, conn: Conn) -> None:
        """Forget a connection and close its socket."""
        for name in conn.channels:
            self.channels.get(name, set()).discard(conn)
        self.dirty.discard(conn)
        if conn.sock.fileno() >= 0:
            self.sel.unregister(conn.sock)
            conn.sock.close()

    def read(self, conn: Conn) -> None:
        """Read what the socket has and act on every complete message."""
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        conn.inbuf += data
        if not conn.open:
            end = conn.inbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, conn.inbuf = bytes(conn.inbuf[:end]), conn.inbuf[end + 4:]
            if not self.handshake(conn, head):
                return
        self.frames(conn)

    def handshake(self, conn: Conn, head: bytes) -> bool:
        """Answer the upgrade request; return whether the connection is open."""
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key:
            conn.sock.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.close(conn)
            return False
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.queue(conn, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        conn.open = True
        return True

    def frames(self, conn: Conn) -> None:
        """Parse the complete client frames in the input buffer."""
        buf = conn.inbuf
        pos = 0
        while len(buf) - pos >= 6:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 8:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if len(buf) - pos < 14:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if len(buf) - pos < head + 4 + n:
                break
            mask = bytes(buf[pos + head:pos + head + 4])
            payload = unmask(bytes(buf[pos + head + 4:pos + head + 4 + n]), mask)
            pos += head + 4 + n
            opcode = b0 & 0x0F
            if opcode == 1:
                self.message(conn, payload)
            elif opcode == 9:
                self.queue(conn, frame(payload, 10))
            elif opcode == 8:
                self.queue(conn, frame(payload[:2], 8))
                self.flush(conn)
                self.close(conn)
                return
        del buf[:pos]

    def message(self, conn: Conn, payload: bytes) -> None:
        """Run one call: reply, join, leave or broadcast (framed once for all members)."""
        for action in handle(payload):
            if isinstance(action, Reply):
                self.queue(conn, frame(action.text.encode()))
            elif isinstance(action, Broadcast):
                data = frame(action.text.encode())
                for member in self.channels.get(action.channel, ()):
                    member.outbuf += data
                    self.dirty.add(member)
            elif isinstance(action, Join):
                self.channels.setdefault(action.channel, set()).add(conn)
                conn.channels.add(action.channel)
            elif isinstance(action, Leave):
                self.channels.get(action.channel, set()).discard(conn)
                conn.channels.discard(action.channel)

    def queue(self, conn: Conn, data: bytes) -> None:
        """Queue bytes for ``conn``; they are written at the end of the loop turn."""
        conn.outbuf += data
        self.dirty.add(conn)

    def flush(self, conn: Conn) -> None:
        """Write as much of the output buffer as the socket takes, in one call."""
        if conn.sock.fileno() < 0 or not conn.outbuf:
            return
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(conn)
            return
        del conn.outbuf[:sent]
        if bool(conn.outbuf) != conn.writing:
            conn.writing = bool(conn.outbuf)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self.sel.modify(conn.sock, events, conn)


def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = RawServer(host, port)

    def stop(signum: int, frame: object) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    main(args.host, args.port)
