"""zephserver-style services for the manager's tests (a class with main and disable)."""
import threading


class Steady:
    """Runs until disabled."""

    def __init__(self):
        self._stop = threading.Event()
        self.runs = 0
        self.disabled = 0

    def main(self):
        self.runs += 1
        self._stop.clear()
        self._stop.wait()

    def disable(self):
        self.disabled += 1
        self._stop.set()


class DiesFirst(Steady):
    """Its first main() raises; later ones run until disabled."""

    def main(self):
        if self.runs == 0:
            self.runs += 1
            raise RuntimeError("first run dies")
        super().main()


class AlwaysDies(Steady):
    def main(self):
        self.runs += 1
        raise RuntimeError("always dies")
