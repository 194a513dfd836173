"""A small application for cluster tests: a public channel and a signal that broadcasts on it."""
from __future__ import annotations

from typing import Any

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.signal import Response, Signal


class News(Channel):
    """Anyone may join."""

    name = "news"


class Sport(Channel):
    """Anyone may join."""

    name = "sport"


class Both(Signal):
    """Broadcast *n* on news and sport at once."""

    def execute(self, n: int) -> Any:
        return Response(n, channels=["news", "sport"])


class Shout(Signal):
    """Broadcast ``{"origin": origin, "n": n}`` on news."""

    def execute(self, origin: str, n: int) -> Any:
        return Response({"origin": origin, "n": n}, channels=["news"])


class Announce(Signal):
    """Say cluster event "announce" with *text*."""

    def execute(self, text: str, sv: Any) -> Any:
        sv.say("announce", {"text": text})
        return "said"


class Listen(Signal):
    """Forward every "announce" cluster event to the caller as ``[{"Announced": data}]``."""

    def execute(self, ws: Any, sv: Any) -> Any:
        def forward(event: str, data: Any) -> None:
            sv.send(ws, "Announced", data)

        sv.subscribe("announce", forward)
        return "listening"


def application() -> Application:
    """Return the application (fresh for each node)."""
    return Application(name="clusterapp", channels=[News, Sport],
                       signals=[Shout, Both, Announce, Listen])
