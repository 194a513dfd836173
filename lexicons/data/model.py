"""Models: the tables of an application, declared as annotated classes.

::

    class User(Model):
        name: str
        age: int = 18
        tags: list[str]
        boss: "User"                     # a reference, stored as the other row's pk
        password_hash: str

        @property
        def password(self) -> str:
            return self.password_hash

        @password.setter
        def password(self, value: str) -> None:   # a computed field: stores a hash
            self.password_hash = hash_password(value)

A property with a setter whose value lives in ``_name`` is a *stored* field named
by the property: the column holds what the setter stored, and queries compare
with that stored value::

    class Account(Model):
        email: str
        _password: str                     # or: getter and setter both use self._password

        @property
        def password(self):
            return self._password

        @password.setter
        def password(self, raw):
            self._password = encrypt(raw)  # the ``password`` column holds the hash

    db.create(Account, email=e, password="raw")           # stores encrypt("raw")
    db.get(Account, email=e, password=encrypt("raw"))     # finds it

The class name is the table name. Annotated class attributes are the fields:
``str``, ``int``, ``float``, ``bool``, ``list``, ``set``, ``dict``, typed
containers (``list[int]``, ``set[str]``, ``dict[str, float]``), ``X | None``
(the field also takes None), and another Model class (or its name as a string) as a
reference, stored as the referenced row's ``pk`` (None when unset). A class
attribute value is the field's default; otherwise the default is ``''``, ``0``,
``0.0``, ``False``, ``[]``, ``set()``, ``{}`` or None (references and ``X | None``).
Every row has a ``pk`` (a non-empty string, random when not given).

Values are checked on every write and never silently coerced: ``bool`` is not an
``int``, a tuple is not a list; an ``int`` is accepted by a ``float`` field when the
float holds it exactly. Containers hold JSON values only (dict keys are strings),
so that they round-trip exactly through the journal and the CSV files. ``int``
fields hold signed 64-bit integers, so that scans stay vectorised.

Instances are detached copies of a row: changing one does not change the
database; write it back with ``db.update(Model, instance)``.
"""
from __future__ import annotations

import os
import sys
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar

from lexicons.errors import ValidationError

INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1

#: The kinds of field, by the Python type that declares them.
SCALARS: dict[type, str] = {str: "str", int: "int", float: "float", bool: "bool"}
CONTAINERS: dict[type, str] = {list: "list", set: "set", dict: "dict"}
KIND_DEFAULTS: dict[str, Any] = {"str": "", "int": 0, "float": 0.0, "bool": False}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_registry: dict[str, type[Model]] = {}
_registry_lock = threading.Lock()


# --- primary keys -------------------------------------------------------------------


class _PkPool:
    """Hand out random 64-bit hex keys, drawn from the OS in batches (thread-safe)."""

    def __init__(self, batch: int = 4096):
        self._batch = batch
        self._pool: list[str] = []

    def __call__(self) -> str:
        try:
            return self._pool.pop()  # list.pop is atomic under the GIL
        except IndexError:
            text = os.urandom(8 * self._batch).hex()
            self._pool.extend(text[i:i + 16] for i in range(0, len(text), 16))
            return self._pool.pop()


new_pk: Callable[[], str] = _PkPool()


def check_pk(model: str, value: Any) -> str:
    """Return *value* if it can be a pk (a non-empty string), else raise ValidationError."""
    if isinstance(value, str) and value:
        return str(value)
    if isinstance(value, str):
        raise ValidationError(f"{model}.pk: expected a non-empty str, got ''")
    raise ValidationError(f"{model}.pk: expected str, got {type(value).__name__}")


# --- JSON values ----------------------------------------------------------------------


def _json_copy(value: Any, where: str) -> Any:
    """Return a deep copy of a JSON value, or raise ValidationError naming *where*."""
    cls = value.__class__
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if cls is float:
        return value
    if cls is list:
        return [_json_copy(item, where) for item in value]
    if cls is dict:
        out = {}
        for key, item in value.items():
            if key.__class__ is not str:
                raise ValidationError(f"{where}: dict keys must be str, got "
                                      f"{type(key).__name__}")
            out[key] = _json_copy(item, where)
        return out
    if isinstance(value, (str, int, float, list, dict)) and not isinstance(value, bool):
        return _json_copy(_base(value), where)
    raise ValidationError(f"{where}: containers hold JSON values (str, int, float, bool, "
                          f"None, list, dict), got {type(value).__name__}")


def _base(value: Any) -> Any:
    for base in (bool, int, float, str, list, dict):
        if isinstance(value, base):
            return base(value)
    return value


