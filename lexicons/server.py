"""The in-code API: declare an application and run it from a script.

::

    from lexicons import Server, SignalManager, ChannelManager, Signal, Response
    server = Server(protocol="ws", host="0.0.0.0", port=5000,
                    models=ModelManager(User), signals=SignalManager(Echo),
                    channels=ChannelManager(Public), headers=HeaderManager(Login),
                    tasks=TaskManager(Prune), data="data/", trust=["*"])

    if __name__ == "__main__":
        server.run()           # `python main.py run [--host H] [--port P] [--settings F]`

``server.run()`` runs the daemon's services in the foreground (through the
Bootstrap) when the command line says ``run``, and prints its usage
otherwise. ``server.serve()`` runs unconditionally; ``server.start()`` /
``server.stop()`` (or ``with server:``) run it in the background of another
program. A settings file (``--settings`` or ``LEXICONS_SETTINGS``) and
``LEXICONS_<NAME>`` variables apply as for ``lexiconsd``; the arguments given
to ``Server(...)`` take precedence over both.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lexicons.daemon import settings as settings_mod
from lexicons.daemon.application import Application
from lexicons.daemon.bootstrap import Bootstrap
from lexicons.daemon.manager import ServiceManager
from lexicons.errors import SettingsError

_UNSET: Any = object()


class Server:
    """One application and the settings to serve it with (see the module doc)."""

    def __init__(self, protocol: str = "ws", host: str = _UNSET, port: int = _UNSET,
                 models: Iterable[type] = (), signals: Iterable[type] = (),
                 tasks: Iterable[type] = (), headers: Iterable[type] = (),
                 channels: Iterable[type] = (), data: str = _UNSET,
                 trust: Iterable[str] = _UNSET,
                 gate: Callable[[Iterable[bool]], bool] | None = None,
                 static_dir: str = "", settings: Mapping[str, Any] | None = None,
                 name: str = "server"):
        if protocol not in ("ws", "wss"):
            raise SettingsError(f"Server: protocol must be 'ws' or 'wss', not {protocol!r}")
        self.protocol = protocol
        self.application = Application(
            name=name, models=list(models), signals=list(signals), channels=list(channels),
            headers=list(headers), tasks=list(tasks),
            gate=gate or getattr(headers, "gate", None) or all, static_dir=static_dir)
        self.overrides: dict[str, Any] = {}
        for key, value in (("HOST", host), ("PORT", port), ("DATA_DIR", data)):
            if value is not _UNSET:
                self.overrides[key] = value
        if trust is not _UNSET:
            self.overrides["TRUST"] = [trust] if isinstance(trust, str) else list(trust)
        self.overrides.update(settings or {})
        self.bootstrap: Bootstrap | None = None

    # --- settings -----------------------------------------------------------------------

    def load_settings(self, path: str | None = None, **overrides: Any) -> settings_mod.Settings:
        """Return the settings to run with: file, environment, then this server's arguments."""
        path = path or os.environ.get(settings_mod.ENV_PREFIX + "SETTINGS") or None
        values = dict(self.overrides)
        values.update(overrides)
        loaded = settings_mod.load(path, overrides=values)
        if self.protocol == "wss" and not (loaded.TLS_CERT and loaded.TLS_KEY):
            raise SettingsError("Server: protocol 'wss' needs TLS_CERT and TLS_KEY")
        return loaded

    # --- running ------------------------------------------------------------------------

    def serve(self, settings: settings_mod.Settings | None = None) -> int:
        """Run in the foreground until a signal or ``lexiconsd stop``; return the exit code.

        Once running, it says on standard error where it listens and where it logs.
        """
        self.bootstrap = Bootstrap(settings or self.load_settings(), self.application)
        try:
            return self.bootstrap.run(ready=self._announce)
        finally:
            self.bootstrap = None

    def _announce(self) -> None:
        """Tell the person who ran ``python main.py run`` where to connect and to look."""
        manager = self.manager
        settings = manager.settings if manager is not None else None
        if manager is None or settings is None:
            return
        where = "no listener service"
        if manager.has_service("listener"):
            listener = manager.get_service("listener")
            host = settings.HOST if settings.HOST not in ("", "0.0.0.0", "::") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            scheme = "wss" if listener.tls_context else "ws"
            where = f"listening on {scheme}://{host}:{listener.port}/"
        log = "standard error" if settings.LOG_PATH == "-" else settings.LOG_PATH
        print(f"lexicons: {where}; log: {log}; data: {settings.DATA_DIR} (Ctrl-C stops)",
              file=sys.stderr, flush=True)

    def run(self, argv: list[str] | None = None) -> int:
        """Behave as ``python main.py run``: serve if the command line says ``run``."""
        parser = argparse.ArgumentParser(prog=os.path.basename(sys.argv[0] or "main.py"),
                                         description="Run this lexicons application.")
        commands = parser.add_subparsers(dest="command")
        run = commands.add_parser("run", help="run the server in the foreground")
        run.add_argument("--settings", help="settings file (a Python module)")
        run.add_argument("--host", help="address to listen on")
        run.add_argument("--port", type=int, help="port to listen on")
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if args.command != "run":
            parser.print_usage(sys.stderr)
            return 2
        overrides = {k.upper(): v for k, v in (("host", args.host), ("port", args.port))
                     if v is not None}
        try:
            settings = self.load_settings(args.settings, **overrides)
        except SettingsError as exc:
            print(f"lexicons: {exc}", file=sys.stderr)
            return 2
        return self.serve(settings)

    def start(self, settings: settings_mod.Settings | None = None) -> Server:
        """Start in the background of this program (no OS signal handlers)."""
        self.bootstrap = Bootstrap(settings or self.load_settings(), self.application,
                                   handle_signals=False)
        self.bootstrap.start()
        return self

    def stop(self) -> None:
        """Stop what :meth:`start` started. Idempotent."""
        if self.bootstrap is not None:
            self.bootstrap.stop()
            self.bootstrap = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def manager(self) -> ServiceManager | None:
        """Return the running service manager (None when not running)."""
        return self.bootstrap.manager if self.bootstrap is not None else None

    @property
    def port(self) -> int:
        """Return the port the listener is bound to (0 when not running)."""
        manager = self.manager
        if manager is None or not manager.has_service("listener"):
            return 0
        return manager.get_service("listener").port
