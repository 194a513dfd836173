"""systemd notifications (sd_notify) without libsystemd: READY, STOPPING, WATCHDOG, STATUS."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("lexicons.notify")


class Notifier:
    """Send service notifications to ``NOTIFY_SOCKET`` when systemd (or a test) set it."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # systemd's advice: notify at half the interval
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """Send one notification; False (logged at debug) if it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("notify %r failed: %s", message, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd start-up is complete."""
        extra = f"\nSTATUS={status}" if status else ""
        return self.send(f"READY=1\nMAINPID={os.getpid()}{extra}")

    def stopping(self) -> bool:
        """Tell systemd the daemon is stopping."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """Feed systemd's watchdog."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the one-line status systemctl shows."""
        return self.send(f"STATUS={text}")
