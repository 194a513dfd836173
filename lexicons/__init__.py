"""lexicons: a websocket application server for small and medium data sets.

The public names are imported lazily: ``lexiconsd`` imports this package before
it daemonizes, and pandas (with numpy's thread pools) must not be loaded
before the fork.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Database": ".database",
    "Model": ".model",
    "hash_password": ".passwords",
    "verify_password": ".passwords",
    "encrypt": ".passwords",
    "Task": ".task",
    "Signal": ".signal",
    "Response": ".signal",
    "Channel": ".channel",
    "Header": ".header",
    "Server": ".server",
    "ModelManager": ".application",
    "SignalManager": ".application",
    "ChannelManager": ".application",
    "HeaderManager": ".application",
    "TaskManager": ".application",
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
