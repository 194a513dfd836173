"""Classes named in settings as ``'module.path/ClassName'`` (SERVICE_LIST, FILTERS)."""
from __future__ import annotations

import importlib
from typing import TypeVar

from lexicons.errors import EntryError, ServiceError

T = TypeVar("T")


def import_entry(entry: str, base: type[T], setting: str) -> type[T]:
    """Return the subclass of *base* named by *entry*.

    An entry naming a module or class that is not there is a bad setting
    (EntryError, also a SettingsError); a module that is there but fails to
    import is a ServiceError. Both name *setting*.
    """
    module_name, _, class_name = entry.partition("/")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        error = EntryError if module_name == missing or module_name.startswith(
            missing + ".") else ServiceError  # else: the module is there, its import is not
        raise error(f"{setting}: cannot import {module_name!r} (from {entry!r}): "
                    f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # user code: any failure to import is reported by name
        raise ServiceError(f"{setting}: cannot import {module_name!r} (from {entry!r}): "
                           f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise EntryError(f"{setting}: module {module_name!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise EntryError(f"{setting}: {entry!r} is not a "
                         f"{base.__module__}.{base.__name__} subclass")
    return cls
