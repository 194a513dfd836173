"""Serve the benchmark signals with websockets' threaded server (a peer for bench/).

One thread per connection (websockets.sync.server). Fan-out loops over the channel's
connections calling ``send()``; each connection's own lock serialises its writes.
(``websockets.sync.server.broadcast()`` starts a thread pool for every call, which is
slower still for small messages.)

    python bench/peers/ws_threaded.py --port 5000
"""
from __future__ import annotations

import argparse
import signal
import threading

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve
from wire import Broadcast, Join, Leave, Reply, handle

channels: dict[str, set[ServerConnection]] = {}
channels_lock = threading.Lock()


def fan_out(name: str, text: str) -> None:
    """Send ``text`` to every member of channel ``name``; skip connections that closed."""
    with channels_lock:
        members = list(channels.get(name, ()))
    for ws in members:
        try:
            ws.send(text)
        except ConnectionClosed:
            pass


def session(ws: ServerConnection) -> None:
    """Run one connection: decode each message, then reply, join, leave or broadcast."""
    joined: set[str] = set()
    try:
        for message in ws:
            for action in handle(message):
                if isinstance(action, Reply):
                    ws.send(action.text)
                elif isinstance(action, Broadcast):
                    fan_out(action.channel, action.text)
                elif isinstance(action, Join):
                    with channels_lock:
                        channels.setdefault(action.channel, set()).add(ws)
                    joined.add(action.channel)
                elif isinstance(action, Leave):
                    with channels_lock:
                        channels.get(action.channel, set()).discard(ws)
                    joined.discard(action.channel)
    except ConnectionClosed:
        pass
    finally:
        with channels_lock:
            for name in joined:
                channels.get(name, set()).discard(ws)


def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    with serve(session, host, port) as server:
        def shutdown(signum: int, frame: object) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)
        server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    main(args.host, args.port)
