"""lexicons: a websocket application server for small and medium data sets.

The public names are imported lazily: ``lexiconsd`` imports this package before
it daemonizes, and pandas (with numpy's thread pools) must not be loaded
before the fork.
"""
from __future__ import annotations

import importlib
from typing import Any

from lexicons.daemon import aliases as _aliases

_aliases.install_moved()  # ``lexicons.model`` and the other former names still import

_EXPORTS = {
    "Database": ".data.database",
    "Model": ".data.model",
    "hash_password": ".passwords",
    "verify_password": ".passwords",
    "encrypt": ".passwords",
    "Task": ".task",
    "Signal": ".signal",
    "Response": ".signal",
    "Channel": ".channel",
    "Header": ".header",
    "Server": ".server",
    "ModelManager": ".daemon.application",
    "SignalManager": ".daemon.application",
    "ChannelManager": ".daemon.application",
    "HeaderManager": ".daemon.application",
    "TaskManager": ".daemon.application",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lexicons' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
