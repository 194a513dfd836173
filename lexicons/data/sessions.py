"""Browser sessions: a login kept under a token, redeemed on connect by single-use tickets.

A browser cannot set headers on a websocket, and a password in the websocket
URL shows in the console, the history and proxy logs. So a page logs in over
plain HTTP instead (``POST /session`` with the headers in the body; the gate
runs them as for a connect), and the gate keeps what they established (the
identity: ``ws.auth`` and the rest) here, under a random *session token*
the page keeps. Each connect then carries only a *ticket*: a random string
that names the session, is good for one connect and a few seconds
(``TICKET_TTL``), and is worth nothing once used. A reload asks a new ticket
with the token; logging out ends the session and its tickets.

Sessions live in memory, under the SHA-256 of their token (the token itself is
kept nowhere here); :meth:`SessionStore.export` and :meth:`SessionStore.restore`
carry them over a clean restart of the daemon (tickets are not carried: a
page asks a new one). A session unused for ``SESSION_TTL`` seconds ends; past
``max_sessions`` the least recently used one ends first.

Pure: no I/O; time comes from the clock given. Thread-safe (one lock).
"""
from __future__ import annotations

import collections
import copy
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Session:
    state: dict[str, Any]
    last_used: float


class SessionStore:
    """Sessions by token, and the tickets that redeem them once each."""

    def __init__(self, ticket_ttl: float, session_ttl: float, *,
                 clock: Callable[[], float] = time.monotonic, max_sessions: int = 100_000):
        self.ticket_ttl = ticket_ttl
        self.session_ttl = session_ttl
        self.clock = clock
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        # ticket -> (session token, expiry), oldest first (expiry order: one TTL for all)
        self._tickets: collections.OrderedDict[str, tuple[str, float]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def create(self, state: dict[str, Any]) -> tuple[str, str]:
        """Keep *state* (a copy) as a new session; return its token and a first ticket."""
        token = secrets.token_urlsafe(32)
        key = _digest(token)
        with self._lock:
            now = self.clock()
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[key] = _Session(copy.deepcopy(state), now)
            return token, self._new_ticket(key, now)

    def ticket(self, token: str) -> str | None:
        """Return a new ticket for the session *token*, or None if it has ended."""
        key = _digest(token)
        with self._lock:
            now = self.clock()
            self._expire(now)
            session = self._sessions.get(key)
            if session is None:
                return None
            session.last_used = now
            self._sessions.move_to_end(key)
            return self._new_ticket(key, now)

    def redeem(self, ticket: str) -> dict[str, Any] | None:
        """Use *ticket* up; return (a copy of) its session's state, or None if it is no good."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            entry = self._tickets.pop(ticket, None)
            if entry is None:
                return None
            session = self._sessions.get(entry[0])
            if session is None:
                return None
            session.last_used = now
            self._sessions.move_to_end(entry[0])
            return copy.deepcopy(session.state)

    def valid(self, ticket: str) -> bool:
        """Tell whether *ticket* would be redeemed now (without using it)."""
        with self._lock:
            self._expire(self.clock())
            entry = self._tickets.get(ticket)
            return entry is not None and entry[0] in self._sessions

    def end(self, token: str) -> bool:
        """End the session *token* and its tickets; tell whether there was one."""
        key = _digest(token)
        with self._lock:
            ended = self._sessions.pop(key, None) is not None
            for ticket in [t for t, (owner, _) in self._tickets.items() if owner == key]:
                del self._tickets[ticket]
            return ended

    def export(self) -> list[dict[str, Any]]:
        """Return the live sessions whose state is JSON, for :meth:`restore` after a restart."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            out = []
            for key, session in self._sessions.items():
                try:
                    json.dumps(session.state)
                except (TypeError, ValueError):
                    continue  # state a header made that JSON cannot carry: log in again
                out.append({"key": key, "idle": now - session.last_used,
                            "state": session.state})
            return out

    def restore(self, items: list[dict[str, Any]]) -> int:
        """Take back sessions from :meth:`export`; return how many are still live."""
        with self._lock:
            now = self.clock()
            for item in sorted(items, key=lambda i: -float(i["idle"])):  # oldest first
                if float(item["idle"]) < self.session_ttl and isinstance(item["state"], dict):
                    self._sessions[str(item["key"])] = _Session(item["state"],
                                                                now - float(item["idle"]))
            self._expire(now)
            return len(self._sessions)

    def _new_ticket(self, key: str, now: float) -> str:
        """Needs self._lock held."""
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (key, now + self.ticket_ttl)
        return ticket

    def _expire(self, now: float) -> None:
        """Drop expired tickets and idle sessions. Needs self._lock held."""
        while self._tickets:
            ticket, (_, expires) = next(iter(self._tickets.items()))
            if expires > now:
                break
            del self._tickets[ticket]
        while self._sessions:
            token, session = next(iter(self._sessions.items()))
            if now - session.last_used < self.session_ttl:
                break
            del self._sessions[token]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
