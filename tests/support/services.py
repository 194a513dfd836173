"""Services used by the tests to exercise supervision: they fail, hang or count on demand.

Each one answers a control command, so an end-to-end test can make the real
daemon's service fail without reaching into the process.
"""
from __future__ import annotations

import threading
from typing import Any

from lexicons.daemon.service import Service


class Counter(Service):
    """Runs quietly and counts its runs; the service every test can lean on."""

    name = "counter"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.runs = 0
        self.setups = 0
        self.teardowns = 0

    def setup(self) -> None:
        self.setups += 1

    def main(self) -> None:
        self.runs += 1
        while not self.stopping.wait(0.05):
            pass

    def teardown(self) -> None:
        self.teardowns += 1

    def info(self) -> dict[str, Any]:
        return {"runs": self.runs}


class Flaky(Service):
    """Raises when told to (`crash` control command, or `crash()`); else runs."""

    name = "flaky"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.runs = 0
        self.crash_next = threading.Event()
        self.always_crash = False

    def main(self) -> None:
        self.runs += 1
        while not self.stopping.wait(0.02):
            if self.always_crash or self.crash_next.is_set():
                self.crash_next.clear()
                raise RuntimeError("flaky failed on purpose")

    def crash(self, always: bool = False) -> None:
        self.always_crash = always
        self.crash_next.set()

    def info(self) -> dict[str, Any]:
        return {"runs": self.runs}

    def commands(self) -> dict[str, Any]:
        return {"crash": lambda request: self.crash(bool(request.get("always"))) or "crashing"}


class Hanging(Service):
    """Beats its heartbeat until told to hang (`hang` command), then stops beating."""

    name = "hanging"
    heartbeat_timeout = 0.5

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hang = threading.Event()

    def main(self) -> None:
        while not self.stopping.wait(0.05):
            if not self.hang.is_set():
                self.beat()

    def commands(self) -> dict[str, Any]:
        def hang(request: dict) -> str:
            self.hang.set()
            return "hanging"

        def resume(request: dict) -> str:
            self.hang.clear()
            return "beating"

        return {"hang": hang, "resume": resume}


class FailsSetup(Service):
    """Cannot set up: start-up must fail naming it."""

    name = "failssetup"

    def setup(self) -> None:
        raise OSError("port already in use (on purpose)")
