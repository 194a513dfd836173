"""The gate service: who may connect (trust list, headers) and who they are.

The listener hands the gate each checked upgrade request for ``/``. The gate
decides on a small pool of threads (``HANDSHAKE_WORKERS``), since header code
is user code and may block: it runs the application's Header classes against
the request's headers and query parameters, combines their results with the
application's ``gate`` function, and either refuses (401 with a JSON body
saying what failed, 400 for a header that is not a JSON object) or completes
the upgrade and hands the connection to the router. What the headers
established stays on the connection (``ws.auth`` and whatever they set).

The trust list (``TRUST``: addresses, networks, ``*``; empty: anyone) is checked by the
listener, through :meth:`GateService.trusted`, as soon as a client connects.

Browsers log in without credentials in any URL through ``/session``
(:mod:`lexicons.sessions`): ``POST /session`` with ``{"headers": {"Login":
{...}}}`` runs the headers as a connect would and answers a session token and
a ticket; ``POST /session`` with ``{"session": token}`` a new ticket;
``DELETE /session`` with the same body ends the session. A connect with
``?ticket=...`` is admitted with what the login established, without running
the headers again; a ticket is good for one connect, within ``TICKET_TTL``.
With a persister in the daemon, the sessions outlive a restart, a crash too: they
are written to ``DATA_DIR/sessions.json`` (hashed tokens, mode 0600) when one
opens or ends and at stop, and read back at start.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from lexicons.daemon.connection import Peer
from lexicons.daemon.pool import Pool
from lexicons.daemon.service import Service
from lexicons.daemon.trust import TrustList, client_trust
from lexicons.data.sessions import SessionStore
from lexicons.errors import CallError, NotPermitted, ServiceError, Unavailable
from lexicons.header import HeaderBlock, header_arguments, header_name, is_header, run_header
from lexicons.wire import http
from lexicons.wire.arguments import Arguments
from lexicons.wire.events import Request
from services.listener import HTTPResponse

#: The plain HTTP path that tells a client why its headers would be refused.
CHECK_PATH = "/gate"
#: The plain HTTP path where a browser logs in, gets connect tickets and logs out.
SESSION_PATH = "/session"
#: The query parameter of a connect that carries a ticket.
TICKET = "ticket"
#: The file in DATA_DIR that carries the sessions over a restart.
SESSIONS_FILE = "sessions.json"
#: What a connect with a bad ticket is told (the same whatever was wrong with it).
BAD_TICKET = "the ticket is unknown, used or expired: log in again"
_NO_STORE = (("Cache-Control", "no-store"),)


class Refusal(Exception):
    """A client the gate refuses, with the HTTP status, the reason it is told and the
    messages the headers sent it meanwhile (``ws.send``)."""

    def __init__(self, status: int, reason: str, messages: list[Any] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.messages = messages or []

    def body(self) -> dict[str, Any]:
        """Return what the refusal's JSON body adds to status, error and reason."""
        return {"messages": self.messages} if self.messages else {}


