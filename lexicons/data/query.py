"""Reading a database: ``get``, ``query``, ``count``, ``aggregate``, ``frame``, and Rows.

:class:`Queries` is the read side of :class:`~lexicons.data.database.Database`
(which inherits it): filters are parsed and checked against the model's fields
(:data:`OPS`), then answered with a pk lookup, an equality index, a text search
or vectorised numpy masks over the table's arrays, under the database's lock.
:class:`Rows` holds the consistent copy of the matching rows a query returns.
"""
from __future__ import annotations

import gc
import operator
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lexicons.data.model import Field, Model, clone, to_json
from lexicons.data.table import _SCALAR_DTYPES
from lexicons.errors import DatabaseError, MultipleRowsFound, ValidationError

if TYPE_CHECKING:
    from lexicons.data.table import Table

OPS = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "in", "nin", "contains", "icontains",
                 "startswith", "endswith", "regex", "min", "max"})
_ORDER = {"gt": operator.gt, "lt": operator.lt, "ge": operator.ge, "le": operator.le,
          "min": operator.ge, "max": operator.le}
AGGREGATES = ("count", "sum", "mean", "min", "max", "median", "std")
_TEXT_OPS = frozenset({"contains", "icontains", "startswith", "endswith"})


#: Reading at least this many rows as instances pauses the cyclic garbage collector.
GC_PAUSE_MIN = 1000
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_resume = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while many instances are made.

    Each instance is a tracked container: made by the thousand with the collector
    on, they trigger young collections that move them, while the caller still
    holds them, towards the oldest generation, whose growth in turn triggers full
    collections of the whole process. Paused, the collector counts them and runs
    after; instances the caller has dropped by then are never walked at all.
    Pauses nest across threads; the collector is enabled again by the last one
    out, and only if it was enabled when the first came in.
    """
    global _gc_pauses, _gc_resume
    with _gc_lock:
        if not _gc_pauses:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if not _gc_pauses and _gc_resume:
                gc.enable()


class Rows(Sequence):
    """The rows a query matched: a consistent copy, read as Model instances on demand."""

    __slots__ = ("_table", "pks", "_cols")

    def __init__(self, table: Table, pks: list[str], cols: dict[str, list]):
        self._table = table
        self.pks = pks
        self._cols = cols

    def __len__(self) -> int:
        return len(self.pks)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Rows(self._table, self.pks[index],
                        {name: c[index] for name, c in self._cols.items()})
        pk = self.pks[index]
        return self._table._instance(pk, {name: c[index] for name, c in self._cols.items()})

    def __iter__(self) -> Iterator[Model]:
        if len(self.pks) < GC_PAUSE_MIN:
            return iter(self._table.make_rows(self.pks, *self._cols.values()))
        with _gc_paused():
            return iter(self._table.make_rows(self.pks, *self._cols.values()))

    def __repr__(self) -> str:
        return f"<Rows {self._table.name}: {len(self.pks)} rows>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows):
            return self.pks == other.pks and self._cols == other._cols
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def first(self) -> Model | None:
        """Return the first row, or None when there is none."""
        return self[0] if self.pks else None

    def column(self, name: str) -> list:
        """Return the values of one field (or ``pk``), copies for containers."""
        if name == "pk":
            return list(self.pks)
        self._table.field(name)
        return [clone(v) for v in self._cols[name]]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Return the rows as JSON-ready dicts (sets as sorted lists), without instances."""
        names = list(self._cols)
        columns = [self.pks] + [
            [to_json(clone(v)) for v in c] if self._table.fields[n].kind in ("list", "set", "dict")
            else c for n, c in self._cols.items()]
        keys = ["pk"] + names
        return [dict(zip(keys, row, strict=False)) for row in zip(*columns, strict=False)]

    def frame(self) -> pd.DataFrame:
        """Return the rows as a new pandas DataFrame (``pk`` first)."""
        data = {"pk": _frame_column(self.pks)}
        for name, column in self._cols.items():
            field = self._table.fields[name]
            if field.kind in ("list", "set", "dict"):
                column = [clone(v) for v in column]
            data[name] = _frame_column(column, field)
        return pd.DataFrame(data)


