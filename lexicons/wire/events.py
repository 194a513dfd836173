"""Events of the wire protocols: small frozen classes, gathered in one module.

The pure modules turn bytes or text into these events and never touch a
socket: :mod:`lexicons.http` yields a :class:`Request` (or raises an HTTP
error), :mod:`lexicons.frames` yields the frame-level events of one websocket
connection, and :mod:`lexicons.protocol` yields the calls of the native
protocol. The drivers in ``services/`` act on them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- HTTP (the upgrade request and plain HTTP endpoints) --------------------------------


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request head (and body, for plain HTTP routes)."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    version: str
    #: (name, value) pairs as received, names in lower case, in order.
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    #: The client's IP address (given to plain HTTP routes).
    peer: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of header *name* (case-insensitive), or *default*."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_list(self, name: str) -> list[str]:
        """Return the comma-separated tokens of every *name* header, stripped."""
        name = name.lower()
        tokens: list[str] = []
        for key, value in self.headers:
            if key == name:
                tokens.extend(t.strip() for t in value.split(",") if t.strip())
        return tokens

    @property
    def wants_upgrade(self) -> bool:
        """Tell whether the request asks for a websocket upgrade."""
        return any(t.lower() == "websocket" for t in self.header_list("upgrade"))


# --- websocket frames (lexicons.frames) -------------------------------------------------


@dataclass(frozen=True)
class TextMessage:
    """A complete text message (its frames joined and decoded as UTF-8)."""

    text: str


@dataclass(frozen=True)
class BinaryMessage:
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True)
class Ping:
    """A ping from the peer; it expects a pong with the same payload."""

    payload: bytes = b""


@dataclass(frozen=True)
class Pong:
    """A pong from the peer."""

    payload: bytes = b""


@dataclass(frozen=True)
class CloseReceived:
    """The peer sent a close frame (code None: it gave no status code)."""

    code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Violation:
    """The peer broke the protocol; the connection must close with *code*.

    After a violation the decoder ignores what follows, except that after an
    oversized frame (1009) it skips that frame's payload and keeps looking for
    the peer's close frame.
    """

    code: int
    reason: str


# --- native protocol (lexicons.protocol) ------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A call of a signal by name, with its keyword arguments already checked."""

    signal: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The caller's correlation id (the ``"#"`` key), or None.
    id: Any = None


@dataclass(frozen=True)
class Rejected:
    """A message, or one call in it, that cannot run; the caller gets *errors*."""

    errors: tuple[str, ...]
    id: Any = None


# --- channel history (lexicons.history) -------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where a channel's history stands: the offset of a publication and the history's epoch.

    Offsets count a channel's publications from 1; the epoch names one unbroken
    history (it changes when the history is lost), so an offset means something
    only with its epoch.
    """

    offset: int
    epoch: str


@dataclass(frozen=True)
class Recovery:
    """The answer to "what did I miss since *since*?": the publications, or recovered=False."""

    #: The channel's position after the publications (its newest offset).
    position: Position
    #: True: *publications* are every one after the client's offset, in order.
    recovered: bool
    #: The encoded broadcasts the client missed, oldest first (empty when not recovered).
    publications: tuple[bytes, ...] = ()
    #: Why it could not recover ("" when it did).
    reason: str = ""
