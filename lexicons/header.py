"""Headers: credentials checked when a client connects, before any signal runs.

A Header class checks one credential and returns True or False::

    class Login(Header):
        def execute(self, user: str, password: str, ws, db) -> bool:
            if not password_ok(db, user, password):
                return False
            ws.auth["user"] = user          # stays on the connection
            return True

A client sends it on the upgrade request as an HTTP header whose value is a
JSON object of keyword arguments (``Login: {"user": "a", "password": "b"}``),
or, since browsers cannot set headers on a websocket, as a URL query
parameter (``/?Login={"user":"a","password":"b"}``, URL-encoded). The class
whose name matches, case-insensitively, runs with those arguments (checked
like a signal's). A header not sent counts as False. The application's
``gate`` function (default ``all``) combines the results, in declaration
order; a refused client gets ``401`` with a JSON body naming what failed.

``execute`` may also take ``ws`` (the connecting client: ``ws.auth``,
``ws.address``, ``ws.request``; what it sets there stays on the connection),
``db`` and ``sv``, as a signal does. Raising ``NotPermitted("why")`` refuses
with that reason. Header code may block: it runs on a small pool, never on
the thread accepting connections.
"""
from __future__ import annotations

from typing import Any, ClassVar

from .arguments import Arguments


class Header:
    """Base class of an application's headers (see the module doc)."""

    #: The HTTP header / query parameter name (default: the class name), any case.
    name: ClassVar[str | None] = None

    def execute(self, **kwargs: Any) -> bool:
        """Check the credential; True admits."""
        raise NotImplementedError(f"{type(self).__name__} does not define execute()")

    @classmethod
    def header_name(cls) -> str:
        """Return the header's name as clients send it."""
        return cls.name or cls.__name__

    @classmethod
    def arguments(cls) -> Arguments:
        """Return the checked description of ``execute``'s arguments."""
        return Arguments(cls.execute, f"header {cls.header_name()}")