def _frame_column(values: list, field: Field | None = None) -> Any:
    if field is not None and not field.nullable and field.kind in _SCALAR_DTYPES:
        return np.fromiter(values, dtype=_SCALAR_DTYPES[field.kind], count=len(values))
    return np.fromiter(values, dtype=object, count=len(values))


# --- the database -----------------------------------------------------------------------


class _Filter:
    """One parsed filter: a field of a table, an operator and the checked value."""

    __slots__ = ("key", "field", "op", "value")

    def __init__(self, key: str, field: Field, op: str, value: Any):
        self.key, self.field, self.op, self.value = key, field, op, value



class Queries:
    """The reads of a Database: its ``lock`` and ``_tables`` are the database's own."""

    def get(self, model: Any, pk: Any = None, **fields: Any) -> Model | None:
        """Return the row with this pk, or the one row matching *fields*; None if none.

        Raises MultipleRowsFound when several rows match *fields*.
        """
        try:
            table = self._tables[model]
        except (KeyError, TypeError):
            table = self.table(model)
        if not fields:
            if pk.__class__ is not str:
                pk = self._pk_of(table, pk)
            return table.get_pk(pk)
        if pk is not None:
            fields["pk"] = self._pk_of(table, pk)
        rows = self.query(table.model, _limit=2, **fields)
        if len(rows) > 1:
            shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
            raise MultipleRowsFound(f"{table.name}: several rows match {shown}")
        return rows[0] if rows else None

    def query(self, model: Any, **filters: Any) -> Rows:
        """Return the rows matching every filter (see :meth:`_parse`), as :class:`Rows`.

        ``_sort='field'`` or ``'-field'`` (or a list of them) orders the rows,
        ``_limit=n`` and ``_offset=n`` cut them; without ``_sort`` rows come in
        insertion order.
        """
        table = self.table(model)
        sort = filters.pop("_sort", None)
        limit = filters.pop("_limit", None)
        offset = filters.pop("_offset", 0)
        for name, value in (("_limit", limit), ("_offset", offset)):
            if value is not None and (value.__class__ is not int or value < 0):
                raise ValidationError(f"{name}: expected an int >= 0, got {value!r}")
        with self.lock:
            positions = self._select(table, filters)
            if sort is not None:
                positions = self._sort(table, positions, sort)
            if offset or limit is not None:
                end = None if limit is None else offset + limit
                positions = positions[offset:end]
            pks, cols = table._rows_at(positions)
        return Rows(table, pks, cols)

    def count(self, model: Any, **filters: Any) -> int:
        """Return how many rows match the filters."""
        table = self.table(model)
        with self.lock:
            if not filters:
                return len(table)
            return len(self._select(table, filters))

    def aggregate(self, model: Any, field: str, how: str = "sum", **filters: Any) -> Any:
        """Return ``count``, ``sum``, ``mean``, ``min``, ``max``, ``median`` or ``std`` of a
        numeric field over the rows matching the filters (None when no row matches)."""
        table = self.table(model)
        if how not in AGGREGATES:
            raise DatabaseError(f"unknown aggregate {how!r} (use {', '.join(AGGREGATES)})")
        spec = table.field(field)
        if spec.kind not in ("int", "float", "bool") or spec.nullable:
            raise DatabaseError(f"{spec.where}: cannot aggregate a {spec.describe()} field")
        with self.lock:
            positions = self._select(table, filters) if filters else None
            array = table._array(field)
            if positions is None:
                positions = table._live_positions()
            if positions is None:   # the table's own array: reduce it under the lock
                return _reduce(array, how)
            values = array[positions]
        return _reduce(values, how)

    def frame(self, model: Any) -> pd.DataFrame:
        """Return the table as a pandas DataFrame to read (``pk`` first).

        The frame is built once per version of the table and shared copy-on-write:
        changing the frame you get changes neither the database nor other readers.
        """
        table = self.table(model)
        with self.lock:
            version = table.version
            cached = table._frame
            if cached is not None and cached[0] == version:
                return self._reader_copy(table, cached[1])
            live = table._live_positions()
            arrays = {name: table._export(name) for name in ("pk",) + table.schema.names}
        data = {}
        for name, array in arrays.items():
            if live is not None:
                array = array[live]
                array.flags.writeable = False
            field = table.fields.get(name)
            if field is not None and (field.nullable or field.kind in ("list", "set", "dict")):
                data[name] = pd.Series(array, dtype=object, copy=False)  # keep None as None
            else:
                data[name] = array
        frame = pd.DataFrame(data, copy=False)
        with self.lock:
            if table.version == version:
                table._frame = (version, frame)
        return self._reader_copy(table, frame)

    @staticmethod
    def _reader_copy(table: Table, frame: pd.DataFrame) -> pd.DataFrame:
        """Return a copy-on-write view of a cached frame, with its own container cells."""
        out = frame.copy(deep=False)
        for name, field in table.fields.items():
            if field.kind in ("list", "set", "dict"):
                cells = np.fromiter((clone(v) for v in frame[name].to_numpy()), dtype=object,
                                    count=len(frame))
                out[name] = pd.Series(cells, index=out.index, dtype=object, copy=False)
        return out

    # --- filters ----------------------------------------------------------------------------

    def _pk_of(self, table: Table, row: Any) -> str:
        if isinstance(row, Model):
            if not isinstance(row, table.model):
                raise ValidationError(f"expected a {table.name}, got a {type(row).__name__}")
            return row.pk
        if isinstance(row, str) and row:
            return row
        raise ValidationError(f"{table.name}.pk: expected a non-empty str or a {table.name}, "
                              f"got {type(row).__name__}")

    def _parse(self, table: Table, filters: dict[str, Any]) -> tuple[
            list[_Filter], dict[str, dict[str, Any]]]:
        """Split filters into plain ones and ones that follow a reference.

        A key is ``field`` (equality), ``field__op`` (an operator of :data:`OPS`), or
        ``ref__...`` to filter on the fields of the referenced rows
        (``author__name='bob'``, ``author__team__name__contains='x'``).
        """
        plain: list[_Filter] = []
        follow: dict[str, dict[str, Any]] = {}
        for key, value in filters.items():
            if key.startswith("_"):
                raise DatabaseError(f"unknown query option {key!r} (use _sort, _limit, "
                                    "_offset)")
            name, _, rest = key.partition("__")
            field = table.field(name)
            if rest:
                head = rest.partition("__")[0]
                if field.kind == "ref" and (head == "pk" or head in field.ref._schema().fields
                                            or "__" in rest):
                    follow.setdefault(name, {})[rest] = value
                    continue
                if rest not in OPS:
                    raise DatabaseError(f"{table.name}: unknown filter {key!r} "
                                        f"(operators: {', '.join(sorted(OPS))})")
                op = rest
            else:
                op = "eq"
            plain.append(_Filter(key, field, op, self._filter_value(table, key, field, op,
                                                                    value)))
        return plain, follow

    def _filter_value(self, table: Table, key: str, field: Field, op: str, value: Any) -> Any:
        """Check a filter's value against the field's type (ValidationError naming the key)."""
        try:
            if op in ("in", "nin"):
                if not isinstance(value, (list, tuple, set, frozenset)):
                    raise ValidationError(f"expected a list of values, got "
                                          f"{type(value).__name__}")
                return [self._one_value(field, v) for v in value]
            if op in ("contains", "icontains", "startswith", "endswith", "regex"):
                if field.kind in ("list", "set") and op == "contains":
                    return field.check_item(value) if field.item else value
                if field.kind == "dict" and op == "contains":
                    if not isinstance(value, str):
                        raise ValidationError(f"expected a str key, got {type(value).__name__}")
                    return value
                if field.kind != "str" and field.name != "pk" and field.kind != "ref":
                    raise ValidationError(f"{op} needs a str field, not {field.describe()}")
                if not isinstance(value, str):
                    raise ValidationError(f"expected str, got {type(value).__name__}")
                if op == "regex":
                    try:
                        return re.compile(value)
                    except re.error as exc:
                        raise ValidationError(f"bad regular expression: {exc}") from None
                return value
            if op in _ORDER:
                if field.kind in ("list", "set", "dict", "bool"):
                    raise ValidationError(f"cannot order a {field.describe()} field")
                if value is None:
                    raise ValidationError("cannot compare with None")
            return self._one_value(field, value)
        except ValidationError as exc:
            text = str(exc)
            prefix = f"{field.where}: "
            text = text[len(prefix):] if text.startswith(prefix) else text
            raise ValidationError(f"{table.name} filter {key}: {text}") from None

    @staticmethod
    def _one_value(field: Field, value: Any) -> Any:
        if field.kind == "ref" and isinstance(value, Model):
            return value.pk
        return field.check(value)

    def _select(self, table: Table, filters: dict[str, Any]) -> Any:
        """Return the positions of live rows matching every filter, ascending (lock held)."""
        plain, follow = self._parse(table, filters)
        pk_filter = next((f for f in plain if f.field is table.pk_field and f.op == "eq"), None)
        if pk_filter is not None:   # one dict lookup instead of a scan
            pos = table.index.get(pk_filter.value)
            candidates = np.array([] if pos is None else [pos], dtype=np.int64)
            plain = [f for f in plain if f is not pk_filter]
        else:
            candidates = None
            for flt in plain:   # an equality on an indexed column: look up, do not scan
                if flt.op == "eq" and flt.field is not table.pk_field:
                    found = table._index_lookup(flt.field.name, flt.value)
                    if found is not None:
                        candidates = found
                        plain = [f for f in plain if f is not flt]
                        break
        if candidates is None:
            for flt in plain:   # a text search: its few matches are the candidates
                if flt.op in _TEXT_OPS and _searchable(flt):
                    found = table._find(flt.field.name, flt.op, flt.value)
                    if found is not None:
                        if table.dead:
                            found = found[np.frombuffer(bytes(table.live), np.bool_)[found]]
                        candidates = found
                        plain = [f for f in plain if f is not flt]
                        break
        mask = None
        for flt in plain:
            part = self._mask(table, flt, candidates)
            mask = part if mask is None else mask & part
        for name, sub in follow.items():
            target = self._tables[table.fields[name].ref.__name__]
            keys = set(target._array("pk")[self._select(target, sub)].tolist())
            array = table._array(name)
            if candidates is not None:
                array = array[candidates]
            part = _isin_object(array, keys)
            mask = part if mask is None else mask & part
        if candidates is not None:
            positions = candidates if mask is None else candidates[mask]
            return positions
        if mask is None:
            return table._all_positions()
        if table.dead:
            mask = mask & np.frombuffer(bytes(table.live), dtype=np.bool_)
        return np.flatnonzero(mask)

    def _mask(self, table: Table, flt: _Filter, candidates: np.ndarray | None) -> np.ndarray:
        """Return the boolean mask of one filter over every slot (or over *candidates*)."""
        field, op, value = flt.field, flt.op, flt.value
        array = table._array(field.name)
        if candidates is not None:
            array = array[candidates]
        n = len(array)
        if op in ("eq", "ne"):
            if array.dtype != object and value is not None:
                mask = array == value
            elif field.kind in ("str", "ref") and value is not None:
                mask = np.asarray(array == value, dtype=bool)
            else:
                mask = np.fromiter((v == value for v in array), dtype=bool, count=n)
            return ~mask if op == "ne" else mask
        if op in _ORDER:
            compare = _ORDER[op]
            if array.dtype != object:
                return compare(array, value)
            if not field.nullable:
                try:
                    return np.asarray(compare(array, value), dtype=bool)
                except TypeError:
                    pass
            return np.fromiter((v is not None and compare(v, value) for v in array),
                               dtype=bool, count=n)
        if op in ("in", "nin"):
            if array.dtype != object:
                mask = np.isin(array, np.array(value, dtype=array.dtype))
            elif field.kind in ("list", "set", "dict"):
                mask = np.fromiter((v in value for v in array), dtype=bool, count=n)
            else:
                mask = _isin_object(array, set(value))
            return ~mask if op == "nin" else mask
        if op == "contains" and field.kind in ("list", "set", "dict"):
            return np.fromiter((value in v for v in array), dtype=bool, count=n)
        if op == "regex":
            search = value.search
            return np.fromiter((v is not None and search(v) is not None for v in array),
                               dtype=bool, count=n)
        if op == "icontains":
            needle = value.casefold()
            return np.fromiter((v is not None and needle in v.casefold() for v in array),
                               dtype=bool, count=n)
        method = {"contains": str.__contains__, "startswith": str.startswith,
                  "endswith": str.endswith}[op]
        return np.fromiter((v is not None and method(v, value) for v in array),
                           dtype=bool, count=n)

    def _sort(self, table: Table, positions: np.ndarray, sort: Any) -> np.ndarray:
        """Order *positions* by one or more ``field`` / ``-field`` keys, stably (lock held)."""
        keys = [sort] if isinstance(sort, str) else list(sort)
        order = np.arange(len(positions))
        for key in reversed(keys):
            if not isinstance(key, str) or not key.strip("-"):
                raise ValidationError(f"_sort: expected a field name, got {key!r}")
            descending = key.startswith("-")
            field = table.field(key.lstrip("-"))
            if field.kind in ("list", "set", "dict"):
                raise ValidationError(f"_sort: cannot order by {field.where} "
                                      f"({field.describe()})")
            values = table._array(field.name)[positions[order]]
            order = order[_argsort(values, descending)]
        return positions[order]


