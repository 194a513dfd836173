"""The application the cluster benchmarks run: one channel, one signal that broadcasts on it."""
from __future__ import annotations

from typing import Any

from lexicons.channel import Channel
from lexicons.signal import Response, Signal


class Bench(Channel):
    """The channel every subscriber joins."""

    name = "bench"


class Publish(Signal):
    """Broadcast *data* on *channel*; the caller gets no reply."""

    def execute(self, channel: str, data: str) -> Any:
        return Response(data, channels=[channel])


channels = [Bench]
signals = [Publish]
