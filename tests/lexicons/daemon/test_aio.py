"""Code written for an asyncio server on lexicons' threads: done futures and awaiting."""
import asyncio
import threading

from lexicons.daemon import aio


def test_ensure_future_of_a_done_future_needs_no_event_loop():
    """asyncio.ensure_future(ws.send(...)) works on a thread that runs no event loop."""
    results = []

    def thread():
        sent = aio.completed()
        results.append(asyncio.ensure_future(sent) is sent)
        results.append(sent.done() and sent.result() is None)
        called = []
        sent.add_done_callback(called.append)
        results.append(called == [sent])

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join(5)
    assert results == [True, True, True]


def test_done_futures_work_inside_a_running_loop():
    """Inside a loop a done future can be awaited, gathered and wrapped."""
    async def main():
        outside = aio.Done("x")
        inside = aio.completed("y")
        assert isinstance(inside, asyncio.Future)
        return [await outside, await inside,
                *await asyncio.gather(aio.Done(1), asyncio.ensure_future(aio.Done(2)))]

    assert asyncio.run(main()) == ["x", "y", 1, 2]


def test_resolve_awaits_coroutines_and_passes_other_values():
    """resolve runs a coroutine to its end on this thread; other values come back as given."""
    async def twice(n):
        await asyncio.sleep(0)
        return n * 2

    assert aio.resolve(twice(21)) == 42
    marker = object()
    assert aio.resolve(marker) is marker
