"""The arguments a Signal's or Header's ``execute`` accepts, checked against a call.

:class:`Arguments` reads ``execute``'s signature and annotations once, when the
application loads, and then checks each call's keyword arguments: a missing
required argument, an unexpected one, or a value that does not match its
annotation is reported by name. The names ``db``, ``ws`` and ``sv`` are given
by the server, never by the client.

Supported annotations: ``int`` (not bool), ``float`` (int accepted), ``bool``,
``str``, ``None``, ``list``/``tuple``/``set``/``frozenset`` (from a JSON list,
converted; element type checked), ``dict`` (value type checked), unions
(``X | None``), ``Literal[...]`` and ``Any``. Other classes are not checked.
"""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from lexicons.errors import SettingsError

#: Names the server passes to ``execute`` itself; a client may not send them.
INJECTED = ("db", "ws", "sv")

_BAD = object()  # what a checker returns for a value of the wrong type

Checker = Callable[[Any], Any]


def json_type(value: Any) -> str:
    """Name the type of a decoded JSON value the way error messages show it."""
    if value is None:
        return "null"
    return type(value).__name__


def describe(tp: Any) -> str:
    """Return a short readable name of an annotation (``int``, ``list[str]``, ``str | None``)."""
    if tp is type(None) or tp is None:
        return "None"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(describe(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _scalar(tp: type) -> Checker | None:
    if tp is bool:
        return lambda v: v if v is True or v is False else _BAD
    if tp is int:
        return lambda v: v if type(v) is int else _BAD
    if tp is float:
        return lambda v: float(v) if type(v) in (int, float) else _BAD
    if tp is str:
        return lambda v: v if type(v) is str else _BAD
    if tp is type(None):
        return lambda v: v if v is None else _BAD
    return None


def _sequence(container: type, item: Checker | None) -> Checker:
    def check(v: Any) -> Any:
        if not isinstance(v, (list, tuple, set, frozenset)):
            return _BAD
        if item is not None:
            items = [item(x) for x in v]
            if any(x is _BAD for x in items):
                return _BAD
            v = items
        return v if type(v) is container else container(v)
    return check


def _mapping(value_check: Checker | None) -> Checker:
    def check(v: Any) -> Any:
        if not isinstance(v, dict):
            return _BAD
        if value_check is not None:
            checked = {k: value_check(x) for k, x in v.items()}
            if any(x is _BAD for x in checked.values()):
                return _BAD
            return checked
        return v
    return check


def _union(checks: list[Checker | None]) -> Checker | None:
    if any(c is None for c in checks):
        return None

    def check(v: Any) -> Any:
        for c in checks:
            result = c(v)
            if result is not _BAD:
                return result
        return _BAD
    return check


def checker(tp: Any) -> Checker | None:
    """Return a function checking (and converting) a JSON value for annotation *tp*.

    The function returns the value to pass on, or a private marker when the value
    does not match. None means: anything goes.
    """
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return None
    if tp is None:
        tp = type(None)
    if isinstance(tp, type):
        scalar = _scalar(tp)
        if scalar is not None:
            return scalar
        if tp in (list, tuple, set, frozenset):
            return _sequence(tp, None)
        if tp is dict:
            return _mapping(None)
        return None  # a class lexicons cannot check from JSON (a Model, ...)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _union([checker(a) for a in args])
    if origin is Literal:
        allowed = args
        return lambda v: v if any(v == a and type(v) is type(a) for a in allowed) else _BAD
    if origin in (list, set, frozenset):
        return _sequence(origin, checker(args[0]) if args else None)
    if origin is tuple:  # tuple[X, ...] checks items; a fixed-shape tuple only its type
        homogeneous = len(args) == 2 and args[1] is Ellipsis
        return _sequence(tuple, checker(args[0]) if homogeneous else None)
    if origin is dict:
        return _mapping(checker(args[1]) if len(args) == 2 else None)
    return None


class Arguments:
    """What keyword arguments a callable accepts, and how to check a call against it."""

    __slots__ = ("owner", "required", "optional", "checks", "types", "var_keyword", "inject")

    def __init__(self, func: Callable[..., Any], owner: str):
        self.owner = owner
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{owner}: cannot read the signature of execute: {exc}") from None
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # an annotation that does not resolve: check nothing, run anyway
            hints = {}
        self.required: list[str] = []
        self.optional: list[str] = []
        self.checks: dict[str, Checker] = {}
        self.types: dict[str, str] = {}
        self.var_keyword = False
        inject: list[str] = []
        params = list(signature.parameters.values())
        if params and params[0].name == "self":
            params = params[1:]
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                self.var_keyword = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.POSITIONAL_ONLY:
                raise SettingsError(f"{owner}: execute's argument {p.name!r} is positional-only; "
                                    f"calls pass arguments by name")
            if p.name in INJECTED:
                inject.append(p.name)
                continue
            (self.required if p.default is p.empty else self.optional).append(p.name)
            tp = hints.get(p.name, p.empty)
            check = checker(tp)
            if check is not None:
                self.checks[p.name] = check
                self.types[p.name] = describe(tp)
        self.inject = tuple(INJECTED) if self.var_keyword else tuple(inject)

    def check(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Return the arguments to call with and the problems found (empty: all good).

        A dict given is updated in place with converted values (and returned).
        """
        problems: list[str] = []
        for name in self.required:
            if name not in kwargs:
                problems.append(f"{self.owner}: missing argument {name!r}")
        checks = self.checks
        out = kwargs if type(kwargs) is dict else dict(kwargs)
        for name, value in tuple(kwargs.items()):
            if name in INJECTED:
                problems.append(f"{self.owner}: argument {name!r} is reserved for the server")
                continue
            check = checks.get(name)
            if check is None:
                if not self.var_keyword and name not in self.required \
                        and name not in self.optional:
                    problems.append(f"{self.owner}: unexpected argument {name!r}")
                continue
            result = check(value)
            if result is _BAD:
                problems.append(f"{self.owner}: argument {name!r} must be "
                                f"{self.types[name]}, got {json_type(value)}")
            elif result is not value:
                out[name] = result
        return out, problems
