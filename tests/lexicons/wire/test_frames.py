"""Websocket frames: decoding what clients send, encoding what the server sends (no network)."""
import struct
import zlib

from lexicons.wire import frames
from lexicons.wire.events import BinaryMessage, CloseReceived, Ping, Pong, TextMessage, Violation
from lexicons.wire.frames import FrameDecoder, client_frame


def test_decodes_a_masked_text_frame():
    """A complete masked text frame becomes one TextMessage."""
    assert FrameDecoder(1000).feed(client_frame(1, "héllo".encode())) == [TextMessage("héllo")]


def test_decodes_byte_by_byte_and_in_one_chunk_alike():
    """Frames split anywhere decode to the same events as when they arrive whole."""
    data = (client_frame(1, b"a" * 300) + client_frame(9, b"p") + client_frame(2, b"\x00\x01")
            + client_frame(10, b"") + client_frame(1, b"x" * 70000))
    whole = FrameDecoder(1 << 20).feed(data)
    decoder = FrameDecoder(1 << 20)
    pieces = []
    for i in range(len(data)):
        pieces += decoder.feed(data[i:i + 1])
    assert whole == pieces == [TextMessage("a" * 300), Ping(b"p"), BinaryMessage(b"\x00\x01"),
                               Pong(b""), TextMessage("x" * 70000)]


def test_joins_fragments_with_control_frames_between():
    """A fragmented message is joined; a ping between its fragments comes out first."""
    data = (client_frame(1, b"he", fin=False) + client_frame(9, b"!")
            + client_frame(0, b"ll", fin=False) + client_frame(0, b"o"))
    assert FrameDecoder(100).feed(data) == [Ping(b"!"), TextMessage("hello")]


def test_close_frame_with_code_and_reason():
    """A close frame gives its code and reason; nothing after it is decoded."""
    data = client_frame(8, struct.pack("!H", 1001) + b"bye") + client_frame(1, b"late")
    assert FrameDecoder(100).feed(data) == [CloseReceived(1001, "bye")]


def test_close_frame_without_code():
    """An empty close frame has no code."""
    assert FrameDecoder(100).feed(client_frame(8, b"")) == [CloseReceived(None, "")]


def test_header_claiming_2_62_bytes_is_refused_at_once():
    """A frame header claiming 2**62 bytes is a 1009 as soon as the header is in."""
    header = bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 1 << 62)
    events = FrameDecoder(1 << 20).feed(header)
    assert events == [Violation(1009, f"message over {1 << 20} bytes")]


def test_after_an_oversized_frame_the_close_frame_is_still_seen():
    """The oversized frame's payload is skipped and the peer's close frame comes through."""
    decoder = FrameDecoder(10)
    events = decoder.feed(client_frame(1, b"x" * 50))
    events += decoder.feed(client_frame(1, b"ignored") + client_frame(8, b"\x03\xe8"))
    assert events == [Violation(1009, "message over 10 bytes"), CloseReceived(1000, "")]


def test_fragments_adding_up_over_the_limit_are_refused():
    """The limit counts the whole message, not each fragment."""
    data = client_frame(1, b"x" * 8, fin=False) + client_frame(0, b"x" * 8)
    assert FrameDecoder(10).feed(data)[0].code == 1009


def test_invalid_utf8_is_1007():
    """A text message that is not UTF-8 closes with 1007."""
    assert FrameDecoder(100).feed(client_frame(1, b"\xff\xfe")) == [
        Violation(1007, "text message is not valid UTF-8")]


def test_protocol_violations_are_1002():
    """Unmasked frames, unknown opcodes, bad control frames and stray continuations: 1002."""
    unmasked = bytes((0x81, 2)) + b"hi"
    cases = [unmasked, client_frame(3, b""), client_frame(9, b"x" * 126),
             client_frame(9, b"x", fin=False), client_frame(0, b"x"),
             client_frame(1, b"x", rsv1=True), client_frame(8, b"\x03"),
             client_frame(8, struct.pack("!H", 999)),
             client_frame(1, b"a", fin=False) + client_frame(1, b"b")]
    for data in cases:
        events = FrameDecoder(1000).feed(data)
        assert len(events) == 1 and events[0].code == 1002, (data, events)


def test_nothing_is_decoded_after_a_violation():
    """After a fatal violation the decoder ignores the rest of the stream."""
    decoder = FrameDecoder(100)
    assert decoder.feed(client_frame(3, b"")) != []
    assert decoder.feed(client_frame(1, b"later")) == []


def test_encodes_every_length_form():
    """Server frames use the 7-bit, 16-bit and 64-bit length forms and are not masked."""
    for n, head in ((125, 2), (126, 4), (65535, 4), (65536, 10)):
        data = frames.text_frame(b"a" * n)
        assert data[0] == 0x81 and not data[1] & 0x80 and len(data) == n + head
        assert data == frames.frame(frames.OP_TEXT, b"a" * n)


def test_close_frame_reason_is_cut_on_a_character_boundary():
    """A long close reason is cut to 123 bytes without splitting a character."""
    data = frames.close_frame(1008, "é" * 100)
    assert len(data) <= 127
    data[4:].decode("utf-8")


def test_deflate_frame_inflates_back():
    """A broadcast compressed once inflates to the original text."""
    data = frames.deflate_frame(b"hello " * 100)
    assert data[0] == 0xC1
    payload = data[4:] if data[1] == 126 else data[2:]
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(payload + b"\x00\x00\xff\xff") == b"hello " * 100


def test_inflates_a_compressed_client_message():
    """With permessage-deflate a compressed client message is inflated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(b"hi there") + compressor.flush(zlib.Z_SYNC_FLUSH)
    frame = client_frame(1, body[:-4], rsv1=True)
    assert FrameDecoder(100, inflate_bits=15).feed(frame) == [TextMessage("hi there")]


def test_compression_bomb_is_1009():
    """A small compressed message that inflates past the limit is refused."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(b"\x00" * 1_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    events = FrameDecoder(10_000, inflate_bits=15).feed(client_frame(2, body[:-4], rsv1=True))
    assert events[0].code == 1009
