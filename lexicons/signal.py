"""Signals: what clients may call by name, and the Response a signal returns.

A signal is a class with an ``execute`` method::

    class SendMessage(Signal):
        def execute(self, room: str, text: str, db, ws, sv):
            db.create(Message, room=room, text=text, author=ws.auth["user"])
            return Response({"room": room, "text": text}, channels=[Room(name=room)])

A client calls it with ``{"SendMessage": {"room": "x", "text": "hi"}}``. The
arguments are checked against ``execute``'s signature and annotations before
it runs (see :mod:`lexicons.arguments`). ``execute`` also receives, if it
names them (or takes ``**kwargs``):

``db``
    the database (None when no persister runs); the router commits it after
    ``execute`` returns and before anyone is answered.
``ws``
    the caller's connection: ``ws.auth`` (what the headers established),
    ``ws.channels``, ``ws.address``, ``ws.send(data)`` (a raw message).
``sv``
    the server: ``sv.publish(channels, name, payload)``,
    ``sv.subscribe(ws, channel)``, ``sv.unsubscribe(ws, channel)``,
    ``sv.settings``, ``sv.service(name)``; cluster events across the nodes of
    the backplane: ``sv.say(event, data)``, ``sv.subscribe(event, fn)`` (``fn(event,
    data)``, on the backplane's event thread), ``sv.unsubscribe(event, fn)``.

What ``execute`` returns:

* a :class:`Response` with channels: the payload is broadcast, as
  ``[{"SignalName": payload}]``, to every connection in those channels (each
  once); the caller additionally gets ``reply`` if one is given.
* ``self.response(payload, channels)``, as in the original API: the same
  broadcast; with no channels, nothing at all.
* anything else (or a Response without channels): a reply to the caller
  alone, ``[{"SignalName": value}]``. ``None`` sends nothing, unless the call
  carried an id (``"#"``): a call with an id always gets exactly one answer.

Raising :class:`lexicons.errors.CallError` (or its subclass ``NotPermitted``)
sends its message to the caller as an error; any other exception sends
``"SignalName failed"`` and logs the traceback. Either way the connection
stays usable.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from lexicons.wire.arguments import Arguments


class _Nothing:
    """The absence of a reply (None is a legitimate payload)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOTHING"

    def __bool__(self) -> bool:
        return False


NOTHING: Any = _Nothing()


def channel_names(channels: Any) -> tuple[str, ...]:
    """Normalise one channel or an iterable of them (str or Channel) to names."""
    if channels is None:
        return ()
    if isinstance(channels, str) or not isinstance(channels, Iterable):
        channels = (channels,)
    names: list[str] = []
    for channel in channels:
        # a Channel class without parameters names itself (``[Public]``)
        if isinstance(channel, type) and hasattr(channel, "template"):
            channel = channel()
        name = str(channel)
        if name not in names:
            names.append(name)
    return tuple(names)


class Response:
    """What a signal returns: a payload, the channels to broadcast it on, a private reply.

    ``Response(payload)``: reply to the caller alone.
    ``Response(payload, channels=["room:a", Room(name="b")])``: broadcast.
    ``Response(payload, channels, reply=x)``: broadcast, and ``x`` to the caller.
    ``name`` broadcasts under another name than the signal's.
    """

    __slots__ = ("payload", "channels", "reply", "name")

    def __init__(self, payload: Any = None, channels: Any = (), *, reply: Any = NOTHING,
                 name: str | None = None):
        self.payload = payload
        self.channels = channel_names(channels)
        self.reply = reply
        self.name = name

    def __repr__(self) -> str:
        return (f"Response({self.payload!r}, channels={list(self.channels)!r}"
                f"{'' if self.reply is NOTHING else f', reply={self.reply!r}'})")


class Signal:
    """Base class of the signals an application lets clients call (see the module doc)."""

    #: The name clients call it by (default: the class name).
    name: ClassVar[str | None] = None

    def permit(self, ws: Any, **kwargs: Any) -> bool:
        """Tell whether *ws* may make this call (False: the caller gets "not permitted")."""
        return True

    def execute(self, **kwargs: Any) -> Any:
        """Run the call; return a Response, a plain reply, or None."""
        raise NotImplementedError(f"{type(self).__name__} does not define execute()")

    def response(self, payload: Any, channels: Any = ()) -> Any:
        """Return *payload* as a broadcast on *channels* (the original API's way).

        ``return self.response(data, [Public])`` broadcasts ``[{"Name": data}]`` on
        those channels; with no channels nothing is broadcast and the caller gets
        no answer (``null`` to a call that carried an id).
        """
        names = channel_names(channels)
        if not names:
            return NOTHING
        return Response(payload, names)

    @classmethod
    def signal_name(cls) -> str:
        """Return the name clients use for this signal."""
        return cls.name or cls.__name__

    @classmethod
    def arguments(cls) -> Arguments:
        """Return the checked description of ``execute``'s arguments."""
        return Arguments(cls.execute, cls.signal_name())
