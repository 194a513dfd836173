"""The application: the Models, Signals, Channels, Headers and Tasks a daemon serves.

An application is a Python module named by the ``APP`` setting. It declares its
building blocks in one of two ways:

* module-level managers (or plain lists)::

      models = ModelManager(User, ChatMessage)
      signals = SignalManager(SendMessage, Recent)
      channels = ChannelManager(Public, Room)
      headers = HeaderManager(Login, Register, gate=any)
      tasks = TaskManager(Prune)

* or a :class:`lexicons.server.Server` instance named ``server``, as in the
  in-code API (``Server(models=..., signals=..., ...)``).

Services read the loaded :class:`Application` from ``manager.app``.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lexicons.errors import SettingsError


class Manager(list):
    """An ordered collection of one kind of building block (models, signals, ...)."""

    def __init__(self, *items: Any, **options: Any):
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            items = tuple(items[0])
        super().__init__(items)
        self.options = options

    def by_name(self) -> dict[str, Any]:
        """Return the blocks keyed by class name."""
        return {item.__name__: item for item in self}


class ModelManager(Manager):
    """The application's Models (tables)."""


class SignalManager(Manager):
    """The application's Signals (what clients may call)."""


class ChannelManager(Manager):
    """The application's Channels (who receives broadcasts)."""


class HeaderManager(Manager):
    """The application's Headers and the ``gate`` combining them (default ``all``)."""

    @property
    def gate(self) -> Callable[[Iterable[bool]], bool]:
        return self.options.get("gate", all)


class TaskManager(Manager):
    """The application's Tasks (startup, shutdown, interval)."""


@dataclass
class Application:
    """The building blocks of one application, as services see them."""

    name: str = ""
    models: list[type] = field(default_factory=list)
    signals: list[type] = field(default_factory=list)
    channels: list[type] = field(default_factory=list)
    headers: list[type] = field(default_factory=list)
    tasks: list[type] = field(default_factory=list)
    gate: Callable[[Iterable[bool]], bool] = all
    static_dir: str = ""
    module: Any = None


def _blocks(source: Any, name: str) -> list[type]:
    value = getattr(source, name, None)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise SettingsError(f"APP: {name} must be a manager or a list of classes, "
                            f"not {type(value).__name__}")
    return list(value)


def from_source(source: Any, name: str = "") -> Application:
    """Build an Application from an object or module holding managers."""
    headers = getattr(source, "headers", None)
    gate = getattr(source, "gate", None) or getattr(headers, "gate", None) or all
    static = getattr(source, "static_dir", "") or ""
    module_file = getattr(source, "__file__", None)
    if static and module_file and not os.path.isabs(static):
        static = os.path.join(os.path.dirname(os.path.abspath(module_file)), static)
    return Application(
        name=name,
        models=_blocks(source, "models"),
        signals=_blocks(source, "signals"),
        channels=_blocks(source, "channels"),
        headers=_blocks(source, "headers"),
        tasks=_blocks(source, "tasks"),
        gate=gate,
        static_dir=static,
        module=source,
    )


def load(path: str) -> Application:
    """Import the application module named *path* (the ``APP`` setting)."""
    if not path:
        return Application()
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise SettingsError(f"APP: cannot import application {path!r}: {exc}") from exc
    server = getattr(module, "server", None)
    if server is not None and hasattr(server, "application"):
        return server.application
    return from_source(module, path)
