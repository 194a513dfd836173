"""Serve the benchmark signals with websockets' asyncio server (a peer for bench/).

Fan-out uses ``websockets.asyncio.server.broadcast()``, which frames the message once
per connection and writes it without awaiting, as that library's documentation advises.

    python bench/peers/ws_asyncio.py --port 5000
"""
from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve
from wire import Broadcast, Join, Leave, Reply, handle

channels: dict[str, set[ServerConnection]] = {}


async def session(ws: ServerConnection) -> None:
    """Run one connection: decode each message, then reply, join, leave or broadcast."""
    joined: set[str] = set()
    try:
        async for message in ws:
            for action in handle(message):
                if isinstance(action, Reply):
                    await ws.send(action.text)
                elif isinstance(action, Broadcast):
                    broadcast(channels.get(action.channel, ()), action.text)
                elif isinstance(action, Join):
                    channels.setdefault(action.channel, set()).add(ws)
                    joined.add(action.channel)
                elif isinstance(action, Leave):
                    channels.get(action.channel, set()).discard(ws)
                    joined.discard(action.channel)
    finally:
        for name in joined:
            channels.get(name, set()).discard(ws)


async def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with serve(session, host, port, backlog=1024):
        try:
            await stop
        except asyncio.CancelledError:
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
