"""A small bounded pool of threads for work that may block (header checks, HTTP routes).

``submit`` never blocks: when the queue is full it returns False and the
caller refuses the work (the listener answers 503), so a burst of slow
header checks cannot stall the acceptor or grow memory without bound.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lexicons.pool")

_STOP = object()


class Pool:
    """*workers* threads taking jobs from a queue of at most *queue_limit*."""

    def __init__(self, name: str, workers: int, queue_limit: int = 1024):
        self.name = name
        self.workers = workers
        self._queue: queue.Queue[Any] = queue.Queue(queue_limit)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads (again after stop)."""
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"lexicons-{self.name}-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)``; False (nothing queued) when the queue is full."""
        try:
            self._queue.put_nowait((fn, args))
        except queue.Full:
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Let queued jobs finish, then end the threads (each waited for up to *timeout*)."""
        for _ in self._threads:
            self._queue.put((_STOP, ()))
        for thread in self._threads:
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def __len__(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            fn, args = self._queue.get()
            if fn is _STOP:
                return
            try:
                fn(*args)
            except Exception:
                log.exception("%s: job failed", self.name)
