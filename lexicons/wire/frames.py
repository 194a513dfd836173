"""Websocket frames (RFC 6455), server side: pure, bytes in, events out, bytes out.

Theory of operation
-------------------
:class:`FrameDecoder` takes whatever a client's socket gave and returns the
events it completes (:mod:`lexicons.events`). It keeps one growing buffer and
the number of bytes it needs before parsing again, so a large message that
trickles in costs linear time. It checks each frame header as soon as it is
complete: a data frame whose *declared* length would take the message over
``max_size`` is a violation (1009) at once, so a header claiming 2**62 bytes
holds nothing and nobody waits for it.

Server frames are not masked, so the bytes of one frame serve every
connection: :func:`text_frame` is called once per broadcast and its result
is written to each subscriber. With permessage-deflate negotiated with
``server_no_context_takeover`` each message is compressed on its own
(:func:`deflate_frame`), so one compressed frame also serves everyone.

This module does not touch sockets, threads or clocks; see
``lexicons/connection.py`` for the driver.
"""
from __future__ import annotations

import struct
import zlib

from lexicons.wire.events import BinaryMessage, CloseReceived, Ping, Pong, TextMessage, Violation

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes lexicons sends (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000          # the peer asked to close, or we are done
CLOSE_GOING_AWAY = 1001      # the server is stopping
CLOSE_PROTOCOL_ERROR = 1002  # a frame broke RFC 6455
CLOSE_INVALID_DATA = 1007    # a text message was not UTF-8
CLOSE_POLICY = 1008          # slow consumer (outbound buffer over the limit), no pong
CLOSE_TOO_BIG = 1009         # a message over MAX_MESSAGE_SIZE
CLOSE_INTERNAL = 1011        # the server failed

_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_DATA = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
_SKIP = object()  # a frame to drop unread (data while draining after a 1009)
_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack
_unpack_short = struct.Struct("!H").unpack_from
_unpack_long = struct.Struct("!Q").unpack_from


# --- encoding (server frames: never masked) ---------------------------------------------


def frame(opcode: int, payload: bytes = b"", rsv1: bool = False) -> bytes:
    """Return one final, unmasked frame carrying *payload*."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _pack_short(first, 126, n) + payload
    return _pack_long(first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """Return a text frame for UTF-8 *payload* (the hot path of every reply and broadcast)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _pack_short(0x81, 126, n) + payload
    return _pack_long(0x81, 127, n) + payload


def close_frame(code: int | None = CLOSE_NORMAL, reason: str = "") -> bytes:
    """Return a close frame; *reason* is cut to fit 125 bytes on a character boundary."""
    if code is None:
        return frame(OP_CLOSE)
    data = reason.encode("utf-8")[:123]
    while data:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return frame(OP_CLOSE, struct.pack("!H", code) + data)


def deflate_frame(payload: bytes, window_bits: int = 15, opcode: int = OP_TEXT) -> bytes:
    """Return *payload* compressed on its own as one permessage-deflate frame."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(_DEFLATE_TAIL):
        data = data[:-4]
    return frame(opcode, data, rsv1=True)


def mask(key: bytes, data: bytes) -> bytes:
    """Return *data* XORed with the 4-byte *key* (masking is its own inverse)."""
    n = len(data)
    if not n:
        return b""
    k = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes, key: bytes = b"\x37\xfa\x21\x3d",
                 fin: bool = True, rsv1: bool = False) -> bytes:
    """Return a masked frame as a client sends it (tests and tools use this)."""
    first = (0x80 if fin else 0) | opcode | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = _pack_short(first, 0x80 | 126, n)
    else:
        head = _pack_long(first, 0x80 | 127, n)
    return head + key + mask(key, payload)


# --- decoding (client frames: always masked) --------------------------------------------


def _valid_close_code(code: int) -> bool:
    return (1000 <= code <= 1003 or 1007 <= code <= 1014) or 3000 <= code <= 4999


class FrameDecoder:
    """Turn the bytes a client sends into events; enforce the size limit early.

    *max_size* bounds a message (the sum of its frames, after decompression).
    *inflate_bits* is the client's window if permessage-deflate was negotiated
    (with ``client_no_context_takeover``: each message is inflated on its own).
    """

    __slots__ = ("max_size", "inflate_bits", "_buf", "_need", "_parts", "_part_op",
                 "_part_size", "_part_deflated", "_skip", "_draining", "closed")

    def __init__(self, max_size: int, inflate_bits: int = 0):
        self.max_size = max_size
        self.inflate_bits = inflate_bits
        self._buf = bytearray()
        self._need = 2          # bytes the buffer must hold before parsing is worth it
        self._parts: list[bytes] | None = None  # frames of a fragmented message
        self._part_op = 0
        self._part_size = 0
        self._part_deflated = False
        self._skip = 0          # payload bytes of a refused frame still to discard
        self._draining = False  # after 1009: data is skipped, only a close frame counts
        self.closed = False     # a close frame or a violation ended the stream

    def feed(self, data: bytes) -> list:
        """Add received bytes; return the events they complete, in order."""
        if self.closed and not self._skip:
            return []
        buf = self._buf
        if not buf and not self._parts and not self._draining:
            # fast path: exactly one small, final, masked text frame (most calls)
            n = len(data) - 6
            if 0 < n < 126 and n <= self.max_size and data[0] == 0x81 and data[1] == 0x80 | n:
                try:
                    return [TextMessage(mask(data[2:6], data[6:]).decode("utf-8"))]
                except UnicodeDecodeError:
                    pass  # the general path reports it
        buf += data
        if self._skip:
            drop = min(self._skip, len(buf))
            del buf[:drop]
            self._skip -= drop
            if self._skip:
                return []
            self._need = 2
        if len(buf) < self._need:
            return []
        events: list = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 6
            if n == 126:
                head = 8
                if end - pos < 4:
                    self._need = 4
                    break
                n = _unpack_short(buf, pos + 2)[0]
            elif n == 127:
                head = 14
                if end - pos < 10:
                    self._need = 10
                    break
                n = _unpack_long(buf, pos + 2)[0]
            problem = self._check_header(b0, b1, n)
            if problem is not None:
                if problem is not _SKIP:
                    events.append(problem)
                if problem is _SKIP or problem.code == CLOSE_TOO_BIG:
                    # drop the refused frame's payload unread, then look for the peer's close
                    available = end - pos
                    total = head + n
                    if available >= total:
                        pos += total
                        continue
                    self._skip = total - available
                    pos = end
                else:
                    pos = end
                    self._need = 1 << 62
                break
            total = head + n
            if end - pos < total:
                self._need = total
                break
            if n:
                payload = mask(bytes(buf[pos + head - 4:pos + head]),
                               bytes(buf[pos + head:pos + total]))
            else:
                payload = b""
            pos += total
            event = self._frame(b0, b0 & 0x0F, payload)
            if event is not None:
                events.append(event)
                if self.closed:
                    pos = end
                    self._need = 1 << 62
                    break
        else:
            self._need = 2
        del buf[:pos]
        return events

    def _check_header(self, b0: int, b1: int, n: int) -> Violation | None:
        """Return the violation a frame header commits, or None."""
        opcode = b0 & 0x0F
        if not b1 & 0x80:
            return self._fail(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if opcode in _CONTROL:
            if n > 125:
                return self._fail(CLOSE_PROTOCOL_ERROR, "control frame longer than 125 bytes")
            if not b0 & 0x80:
                return self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if b0 & 0x70:
                return self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set on a control frame")
            return None
        if opcode not in _DATA:
            return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if self._draining:
            return _SKIP
        rsv = b0 & 0x70
        if rsv and (rsv != 0x40 or not self.inflate_bits or opcode == OP_CONTINUATION):
            return self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if n >> 63:
            return self._fail(CLOSE_PROTOCOL_ERROR, "frame length with the top bit set")
        if opcode == OP_CONTINUATION:
            if self._parts is None:
                return self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            size = self._part_size + n
        else:
            if self._parts is not None:
                return self._fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            size = n
        if size > self.max_size:
            return self._fail(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")
        return None

    def _fail(self, code: int, reason: str) -> Violation:
        if code == CLOSE_TOO_BIG:
            # the stream is still well-formed: skip data, keep reading for the close frame
            self._draining = True
            self._parts = None
        else:
            self.closed = True
        return Violation(code, reason)

    def _frame(self, b0: int, opcode: int, payload: bytes):
        """Return the event a complete, checked frame makes (None: a message goes on)."""
        fin = b0 & 0x80
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if fin:
                return self._message(opcode, payload, bool(b0 & 0x40))
            self._parts = [payload]
            self._part_op = opcode
            self._part_size = len(payload)
            self._part_deflated = bool(b0 & 0x40)
            return None
        if opcode == OP_CONTINUATION:
            self._parts.append(payload)
            self._part_size += len(payload)
            if not fin:
                return None
            parts, self._parts = self._parts, None
            return self._message(self._part_op, b"".join(parts), self._part_deflated)
        if opcode == OP_CLOSE:
            return self._close(payload)
        if self._draining:
            return None
        if opcode == OP_PING:
            return Ping(payload)
        return Pong(payload)

    def _message(self, opcode: int, payload: bytes, deflated: bool):
        if deflated:
            payload = self._inflate(payload)
            if isinstance(payload, Violation):
                return payload
        if opcode == OP_BINARY:
            return BinaryMessage(payload)
        try:
            return TextMessage(payload.decode("utf-8"))
        except UnicodeDecodeError:
            return self._fail(CLOSE_INVALID_DATA, "text message is not valid UTF-8")

    def _inflate(self, payload: bytes) -> bytes | Violation:
        inflater = zlib.decompressobj(-self.inflate_bits)
        try:
            data = inflater.decompress(payload + _DEFLATE_TAIL, self.max_size + 1)
        except zlib.error:
            return self._fail(CLOSE_INVALID_DATA, "compressed message cannot be inflated")
        if len(data) > self.max_size:
            return self._fail(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")
        return data

    def _close(self, payload: bytes) -> CloseReceived | Violation:
        self.closed = True
        if not payload:
            return CloseReceived(None, "")
        if len(payload) == 1:
            return self._fail(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = _unpack_short(payload)[0]
        if not _valid_close_code(code):
            return self._fail(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(CLOSE_INVALID_DATA, "close reason is not valid UTF-8")
        return CloseReceived(code, reason)
