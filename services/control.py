"""The control service: the daemon's UNIX socket for ``lexiconsd stop|status|restart``.

One thread serves every client with a selector. The socket file is created
with mode 0600 and every connecting peer's uid is checked (SO_PEERCRED): only
the daemon's own user (or root) is served. A client that sends garbage gets an
error reply and is disconnected; nothing a client sends can stop the service.

The operator always gets in: a request line must be complete within
``REQUEST_DEADLINE`` seconds of its first byte (else an error reply and the
connection is closed), and when ``MAX_CLIENTS`` are connected the client idle
the longest makes room for the new one. So clients that connect and send half
a line, or nothing, cannot hold the socket.
"""
from __future__ import annotations

import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from lexicons.daemon import control
from lexicons.daemon.service import Service
from lexicons.errors import LexiconsError, ProtocolError, ServiceError

#: Seconds a client may stay connected without sending anything.
CLIENT_IDLE = 30.0
#: Seconds from the first byte of a request line to its end.
REQUEST_DEADLINE = 2.0
MAX_CLIENTS = 64


class _Client:
    __slots__ = ("sock", "inbox", "outbox", "seen", "started", "closing")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.seen = time.monotonic()
        self.started = 0.0  # when the first byte of the unfinished line in inbox came
        self.closing = False


