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

A header may also be a plain function, as in the original API ("headers is a
list of functions"): it is named by its ``__name__``, takes the same
arguments as ``execute`` (often just ``**kwargs``: the client's values plus
``ws``, ``db`` and ``sv``) and returns a bool. ``ws.auth`` may be given any
value (``ws.auth = user.pk``). Either kind may be ``async def``: it is awaited.

``ws.send(data)`` during the check queues a message for the client (str as
text, bytes as binary) and returns an awaitable that is already done, so
``asyncio.ensure_future(ws.send(orjson.dumps([{"Errors": ["Authentication
failed"]}])))`` works as written. An admitted client gets those messages
first; a refused one gets them in the refusal's JSON body (``"messages"``),
and the texts of an ``Errors`` message become that header's reason.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from lexicons.daemon.aio import resolve
from lexicons.wire.arguments import Arguments


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


#: What an application may list as a header: a Header class or a plain function.
HeaderBlock = type[Header] | Callable[..., Any]


def is_header(block: Any) -> bool:
    """Tell whether *block* can be a header: a Header subclass or a plain function."""
    if isinstance(block, type):
        return issubclass(block, Header)
    return callable(block) and hasattr(block, "__name__")


def header_name(block: HeaderBlock) -> str:
    """Return the name clients send a header block under."""
    if isinstance(block, type):
        return block.header_name()
    return getattr(block, "name", None) or block.__name__


def header_arguments(block: HeaderBlock) -> Arguments:
    """Return the checked description of a header block's arguments."""
    if isinstance(block, type):
        return block.arguments()
    return Arguments(block, f"header {header_name(block)}")


def run_header(block: HeaderBlock, kwargs: dict[str, Any]) -> bool:
    """Run a header block with checked *kwargs*; return its verdict (awaited if async)."""
    call = block().execute if isinstance(block, type) else block
    return bool(resolve(call(**kwargs)))
