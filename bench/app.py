"""The application the benchmarks run against lexicons.

Signals (native protocol, text frames of JSON):

* ``{"Echo": {"data": <any>}}`` -> the caller alone gets ``[{"Echo": <data>}]``
* ``{"Subscribe": {"channel": "bench"}}`` -> ``[{"Subscribe": "bench"}]``; from then on
  the connection receives the broadcasts on ``bench``
* ``{"Publish": {"channel": "bench", "data": <any>}}`` -> every connection subscribed to
  ``bench`` gets ``[{"Publish": <data>}]``; the publisher gets nothing back (add
  ``"#": <id>`` to the call to get ``[{"Publish": null, "#": <id>}]`` after the broadcast)

Run it in the foreground::

    python bench/app.py run --port 5000 [--host 127.0.0.1]

It listens without permessage-deflate, sends no pings and logs to standard error at
WARNING; ``LEXICONS_<NAME>`` variables change any setting (``LEXICONS_CONTROL_SOCKET``
to reach it with ``lexiconsd status``).
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lexicons import Channel, Response, Server, Signal  # noqa: E402


class Echo(Signal):
    """Answer the caller alone with what it sent."""

    def execute(self, data):
        return data


class Publish(Signal):
    """Broadcast *data* to every connection in *channel*."""

    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class Bench(Channel):
    """The channel the fan-out benchmark subscribes to (BENCH_HISTORY: publications kept)."""

    name = "bench"
    history_size = int(os.environ.get("BENCH_HISTORY") or 0)


_run_dir = tempfile.mkdtemp(prefix="lexicons-bench-")

#: Defaults of the benchmark runs; a LEXICONS_<NAME> variable replaces any of them.
DEFAULTS = {
    "SERVICE_LIST": ["services.control/ControlService", "services.rooms/RoomsService",
                     "services.router/RouterService", "services.gate/GateService",
                     "services.listener/ListenerService"],
    "LOCK_FILE": os.path.join(_run_dir, "bench.pid"),
    "CONTROL_SOCKET": os.path.join(_run_dir, "bench.sock"),
    "DATA_DIR": os.path.join(_run_dir, "data"),
    "LOG_PATH": "-",
    "LOG_LEVEL": "WARNING",
    "PING_INTERVAL": 0.0,
}

server = Server(
    protocol="ws", signals=[Echo, Publish], channels=[Bench],
    settings={name: value for name, value in DEFAULTS.items()
              if "LEXICONS_" + name not in os.environ},
)

if __name__ == "__main__":
    sys.exit(server.run())
