"""The module names of zephserver and filtered_websocket, answered by lexicons.

Code written for those projects imports their names
(``from zephserver.infra.service_manager import ServiceManager``,
``from filtered_websocket.filters.base import WebSocketMessageFilter``). When the
original package is not installed, :func:`install` makes those imports give the
lexicons module that plays its part (:mod:`lexicons.zephserver`,
:mod:`lexicons.fws`), so such code runs unchanged. The finder is the last one
on ``sys.meta_path``: an installed original is always found first.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from typing import Any

#: Original module -> the lexicons module answering for it ("" for a bare package).
ALIASES: dict[str, str] = {
    "zephserver": "",
    "zephserver.infra": "",
    "zephserver.service": "",
    "zephserver.task": "",
    "zephserver.infra.service_manager": "lexicons.zephserver",
    "zephserver.infra.cluster_adapter": "lexicons.zephserver",
    "zephserver.service.service_interface": "lexicons.zephserver",
    "zephserver.task.task_interface": "lexicons.zephserver",
    "filtered_websocket": "",
    "filtered_websocket.filters": "",
    "filtered_websocket.storage_objects": "",
    "filtered_websocket.filters.base": "lexicons.fws",
    "filtered_websocket.storage_objects.base": "lexicons.fws.storage",
}
for _name in ("broadcast_messages", "broadcast_messages_by_token", "broadcast_pubsub",
              "stdout_messages", "stdout_pubsub", "stdout_rawdata"):
    ALIASES[f"filtered_websocket.filters.{_name}"] = f"lexicons.fws.{_name}"


class _Loader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target
        self.spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        if self.target:
            module = importlib.import_module(self.target)
            self.spec = module.__spec__
            return module
        package = types.ModuleType(spec.name, "stands for the package of the same name")
        package.__path__ = []
        return package

    def exec_module(self, module: types.ModuleType) -> None:
        # The lexicons module ran when imported, and a bare package has nothing to run;
        # the import system set the alias's spec on the module: give it back its own.
        if self.spec is not None:
            module.__spec__ = self.spec


class AliasFinder(importlib.abc.MetaPathFinder):
    """Find the original projects' module names in :data:`ALIASES`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in ALIASES:
            return None
        target = ALIASES[fullname]
        return importlib.machinery.ModuleSpec(fullname, _Loader(target),
                                              is_package=not target)


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    global _installed
    with _lock:
        if not _installed:
            sys.meta_path.append(AliasFinder())
            _installed = True
