"""Channels: named groups of connections that receive broadcasts.

A Channel class declares a name, plain or with parameters, and who may join::

    class Public(Channel):
        name = "public"

    class Room(Channel):
        name = "room:{name}"            # room:lobby, room:42, ...

        def permit(self, ws, name):     # called on subscribe, with the parameters
            return name in ws.auth.get("rooms", ())

A client joins with the built-in signal ``{"Subscribe": {"channel": "room:lobby"}}``
and leaves with ``{"Unsubscribe": {"channel": "room:lobby"}}``. Signals name
channels as strings or instances: ``Response(data, channels=[Room(name="lobby")])``.

The default :meth:`Channel.permit` lets anyone in, unless the connection's
headers granted it a list of channel patterns in ``ws.auth["channels"]``:
then the channel name must match one of them, where ``*`` matches any run of
characters (``"room:*"``, ``"*"``). A parameter value matches ``[^:]+``.
``ws.auth`` may hold any value a header put there (``ws.auth = user.pk``); only
a mapping can grant patterns, anything else lets the connection in.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from lexicons.errors import CallError, NotPermitted, SettingsError
from lexicons.signal import Signal

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a permission pattern where ``*`` matches any run of characters."""
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$",
                      re.DOTALL)


def matches(pattern: str, name: str) -> bool:
    """Tell whether channel *name* matches *pattern* (``*`` matches anything)."""
    if "*" not in pattern:
        return pattern == name
    return pattern_regex(pattern).match(name) is not None


class Channel:
    """Base class of an application's channels (see the module doc)."""

    #: The channel's name, with ``{param}`` placeholders (default: the class name).
    name: ClassVar[str | None] = None
    #: Publications kept so a client that reconnects gets what it missed (0: none kept).
    history_size: ClassVar[int] = 0
    #: Seconds a kept publication lives.
    history_ttl: ClassVar[float] = 300.0
    #: With the memory backplane: save the history in DATA_DIR at stop, load it at start.
    history_persist: ClassVar[bool] = False
    #: Track who is in the channel (``Presence`` call, join and leave broadcasts).
    presence: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params = {k: str(v) for k, v in params.items()}

    def __str__(self) -> str:
        try:
            return self.template().format(**self.params)
        except KeyError as exc:
            raise CallError(f"channel {type(self).__name__} needs parameter {exc.args[0]!r}"
                            ) from None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def permit(self, ws: Any, **params: str) -> bool:
        """Tell whether connection *ws* may join this channel (see the module doc)."""
        auth = getattr(ws, "auth", None)
        # ws.auth holds whatever the headers put there (a dict, a user's pk, ...);
        # only a mapping can grant channel patterns
        grants = auth.get("channels") if isinstance(auth, Mapping) else None
        if grants is None:
            return True
        if isinstance(grants, str):
            grants = (grants,)
        name = str(self)
        return any(matches(str(p), name) for p in grants)

    @classmethod
    def template(cls) -> str:
        """Return the name template (``room:{name}``)."""
        return cls.name or cls.__name__


class ChannelSet:
    """The application's Channel classes, resolving a channel name to its class."""

    def __init__(self, classes: Iterable[type[Channel]]):
        self.exact: dict[str, type[Channel]] = {}
        self.templates: list[tuple[re.Pattern[str], type[Channel]]] = []
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Channel)):
                raise SettingsError(f"channels: {cls!r} is not a Channel subclass")
            template = cls.template()
            if _PARAM.search(template):
                parts = _PARAM.split(template)
                regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^:]+)"
                                for i, p in enumerate(parts))
                self.templates.append((re.compile(f"^{regex}$"), cls))
            else:
                self.exact[template] = cls

    def __bool__(self) -> bool:
        return bool(self.exact or self.templates)

    def resolve(self, name: str) -> Channel:
        """Return the Channel instance a name designates; CallError if none matches."""
        cls = self.exact.get(name)
        if cls is not None:
            return cls()
        for regex, cls in self.templates:
            m = regex.match(name)
            if m is not None:
                return cls(**m.groupdict())
        raise CallError(f"unknown channel {name[:100]!r}")

    def check(self, ws: Any, name: str) -> Channel:
        """Resolve *name* and ask its permit hook; NotPermitted if it says no."""
        channel = self.resolve(name)
        if not channel.permit(ws, **channel.params):
            raise NotPermitted(f"not permitted to subscribe to {name[:100]!r}")
        return channel


class Subscribe(Signal):
    """Built-in: join a channel (its permit hook decides).

    Answers the channel's name; for a channel with history, its position
    ``{"channel", "offset", "epoch"}``, and with ``recover`` (the position of the
    last publication the client saw) also ``recovered`` and ``missed``, after
    sending the missed publications.
    """

    def execute(self, channel: str, ws: Any, sv: Any, recover: Any = None) -> Any:
        answer = sv.subscribe(ws, channel, check=True, recover=recover)
        return channel if answer is None else answer


class Presence(Signal):
    """Built-in: who is in a presence channel, ``{"channel", "count", "members"}``.

    Allowed to whoever the channel's permit hook would let subscribe.
    """

    def execute(self, channel: str, ws: Any, sv: Any) -> Any:
        sv.service("rooms").channels.check(ws, channel)
        return sv.presence(channel)


class Unsubscribe(Signal):
    """Built-in: leave a channel (leaving one not joined is not an error)."""

    def execute(self, channel: str, ws: Any, sv: Any) -> str:
        sv.unsubscribe(ws, channel)
        return channel
