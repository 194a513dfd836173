"""Code written for an asyncio server, run on lexicons' threads.

lexicons runs application code (signals, headers, tasks) on plain threads. Code
written for the original, asyncio-based lexicons still works unchanged:

* an ``async def`` execute is awaited: :func:`resolve` runs the coroutine it
  returned to completion on an event loop of the calling thread;
* ``ws.send(...)`` returns an awaitable that is already done (:func:`completed`),
  so ``await ws.send(...)`` and ``asyncio.ensure_future(ws.send(...))`` work
  with or without a running event loop. The message itself is queued for the
  client at once, before ``send`` returns.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator
from typing import Any


class Done:
    """An asyncio-compatible future that is already done, usable without an event loop.

    ``asyncio.ensure_future`` returns a future as it is, without looking for a
    loop; ``await`` gets the result at once. Callbacks run at once when no loop
    runs in this thread, else soon on the running loop (as asyncio's own futures
    do).
    """

    _asyncio_future_blocking = False  # what asyncio.isfuture looks for
    __slots__ = ("_result",)

    def __init__(self, result: Any = None):
        self._result = result

    def __repr__(self) -> str:
        return f"<Done result={self._result!r}>"

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def cancel(self, msg: Any = None) -> bool:
        return False

    def result(self) -> Any:
        return self._result

    def exception(self) -> BaseException | None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def add_done_callback(self, fn: Callable[[Any], Any], *, context: Any = None) -> None:
        loop = self.get_loop()
        if loop is None:
            fn(self)
        else:
            loop.call_soon(fn, self, context=context)

    def remove_done_callback(self, fn: Callable[[Any], Any]) -> int:
        return 0

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result
        yield  # unreachable: makes this a generator that finishes at once

    __iter__ = __await__


def completed(result: Any = None) -> Any:
    """Return a done future holding *result*: the running loop's own kind when one runs."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return Done(result)
    future = loop.create_future()
    future.set_result(result)
    return future


def resolve(value: Any) -> Any:
    """Return *value*, or what it gives when awaited if it is a coroutine or awaitable.

    Runs on a new event loop of the calling thread (never one already running:
    lexicons' worker threads run none). Tasks the coroutine started and left
    running are cancelled when it returns.
    """
    if not inspect.isawaitable(value):
        return value
    return asyncio.run(_await(value))


async def _await(awaitable: Any) -> Any:
    return await awaitable