class ControlService(Service):
    """Serve control commands on ``CONTROL_SOCKET``."""

    name = "control"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.path = self.settings.CONTROL_SOCKET
        self.listener: socket.socket | None = None
        self._inode: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self.served = 0
        self.refused = 0
        self.dropped = 0  # clients cut off: a line too slow, or idle when room was needed

    # --- lifecycle -------------------------------------------------------------------

    def setup(self) -> None:
        self._remove_stale()
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the file is born 0600: no window where others can connect
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ServiceError(f"cannot bind control socket {self.path}: "
                               f"{exc.strerror or exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        self._inode = os.stat(self.path).st_ino
        self.listener = sock
        self.log.info("control socket at %s", self.path)

    def _remove_stale(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ServiceError(f"CONTROL_SOCKET {self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # left by a daemon that was killed
            self.log.warning("removed stale control socket %s", self.path)
        else:
            raise ServiceError(f"another daemon answers on {self.path}")
        finally:
            probe.close()

    def interrupt(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def teardown(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._wake_r.close()
        self._wake_w.close()

    def info(self) -> dict[str, Any]:
        return {"socket": self.path, "served": self.served, "refused": self.refused,
                "dropped": self.dropped}

    # --- the loop --------------------------------------------------------------------

    def main(self) -> None:
        assert self.listener is not None
        clients: dict[socket.socket, _Client] = {}
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ, None)
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            try:
                while not self.stopping.is_set():
                    for key, mask in sel.select(self._tick(clients)):
                        if key.data == "wake":
                            self._wake_r.recv(64)
                        elif key.data is None:
                            self._accept(sel, clients)
                        else:
                            self._serve(sel, clients, key.data, mask)
                    self._expire(sel, clients)
            finally:
                for client in list(clients.values()):
                    self._drop(sel, clients, client)

    def _accept(self, sel: selectors.BaseSelector, clients: dict) -> None:
        while True:  # take every pending connection: a full backlog refuses clients
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("control accept failed: %s", exc)
                return
            self._admit(sel, clients, sock)

    def _admit(self, sel: selectors.BaseSelector, clients: dict, sock: socket.socket) -> None:
        sock.setblocking(False)
        client = _Client(sock)
        if len(clients) >= MAX_CLIENTS and not self._make_room(sel, clients):
            self.refused += 1
            self._send_now(sock, control.reply_error("too many control clients"))
            sock.close()
            return
        if not self._peer_allowed(sock):
            self.refused += 1
            self._send_now(sock, control.reply_error("permission denied"))
            sock.close()
            return
        clients[sock] = client
        sel.register(sock, selectors.EVENT_READ, client)

    def _make_room(self, sel: selectors.BaseSelector, clients: dict) -> bool:
        """Drop the client idle the longest (not one being answered); False if none is."""
        idle = [c for c in clients.values() if not c.outbox and not c.closing]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.seen)
        self.dropped += 1
        self._send_now(oldest.sock, control.reply_error(
            "too many control clients: the longest idle one is dropped"))
        self._drop(sel, clients, oldest)
        return True

    def _peer_allowed(self, sock: socket.socket) -> bool:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid in (os.getuid(), 0):
            return True
        self.log.warning("refused control client with uid %d", uid)
        return False

    @staticmethod
    def _send_now(sock: socket.socket, message: dict) -> None:
        try:
            sock.send(control.encode(message))
        except OSError:
            pass

    def _serve(self, sel: selectors.BaseSelector, clients: dict, client: _Client,
               mask: int) -> None:
        client.seen = time.monotonic()
        if mask & selectors.EVENT_READ and not client.closing:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop(sel, clients, client)
                return
            if data:
                if not client.inbox:
                    client.started = client.seen
                client.inbox += data
                self._handle_lines(client)
                if client.inbox and b"\n" in data:  # a new line began after the last one
                    client.started = client.seen
        if mask & selectors.EVENT_WRITE or client.outbox:
            self._flush(sel, clients, client)

    def _handle_lines(self, client: _Client) -> None:
        while b"\n" in client.inbox and not client.closing:
            line, client.inbox = client.inbox.split(b"\n", 1)
            if line.strip():
                client.outbox += control.encode(self._answer(line))
        if len(client.inbox) > control.MAX_LINE:
            client.outbox += control.encode(control.reply_error(
                f"request longer than {control.MAX_LINE} bytes"))
            client.inbox = b""
            client.closing = True

    def _flush(self, sel: selectors.BaseSelector, clients: dict, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
            client.outbox = client.outbox[sent:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(sel, clients, client)
            return
        if not client.outbox and client.closing:
            self._drop(sel, clients, client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        sel.modify(client.sock, events, client)

    def _expire(self, sel: selectors.BaseSelector, clients: dict) -> None:
        now = time.monotonic()
        for client in list(clients.values()):
            if client.inbox and not client.closing and now - client.started > REQUEST_DEADLINE:
                self.dropped += 1
                self._send_now(client.sock, control.reply_error(
                    f"request line not finished within {REQUEST_DEADLINE:g} s"))
                self._drop(sel, clients, client)
            elif now - client.seen > CLIENT_IDLE:
                self._drop(sel, clients, client)

    @staticmethod
    def _tick(clients: dict) -> float:
        """Return how long the loop may wait: until the next request deadline, 1 s at most."""
        now = time.monotonic()
        waits = [client.started + REQUEST_DEADLINE - now
                 for client in clients.values() if client.inbox]
        return max(0.01, min([1.0, *waits]))

    @staticmethod
    def _drop(sel: selectors.BaseSelector, clients: dict, client: _Client) -> None:
        clients.pop(client.sock, None)
        try:
            sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    # --- commands --------------------------------------------------------------------

    def _answer(self, line: bytes) -> dict[str, Any]:
        """Run one request line and return the reply; never raises."""
        try:
            request = control.decode_request(line)
            handler = self._commands().get(request["command"])
            if handler is None:
                known = ", ".join(sorted(self._commands()))
                raise ProtocolError(f"unknown command {request['command']!r}; known: {known}")
            result = handler(request)
        except LexiconsError as exc:
            return control.reply_error(str(exc))
        except Exception as exc:  # a command's failure is reported, never fatal to the service
            self.log.exception("control command failed")
            return control.reply_error(f"command failed: {type(exc).__name__}")
        self.served += 1
        return control.reply_ok(result)

    def _commands(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda request: "pong",
            "status": lambda request: self.manager.status(),
            "stop": self._stop,
            "restart": self._restart,
            "reload": self._reload,
        }
        commands.update(self.manager.commands())
        commands["help"] = lambda request: sorted(commands)
        return commands

    def _stop(self, request: dict[str, Any]) -> str:
        controller = self.manager.controller
        if controller is None:
            raise ServiceError("this daemon was not started by a bootstrap; it cannot stop itself")
        controller.request_stop("asked on the control socket")
        return "stopping"

    def _restart(self, request: dict[str, Any]) -> Any:
        name = request.get("service")
        if not isinstance(name, str) or not name:
            raise ProtocolError("restart needs a 'service' name")
        if name == self.name:
            raise ServiceError("the control service cannot restart itself")
        return self.manager.restart(name)

    def _reload(self, request: dict[str, Any]) -> Any:
        controller = self.manager.controller
        if controller is None:
            raise ServiceError("this daemon was not started by a bootstrap; nothing to reload")
        return controller.reload()
