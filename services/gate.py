"""The gate service: who may connect (trust list, headers) and who they are.

The listener hands the gate each checked upgrade request for ``/``. The gate
decides on a small pool of threads (``HANDSHAKE_WORKERS``), since header code
is user code and may block: it runs the application's Header classes against
the request's headers and query parameters, combines their results with the
application's ``gate`` function, and either refuses (401 with a JSON body
saying what failed, 400 for a header that is not a JSON object) or completes
the upgrade and hands the connection to the router. What the headers
established stays on the connection (``ws.auth`` and whatever they set).

The trust list (``TRUST``: addresses, networks, ``*``) is checked by the
listener, through :meth:`GateService.trusted`, as soon as a client connects.
"""
from __future__ import annotations

import json
from typing import Any

from lexicons import http
from lexicons.arguments import Arguments
from lexicons.connection import Peer
from lexicons.errors import CallError, NotPermitted, ServiceError
from lexicons.events import Request
from lexicons.header import Header
from lexicons.pool import Pool
from lexicons.service import Service
from lexicons.trust import TrustList
from services.listener import HTTPResponse

#: The plain HTTP path that tells a client why its headers would be refused.
CHECK_PATH = "/gate"


class Refusal(Exception):
    """A client the gate refuses, with the HTTP status and the reason it is told."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class GateService(Service):
    """Admit or refuse websocket clients of the native protocol (see the module doc)."""

    name = "gate"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.headers: list[tuple[type[Header], str, Arguments]] = []
        self.pool = Pool("gate", self.settings.HANDSHAKE_WORKERS, 1024)
        self.router: Any = None
        self.admitted = 0
        self.refused = 0
        self._trust: tuple[list[str], TrustList] | None = None

    def setup(self) -> None:
        self.trust_list()  # a bad TRUST stops start-up with the setting's name
        for cls in self.manager.app.headers:
            if not (isinstance(cls, type) and issubclass(cls, Header)):
                raise ServiceError(f"headers: {cls!r} is not a Header subclass")
            self.headers.append((cls, cls.header_name().lower(), cls.arguments()))
        if not self.manager.has_service("router"):
            raise ServiceError("the gate needs the router service (services.router)")
        self.router = self.manager.get_service("router")
        if self.manager.has_service("listener"):
            listener = self.manager.get_service("listener")
            listener.websocket("/", self)
            listener.route(CHECK_PATH, self.explain)
        self.pool.start()

    def teardown(self) -> None:
        self.pool.stop()

    def info(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "refused": self.refused,
                "headers": [cls.header_name() for cls, _, _ in self.headers],
                "trust": list(self.settings.TRUST), "waiting": len(self.pool)}

    # --- trust --------------------------------------------------------------------------

    def trust_list(self) -> TrustList:
        """Return the parsed TRUST setting (re-parsed when a reload changes it)."""
        entries = self.settings.TRUST
        if self._trust is None or self._trust[0] is not entries:
            self._trust = (entries, TrustList(entries))
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
            self.check(peer)
        except Refusal as refusal:
            self.refused += 1
            self.log.info("refused %s: %d %s", admission.ip, refusal.status, refusal.reason)
            admission.refuse(refusal.status, refusal.reason)
            return
        except Exception:
            self.refused += 1
            self.log.exception("checking the headers of %s failed", admission.ip)
            admission.refuse(500, "the server failed to check the headers")
            return
        if admission.upgrade(self.router, peer) is not None:
            self.admitted += 1

    def check(self, peer: Peer) -> None:
        """Run the headers for *peer*; raise Refusal unless the gate admits it."""
        if not self.headers:
            return
        given = self._given(peer)
        results: list[bool] = []
        reasons: list[str] = []
        for cls, key, arguments in self.headers:
            name = cls.header_name()
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
            raise Refusal(401, "; ".join(reasons) or "refused")

    def explain(self, request: Request) -> HTTPResponse:
        """Answer ``GET /gate?Header=...`` with what a connect with those headers would get.

        Browsers hide the body of a refused websocket upgrade from scripts (the
        socket just closes with code 1006), so a page asks here, with the same
        query, to learn why: 200 ``{"admitted": true}``, or the refusal's status
        with the JSON body the upgrade got. The headers run as for a connect
        (their side effects included), so ask only after a refused connect.
        """
        try:
            self.check(Peer(None, request))
        except Refusal as refusal:
            body = {"status": refusal.status, "error": http.REASONS.get(refusal.status, "Error"),
                    "reason": refusal.reason}
            return HTTPResponse(refusal.status, body, (("Cache-Control", "no-store"),))
        return HTTPResponse(200, {"admitted": True}, (("Cache-Control", "no-store"),))

    def _given(self, peer: Peer) -> dict[str, str]:
        """Return the raw values of the headers the client sent (headers win over query)."""
        wanted = {key for _, key, _ in self.headers}
        given = {k.lower(): v for k, v in peer.request.query.items() if k.lower() in wanted}
        for key, value in peer.request.headers:
            if key in wanted:
                given[key] = value
        return given

    def _execute_header(self, cls: type[Header], name: str, arguments: Arguments, raw: str,
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
        try:
            ok = bool(cls().execute(**kwargs))
            reason = "refused"
        except NotPermitted as exc:
            ok, reason = False, str(exc) or "not permitted"
        except CallError as exc:
            ok, reason = False, str(exc) or "refused"
        finally:
            if db is not None:
                db.commit()
        return ok, reason