class GateService(Service):
    """Admit or refuse websocket clients of the native protocol (see the module doc)."""

    name = "gate"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.headers: list[tuple[HeaderBlock, str, Arguments]] = []
        self.pool = Pool("gate", self.settings.HANDSHAKE_WORKERS, 1024)
        self.router: Any = None
        self.admitted = 0
        self.refused = 0
        self.sessions = SessionStore(self.settings.TICKET_TTL, self.settings.SESSION_TTL)
        self._saving = threading.Lock()   # logins on several threads share one file
        self._trust: tuple[list[str], TrustList] | None = None

    def setup(self) -> None:
        self.trust_list()  # a bad TRUST stops start-up with the setting's name
        for cls in self.manager.app.headers:
            if not is_header(cls):
                raise ServiceError(f"headers: {cls!r} is not a Header subclass nor a function")
            self.headers.append((cls, header_name(cls).lower(), header_arguments(cls)))
        if not self.manager.has_service("router"):
            raise ServiceError("the gate needs the router service (services.router)")
        self.router = self.manager.get_service("router")
        self._load_sessions()
        if self.manager.has_service("listener"):
            listener = self.manager.get_service("listener")
            listener.websocket("/", self)
            listener.route(CHECK_PATH, self.explain)
            listener.route(SESSION_PATH, self.session_route)
        self.pool.start()

    def teardown(self) -> None:
        self.pool.stop()
        self._save_sessions()

    def _sessions_path(self) -> str | None:
        """Return where sessions are kept over a restart (None: in memory only)."""
        if not self.manager.has_service("persister"):
            return None  # only the data directory's owner writes into it
        return os.path.join(self.settings.DATA_DIR, SESSIONS_FILE)

    def _load_sessions(self) -> None:
        path = self._sessions_path()
        if path is None or not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as fh:
                count = self.sessions.restore(json.load(fh))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log.warning("ignored %s (sessions start afresh): %s", path, exc)
            return
        self.log.info("%d session(s) carried over from %s", count, path)

    def _save_sessions(self) -> None:
        path = self._sessions_path()
        if path is None or not os.path.isdir(os.path.dirname(path)):
            return
        with self._saving:
            self._write_sessions(path, self.sessions.export())

    def _write_sessions(self, path: str, sessions: list[dict[str, Any]]) -> None:
        """Write *sessions* to *path* atomically (self._saving held)."""
        temporary = path + ".tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(sessions, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            self.log.warning("cannot keep the sessions in %s: %s", path, exc)

    def info(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "refused": self.refused,
                "headers": [header_name(cls) for cls, _, _ in self.headers],
                "trust": list(self.settings.TRUST), "waiting": len(self.pool),
                "sessions": len(self.sessions)}

    # --- trust --------------------------------------------------------------------------

    def trust_list(self) -> TrustList:
        """Return the parsed TRUST setting (re-parsed when a reload changes it)."""
        entries = self.settings.TRUST
        if self._trust is None or self._trust[0] is not entries:
            self._trust = (entries, client_trust(entries))
        return self._trust[1]

    def trusted(self, address: Any) -> bool:
        """Tell whether a client at *address* may connect at all."""
        host = address[0] if isinstance(address, tuple) else ""
        return self.trust_list().allows(host)

    # --- admission ----------------------------------------------------------------------

    def admit(self, admission: Any) -> bool:
        """Take an upgrade request; decide on the pool. False when the pool is full."""
        return self.pool.submit(self._decide, admission)

    def _decide(self, admission: Any) -> None:
        peer = Peer(admission.address, admission.request)
        try:
            ticket = admission.request.query.get(TICKET)
            if ticket is not None:
                self._redeem(peer, ticket)
            else:
                self.check(peer)
        except Refusal as refusal:
            self.refused += 1
            self.log.info("refused %s: %d %s", admission.ip, refusal.status, refusal.reason)
            admission.refuse(refusal.status, refusal.reason, body=refusal.body())
            return
        except Exception:
            self.refused += 1
            self.log.exception("checking the headers of %s failed", admission.ip)
            admission.refuse(500, "the server failed to check the headers")
            return
        if admission.upgrade(self.router, peer) is not None:
            self.admitted += 1

    def check(self, peer: Peer, given: dict[str, str] | None = None) -> None:
        """Run the headers for *peer*; raise Refusal unless the gate admits it.

        *given* (lower-case header name -> raw JSON) replaces what the request carries.
        """
        if not self.headers:
            return
        given = self._given(peer) if given is None else given
        results: list[bool] = []
        reasons: list[str] = []
        for cls, key, arguments in self.headers:
            name = header_name(cls)
            raw = given.get(key)
            if raw is None:
                results.append(False)
                reasons.append(f"{name}: not given")
                continue
            ok, reason = self._execute_header(cls, name, arguments, raw, peer)
            results.append(ok)
            if not ok:
                reasons.append(f"{name}: {reason}")
        if not self.manager.app.gate(results):
            raise Refusal(401, "; ".join(reasons) or "refused", peer.sent_messages())

    def explain(self, request: Request) -> HTTPResponse:
        """Answer ``GET /gate?Header=...`` with what a connect with those headers would get.

        Browsers hide the body of a refused websocket upgrade from scripts (the
        socket just closes with code 1006), so a page asks here, with the same
        query, to learn why: 200 ``{"admitted": true}``, or the refusal's status
        with the JSON body the upgrade got. The headers run as for a connect
        (their side effects included), so ask only after a refused connect.
        """
        try:
            ticket = request.query.get(TICKET)
            if ticket is not None:  # asked, not used: the page may still connect with it
                if not self.sessions.valid(ticket):
                    raise Refusal(401, BAD_TICKET)
            else:
                self.check(Peer(None, request))
        except Refusal as refusal:
            return _refusal_response(refusal)
        return HTTPResponse(200, {"admitted": True}, _NO_STORE)

    # --- sessions -----------------------------------------------------------------------

    def _redeem(self, peer: Peer, ticket: str) -> None:
        """Give *peer* what the ticket's login established; Refusal if the ticket is no good."""
        state = self.sessions.redeem(ticket)
        if state is None:
            raise Refusal(401, BAD_TICKET)
        for key, value in state.items():
            setattr(peer, key, value)

    def session_route(self, request: Request) -> HTTPResponse:
        """Answer ``/session``: log in (POST headers), a new ticket (POST session), log out."""
        if request.method not in ("POST", "DELETE"):
            return HTTPResponse(405, {"status": 405, "error": "Method Not Allowed",
                                      "reason": "use POST to log in or get a ticket, DELETE "
                                                "to log out"}, (("Allow", "POST, DELETE"),))
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        try:
            if not isinstance(body, dict):
                raise Refusal(400, 'the body must be a JSON object: {"headers": {...}} or '
                                   '{"session": "..."}')
            if request.method == "DELETE":
                return self._logout(body)
            if "session" in body:
                return self._renew(body["session"])
            return self._login(request, body.get("headers"))
        except Refusal as refusal:
            return _refusal_response(refusal)

    def _login(self, request: Request, headers: Any) -> HTTPResponse:
        if not isinstance(headers, dict) or not all(
                isinstance(value, dict) for value in headers.values()):
            raise Refusal(400, 'headers must be an object of header objects: '
                               '{"headers": {"Login": {...}}}')
        peer = Peer((request.peer, 0), request)
        given = {str(name).lower(): json.dumps(value) for name, value in headers.items()}
        self.check(peer, given)
        state = {k: v for k, v in vars(peer).items() if k not in ("address", "request")}
        token, ticket = self.sessions.create(state)
        self._save_sessions()   # a login outlives a crash of the daemon, not only a stop
        self.log.info("session opened for %s", request.peer)
        return HTTPResponse(200, {"session": token, "ticket": ticket,
                                  "ticket_ttl": self.settings.TICKET_TTL}, _NO_STORE)

    def _renew(self, token: Any) -> HTTPResponse:
        ticket = self.sessions.ticket(token) if isinstance(token, str) else None
        if ticket is None:
            raise Refusal(401, "the session has ended: log in again")
        return HTTPResponse(200, {"ticket": ticket, "ticket_ttl": self.settings.TICKET_TTL},
                            _NO_STORE)

    def _logout(self, body: dict[str, Any]) -> HTTPResponse:
        token = body.get("session")
        ended = isinstance(token, str) and self.sessions.end(token)
        if ended:
            self._save_sessions()
        return HTTPResponse(200, {"ended": ended}, _NO_STORE)

    def _given(self, peer: Peer) -> dict[str, str]:
        """Return the raw values of the headers the client sent (headers win over query)."""
        wanted = {key for _, key, _ in self.headers}
        given = {k.lower(): v for k, v in peer.request.query.items() if k.lower() in wanted}
        for key, value in peer.request.headers:
            if key in wanted:
                given[key] = value
        return given

    def _execute_header(self, cls: HeaderBlock, name: str, arguments: Arguments, raw: str,
             peer: Peer) -> tuple[bool, str]:
        try:
            kwargs = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError: also a number too long
            raise Refusal(400, f"header {name}: value is not valid JSON") from None
        if not isinstance(kwargs, dict):
            raise Refusal(400, f"header {name}: value must be a JSON object of arguments")
        kwargs, problems = arguments.check(kwargs)
        if problems:
            raise Refusal(400, "; ".join(problems))
        db = self.router.db
        extra = {"ws": peer, "db": db, "sv": self.router.facade}
        for key in arguments.inject:
            kwargs[key] = extra[key]
        sent = len(peer.outbox)
        try:
            ok = run_header(cls, kwargs)
            reason = peer.errors_sent(sent) or "refused"
        except NotPermitted as exc:
            ok, reason = False, str(exc) or "not permitted"
        except CallError as exc:
            ok, reason = False, str(exc) or "refused"
        except Unavailable as exc:   # a replicated database without its stream: try later
            raise Refusal(503, f"header {name}: {exc}") from None
        finally:
            if db is not None:
                db.commit()
        return ok, reason


def _refusal_response(refusal: Refusal) -> HTTPResponse:
    """Return the JSON answer of a refusal, as a refused upgrade's body says it."""
    body = {"status": refusal.status, "error": http.REASONS.get(refusal.status, "Error"),
            "reason": refusal.reason, **refusal.body()}
    return HTTPResponse(refusal.status, body, _NO_STORE)