def clone(value: Any) -> Any:
    """Return a copy of a stored value that a caller may change freely."""
    cls = value.__class__
    if cls is list:
        return [clone(v) if v.__class__ in (list, dict) else v for v in value]
    if cls is dict:
        return {k: clone(v) if v.__class__ in (list, dict) else v for k, v in value.items()}
    if cls is set:
        return set(value)
    return value


def _set_sort_key(value: Any) -> tuple:
    return (value.__class__.__name__, value)


def to_json(value: Any) -> Any:
    """Return a stored value as JSON data (sets become sorted lists)."""
    if value.__class__ is set:
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=_set_sort_key)
    return value


# --- fields ---------------------------------------------------------------------------


class Field:
    """One field of a Model: its kind, default and the check run on every write."""

    __slots__ = ("model", "name", "kind", "item", "nullable", "ref", "default",
                 "explicit_default")

    def __init__(self, model: str, name: str, kind: str, *, item: str | None = None,
                 nullable: bool = False, ref: type[Model] | None = None,
                 default: Any = MISSING):
        self.model = model
        self.name = name
        self.kind = kind            # str int float bool list set dict ref
        self.item = item            # for typed containers: the kind of the items
        self.nullable = nullable or kind == "ref"
        self.ref = ref
        self.explicit_default = default is not MISSING
        if default is MISSING:
            default = None if self.nullable else KIND_DEFAULTS.get(kind)
            if kind in CONTAINERS.values():
                default = {"list": [], "set": set(), "dict": {}}[kind]
        elif default is not None or not self.nullable:
            default = self.check(default)
        self.default = default

    def __repr__(self) -> str:
        return f"<Field {self.model}.{self.name}: {self.describe()}>"

    @property
    def where(self) -> str:
        return f"{self.model}.{self.name}"

    def describe(self) -> str:
        """Return the declared type as a user reads it (``list[int]``, ``User | None``)."""
        if self.kind == "ref":
            text = self.ref.__name__ if self.ref else "?"
        elif self.item and self.kind == "dict":
            text = f"dict[str, {self.item}]"
        elif self.item:
            text = f"{self.kind}[{self.item}]"
        else:
            text = self.kind
        if self.nullable and self.kind != "ref":
            text += " | None"
        return text

    def fresh_default(self) -> Any:
        """Return the default value (a new object for containers)."""
        default = self.default
        return clone(default) if default.__class__ in (list, set, dict) else default

    def _fail(self, value: Any, expected: str | None = None) -> ValidationError:
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return ValidationError(f"{self.where}: expected {expected or self.describe()}, "
                               f"got {type(value).__name__} ({shown})")

    def check(self, value: Any) -> Any:
        """Return *value* as stored (a private copy for containers), or raise ValidationError."""
        if value is None:
            if self.nullable:
                return None
            raise self._fail(value)
        kind = self.kind
        if kind == "ref":
            return self._check_ref(value)
        if kind in ("list", "set", "dict"):
            return self._check_container(value)
        return self._check_scalar(kind, value, self._fail)

    def check_item(self, value: Any) -> Any:
        """Check one item of a typed container."""
        return self._check_scalar(self.item, value,
                                  lambda v, _=None: self._fail(v, f"{self.item} items"))

    @staticmethod
    def _check_scalar(kind: str, value: Any, fail: Callable[..., Exception]) -> Any:
        if kind == "str":
            if isinstance(value, str):
                return str(value)
        elif kind == "bool":
            if value.__class__ is bool:
                return value
            if _is_numpy(value, "bool_"):
                return bool(value)
        elif kind == "int":
            if isinstance(value, bool):
                raise fail(value)
            if isinstance(value, int) or _is_numpy(value, "integer"):
                value = int(value)
                if INT_MIN <= value <= INT_MAX:
                    return value
                raise fail(value, "int (a signed 64-bit integer)")
        elif kind == "float":
            if isinstance(value, bool):
                raise fail(value)
            if isinstance(value, float) or _is_numpy(value, "floating"):
                return float(value)
            if isinstance(value, int) or _is_numpy(value, "integer"):
                as_float = float(value)
                if as_float == int(value):
                    return as_float
                raise fail(value, "float (this int has no exact float)")
        elif kind == "any":
            return _json_copy(value, "value")
        raise fail(value)

    def _check_ref(self, value: Any) -> str:
        if isinstance(value, Model):
            if self.ref is not None and not isinstance(value, self.ref):
                raise self._fail(value)
            return value.pk
        if isinstance(value, str) and value:
            return str(value)
        raise self._fail(value, f"a {self.describe()} or its pk (a non-empty str)")

    def _check_container(self, value: Any) -> Any:
        kind, item = self.kind, self.item
        if kind == "list" and isinstance(value, list):
            if item is None:
                return _json_copy(value, self.where)
            check = self.check_item
            return [check(v) for v in value]
        if kind == "set" and isinstance(value, (set, frozenset)):
            check = self.check_item if item else self._check_set_item
            return {check(v) for v in value}
        if kind == "dict" and isinstance(value, dict):
            out = {}
            for key, v in value.items():
                if not isinstance(key, str):
                    raise ValidationError(f"{self.where}: dict keys must be str, got "
                                          f"{type(key).__name__}")
                out[str(key)] = self.check_item(v) if item else _json_copy(v, self.where)
            return out
        raise self._fail(value)

    def _check_set_item(self, value: Any) -> Any:
        if value.__class__ in (str, int, float, bool):
            return value
        raise ValidationError(f"{self.where}: set items must be str, int, float or bool, "
                              f"got {type(value).__name__}")

    # --- JSON form (journal, clients) ------------------------------------------------

    def from_json(self, value: Any) -> Any:
        """Return the stored value for JSON data read back (a list becomes a set)."""
        if self.kind == "set" and value.__class__ is list:
            value = set(value)
        elif self.kind == "float" and value.__class__ is int:
            value = float(value)
        return self.check(value)


