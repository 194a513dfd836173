"""Module names answered by lexicons: its own former ones, zephserver's and filtered_websocket's.

lexicons' modules once sat in one folder (``lexicons.model``,
``lexicons.filters``, ...); they now live in :mod:`lexicons.wire`,
:mod:`lexicons.data` and :mod:`lexicons.daemon`. :data:`MOVED` keeps every
former name importable, as the very same module, so applications and settings
written against it (``from lexicons.model import Model``,
``FILTERS = {"data": ["lexicons.filters/RateLimit"]}``) run unchanged. The
package installs this finder when it is imported (:func:`install_moved`).

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
    "zephserver.infra.service_manager": "lexicons.daemon.zephserver",
    "zephserver.infra.cluster_adapter": "lexicons.daemon.zephserver",
    "zephserver.service.service_interface": "lexicons.daemon.zephserver",
    "zephserver.task.task_interface": "lexicons.daemon.zephserver",
    "filtered_websocket": "",
    "filtered_websocket.filters": "",
    "filtered_websocket.storage_objects": "",
    "filtered_websocket.filters.base": "lexicons.fws",
    "filtered_websocket.storage_objects.base": "lexicons.fws.storage",
}
for _name in ("broadcast_messages", "broadcast_messages_by_token", "broadcast_pubsub",
              "stdout_messages", "stdout_pubsub", "stdout_rawdata"):
    ALIASES[f"filtered_websocket.filters.{_name}"] = f"lexicons.fws.{_name}"

#: lexicons' former module names -> where each module lives now.
MOVED: dict[str, str] = {
    f"lexicons.{name}": f"lexicons.{package}.{name}"
    for package, names in {
        "wire": "arguments cluster events frames hightemplar http protocol",
        "data": "database history journal lockfile model presence replication sessions "
                "snapshot storage",
        "daemon": "aio aliases application backend bootstrap connection control entries "
                  "filters manager metrics notify pool service settings static trust "
                  "zephserver",
    }.items()
    for name in names.split()
}


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
    """Find the module names of one table (:data:`ALIASES` or :data:`MOVED`)."""

    def __init__(self, table: dict[str, str]):
        self.table = table

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.table:
            return None
        target = self.table[fullname]
        return importlib.machinery.ModuleSpec(fullname, _Loader(target),
                                              is_package=not target)


_installed: set[int] = set()
_lock = threading.Lock()


def _append(table: dict[str, str]) -> None:
    with _lock:
        if id(table) not in _installed:
            sys.meta_path.append(AliasFinder(table))
            _installed.add(id(table))


def install() -> None:
    """Answer zephserver's and filtered_websocket's names (once), after every other finder."""
    _append(ALIASES)


def install_moved() -> None:
    """Answer lexicons' former module names (once); the package does it when imported."""
    _append(MOVED)
