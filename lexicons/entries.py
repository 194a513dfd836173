"""Classes named in settings as ``'module.path/ClassName'`` (SERVICE_LIST, FILTERS)."""
from __future__ import annotations

import importlib
from typing import TypeVar

from .errors import ServiceError

T = TypeVar("T")


def import_entry(entry: str, base: type[T], setting: str) -> type[T]:
    """Return the subclass of *base* named by *entry*; ServiceError names *setting* if none."""
    module_name, _, class_name = entry.partition("/")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # user code: any failure to import is reported by name
        raise ServiceError(f"{setting}: cannot import {module_name!r} (from {entry!r}): "
                           f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ServiceError(f"{setting}: module {module_name!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ServiceError(f"{setting}: {entry!r} is not a "
                           f"{base.__module__}.{base.__name__} subclass")
    return cls