def _is_numpy(value: Any, abstract: str) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, getattr(numpy, abstract))


# --- schema ---------------------------------------------------------------------------


class Schema:
    """What the database needs to know about one Model class."""

    def __init__(self, model: type[Model], fields: dict[str, Field],
                 setters: dict[str, property]):
        self.model = model
        self.name = model.__name__
        self.fields = fields
        self.names = tuple(fields)
        self.setters = setters
        self.refs = {name: f for name, f in fields.items() if f.kind == "ref"}


def _resolve(cls: type[Model], name: str, annotation: Any) -> Field | None:
    """Turn one annotation into a Field (None for annotations that are not fields)."""
    model = cls.__name__
    default = cls.__dict__.get(name, MISSING)
    for klass in cls.__mro__[1:]:
        if default is not MISSING:
            break
        default = klass.__dict__.get(name, MISSING)
    if isinstance(default, _Backing):
        default = default.default
    if isinstance(default, (property, classmethod, staticmethod, types.FunctionType)):
        default = MISSING
    nullable = False
    origin = typing.get_origin(annotation)
    if origin is ClassVar:
        return None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{model}.{name}: unsupported field type {annotation!r} "
                            "(a union may only add None)")
        nullable = True
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        target = _registry.get(annotation)
        if target is None:
            raise TypeError(f"{model}.{name}: unknown type {annotation!r} "
                            "(not a field type nor a Model)")
        annotation = target
    if annotation in SCALARS:
        return Field(model, name, SCALARS[annotation], nullable=nullable, default=default)
    if annotation in CONTAINERS:
        return Field(model, name, CONTAINERS[annotation], nullable=nullable, default=default)
    if origin in CONTAINERS:
        args = typing.get_args(annotation)
        kind = CONTAINERS[origin]
        item_type = args[-1] if args else None
        if kind == "dict" and args and args[0] is not str:
            raise TypeError(f"{model}.{name}: dict keys must be str (JSON objects)")
        if item_type in SCALARS:
            item = SCALARS[item_type]
        elif item_type is Any or item_type is None:
            item = None
        else:
            raise TypeError(f"{model}.{name}: unsupported item type {item_type!r} "
                            "(use str, int, float or bool)")
        return Field(model, name, kind, item=item, nullable=nullable, default=default)
    if isinstance(annotation, type) and issubclass(annotation, Model):
        if default is not MISSING and default is not None:
            raise TypeError(f"{model}.{name}: a reference's default must be None")
        return Field(model, name, "ref", ref=annotation, default=MISSING)
    raise TypeError(f"{model}.{name}: unsupported field type {annotation!r}")


class _Backing:
    """The ``_name`` attribute of a stored property ``name``: the row's ``name`` value.

    Installed on the class in place of ``_name`` (and its default), so that the
    property's own code (``return self._password``, ``self._password = ...``)
    reads and writes the stored field, type-checked.
    """

    __slots__ = ("field", "default")

    def __init__(self, field: str, default: Any):
        self.field = field
        self.default = default

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self.default
        try:
            return obj.__dict__[self.field]
        except KeyError:
            raise AttributeError(f"_{self.field}") from None

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.field] = type(obj)._schema().fields[self.field].check(value)