def _isin_object(array: np.ndarray, keys: set) -> np.ndarray:
    """Return a mask of the items of an object array that are in *keys*."""
    if not keys:
        return np.zeros(len(array), dtype=bool)
    if len(keys) == 1:
        (key,) = keys
        return np.asarray(array == key, dtype=bool) if key is not None else \
            np.fromiter((v is None for v in array), dtype=bool, count=len(array))
    contains = keys.__contains__
    return np.fromiter(map(contains, array), dtype=bool, count=len(array))


def _searchable(flt: _Filter) -> bool:
    """Tell whether a text filter can search the joined text of its column."""
    return (flt.field.kind in ("str", "ref") and flt.value.__class__ is str
            and flt.value != "" and "\x00" not in flt.value)


def _reduce(values: np.ndarray, how: str) -> Any:
    """Return one aggregate of *values* as a Python value (None when there are none)."""
    if how == "count":
        return int(len(values))
    if not len(values):
        return None
    result = getattr(np, how)(values)
    return result.item() if hasattr(result, "item") else result


def _argsort(values: np.ndarray, descending: bool) -> np.ndarray:
    """Return a stable ascending (or descending) order of *values*; None sorts last."""
    n = len(values)
    if values.dtype != object:
        if values.dtype == np.bool_:
            values = values.astype(np.int8)
        if not descending:
            return np.argsort(values, kind="stable")
        return (n - 1) - np.argsort(values[::-1], kind="stable")[::-1]
    items = values.tolist()
    present = [i for i in range(n) if items[i] is not None]
    missing = [i for i in range(n) if items[i] is None]
    present.sort(key=items.__getitem__, reverse=descending)
    return np.array(present + missing, dtype=np.int64)