def _stored_property(cls: type[Model], name: str, prop: property,
                     hints: dict[str, Any]) -> Field | None:
    """Return the Field of a property stored under its own name, or None if it is computed.

    A property with a setter is *stored* when it keeps its value in ``_name``:
    the class annotates ``_name``, or both the getter and the setter use
    ``self._name``. The column is then named by the property and holds what the
    setter stored (``User.password`` storing ``encrypt(raw)`` in ``_password``
    makes a ``password`` column holding the hash). Its type is ``_name``'s
    annotation, else the getter's return annotation, else ``str``.
    """
    private = "_" + name
    annotation = hints.get(private, MISSING)
    if annotation is MISSING:
        codes = [getattr(f, "__code__", None) for f in (prop.fget, prop.fset)]
        if not all(code is not None and private in code.co_names for code in codes):
            return None
        try:
            annotation = typing.get_type_hints(prop.fget).get("return", str)
        except Exception:  # an annotation that does not resolve: a str column
            annotation = str
    field = _resolve(cls, private, annotation)
    if field is None:
        return None
    field.name = name
    return field


def _hints(cls: type[Model]) -> dict[str, Any]:
    """Return the annotations of *cls* and its bases, resolved where possible."""
    raw: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is Model or not issubclass(klass, Model):
            continue
        raw.update(klass.__dict__.get("__annotations__", {}))
    module = sys.modules.get(cls.__module__)
    namespace: dict[str, Any] = dict(_registry)
    namespace.update(vars(module) if module else {})
    out = {}
    for name, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace, {})  # noqa: S307 - the class's own text
            except Exception:  # an unknown name: keep the text, _resolve explains
                pass
        out[name] = annotation
    return out


# --- the base class ---------------------------------------------------------------------


class Model:
    """Base class of the application's tables (see the module docstring)."""

    pk: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        with _registry_lock:
            _registry[cls.__name__] = cls
        cls._lx_schema = None

    @classmethod
    def _schema(cls) -> Schema:
        """Return the fields and computed fields of this model (resolved once)."""
        schema = cls.__dict__.get("_lx_schema")
        if schema is not None:
            return schema
        fields: dict[str, Field] = {}
        hints = _hints(cls)
        for name, annotation in hints.items():
            if name.startswith("_") or name == "pk":
                continue
            field = _resolve(cls, name, annotation)
            if field is not None:
                fields[name] = field
        setters: dict[str, property] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, property) and attr.fset is not None:
                    if name in fields:
                        raise TypeError(f"{cls.__name__}.{name} is both a field and a property")
                    setters[name] = attr
        for name, prop in setters.items():
            field = _stored_property(cls, name, prop, hints)
            if field is not None:
                fields[name] = field
                setattr(cls, "_" + name, _Backing(name, field.default))
        schema = Schema(cls, fields, setters)
        cls._lx_schema = schema
        return schema

    def __init__(self, **values: Any):
        schema = type(self)._schema()
        d = self.__dict__
        pk = values.pop("pk", None)
        d["pk"] = new_pk() if pk is None else check_pk(schema.name, pk)
        fields = schema.fields
        for name, field in fields.items():
            d[name] = field.fresh_default()
        later = []
        for name, value in values.items():
            if name in schema.setters:   # computed and stored properties: their setter
                later.append((name, value))
                continue
            field = fields.get(name)
            if field is None:
                raise ValidationError(f"{schema.name} has no field {name!r}")
            d[name] = field.check(value)
        for name, value in later:
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        schema = type(self)._schema()
        field = schema.fields.get(name)
        if field is not None:
            if name in schema.setters:   # a stored property: its setter says what is stored
                object.__setattr__(self, name, value)
                return
            value = field.check(value)
        elif name == "pk":
            value = check_pk(type(self).__name__, value)
        object.__setattr__(self, name, value)

    def _to_dict(self) -> dict[str, Any]:
        """Return the row as JSON-ready data: pk and fields (sets as sorted lists)."""
        d = self.__dict__
        out = {"pk": d["pk"]}
        for name in type(self)._schema().names:
            out[name] = to_json(clone(d[name]))
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names = ("pk",) + type(self)._schema().names
        mine, theirs = self.__dict__, other.__dict__
        return all(_same(mine.get(n), theirs.get(n)) for n in names)

    __hash__ = None  # type: ignore[assignment]  # rows are mutable values

    def __repr__(self) -> str:
        d = self.__dict__
        parts = [f"pk={d.get('pk')!r}"]
        parts += [f"{n}={d.get(n)!r}" for n in type(self)._schema().names]
        return f"{type(self).__name__}({', '.join(parts)})"


def _same(a: Any, b: Any) -> bool:
    """Compare two stored values; NaN equals NaN (the same value was stored)."""
    return a == b or (a.__class__ is float and b.__class__ is float and a != a and b != b)


def model_named(name: str) -> type[Model] | None:
    """Return the Model class declared with this name, if any."""
    return _registry.get(name)
