"""The engine of one table: numpy columns, a list tail, the pk index and the caches.

See :mod:`lexicons.data.database` for the theory of operation; this module holds
the storage of one model's rows and the primitives the database composes (insert,
set, kill, revive, compact, index, text search, export), each under the
database's lock.
"""
from __future__ import annotations

import re
from array import array as Slots
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lexicons.data.fastpath import compile_table
from lexicons.data.model import Field, Model, Schema, clone, new_pk
from lexicons.errors import DatabaseError, IntegrityError, ValidationError

if TYPE_CHECKING:
    from lexicons.data.database import Database

#: Tombstones are compacted away when there are more of them than this and than live rows.
COMPACT_MIN = 4096
#: Tables with fewer rows than this are scanned, not indexed, for equality filters.
INDEX_MIN = 2048
#: Rows created since the columns were last extended wait in Python lists (quick to
#: append to) up to this many; then, or at the next scan, they join the numpy columns.
TAIL_MAX = 8192
#: Slots per piece of the joined text that substring filters search (cached per piece).
TEXT_CHUNK = 1 << 18
_PK_FIELD_KIND = "str"
_SCALAR_DTYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_}


def _pk_field(model: str) -> Field:
    field = Field(model, "pk", "str")
    return field


# --- tables ---------------------------------------------------------------------------


class Table:
    """The rows of one Model: numpy columns, a list tail, the pk index and the caches.

    Methods whose name starts with ``_`` and that touch the columns need the
    database lock held by the caller; the generated ``create``/``get_pk``
    take it themselves.
    """

    def __init__(self, db: Database, schema: Schema):
        self.db = db
        self.schema = schema
        self.model = schema.model
        self.name = schema.name
        self.fields = schema.fields
        self.pk_field = _pk_field(self.name)
        self.containers = tuple(n for n, f in schema.fields.items()
                                if f.kind in ("list", "set", "dict"))
        names = ("pk",) + schema.names
        self.dtypes = {name: _dtype(self.field(name)) for name in names}
        # Slots [0, hn) live in the arrays, slots [hn, len(live)) in the tail lists.
        self.arrays: dict[str, np.ndarray] = {n: np.empty(0, self.dtypes[n]) for n in names}
        self.hn = 0
        self.pks: list[str] = []
        self.cols: dict[str, list] = {name: [] for name in schema.names}
        self.getters: list[Any] = []      # per field: reads one slot of its array
        self.live = bytearray()
        self.index: dict[str, int] = {}
        self.dead = 0
        self.compactions = 0      # bumped when slots move: an undo of a drop checks it
        self.version = 0          # bumped by every write: dirty tracking for snapshots
        self.saved_version = 0    # the version last written to disk
        self.livemut = 0
        self._shared: set[str] = set()    # columns whose array a reader may hold
        self._livecache: tuple[int, int, np.ndarray | None] | None = None
        self._text: dict[tuple[str, int, bool], tuple[int, str | None, Any]] = {}
        self._frame: tuple[int, pd.DataFrame] | None = None
        # Equality indexes, built on the first equality filter of a column of a large
        # table: value -> position, or array('q') of positions. Entries may be stale (a
        # position whose value changed or that died); look-ups check each position.
        self.eqidx: dict[str, dict[Any, Any]] = {}
        self._eqstale: dict[str, int] = {}
        self.create: Any = None
        self.get_pk: Any = None
        self.make_rows: Any = None
        self._rebind()

    def __len__(self) -> int:
        return len(self.live) - self.dead

    def field(self, name: str) -> Field:
        """Return the field named *name* (``pk`` included) or raise DatabaseError."""
        if name == "pk":
            return self.pk_field
        field = self.fields.get(name)
        if field is None:
            raise DatabaseError(f"{self.name} has no field {name!r}")
        return field

    # --- generated hot paths -------------------------------------------------------

    def compile(self) -> None:
        """Generate ``create``, ``get_pk`` and ``make_rows`` for this model's fields."""
        self.create, self.get_pk, self.make_rows = compile_table(self, TAIL_MAX)

    def _create_slow(self, kw: dict[str, Any]) -> Model:
        """Create a row through the model's constructor (it has computed fields)."""
        instance = self.model(**kw)
        values = {name: instance.__dict__[name] for name in self.schema.names}
        values["pk"] = instance.__dict__["pk"]
        given = "pk" in kw
        with self.db.lock:
            self.db._wait_turn()
            pk = values["pk"]
            if pk in self.index:
                if given:
                    self._duplicate(pk)
                while pk in self.index:
                    pk = new_pk()
                values["pk"] = instance.__dict__["pk"] = pk
            self._check_refs(values)
            row = tuple(values[n] for n in self.schema.names)
            self._insert(pk, row)
            self.db._record(("c", self.name, (pk,) + row), (self, "c", pk), self.db._local.tx)
        return instance

    def _unknown(self, kw: dict[str, Any]) -> None:
        name = next(iter(kw))
        raise ValidationError(f"{self.name} has no field {name!r}")

    def _duplicate(self, pk: str) -> None:
        raise ValidationError(f"{self.name}: a row with pk {pk!r} exists")

    def _dangling(self, field: Field, pk: str) -> None:
        raise IntegrityError(f"{field.where}: no {field.ref.__name__} with pk {pk!r}")

    def _check_refs(self, values: dict[str, Any]) -> None:
        """Refuse references to rows that do not exist (lock held)."""
        for name, field in self.schema.refs.items():
            pk = values.get(name)
            if pk is not None and pk not in self.db._tables[field.ref.__name__].index:
                self._dangling(field, pk)

    # --- the columns (lock held) --------------------------------------------------------

    def _rebind(self) -> None:
        """Point the slot readers of the generated code at the current arrays."""
        readers = []
        for name in self.schema.names:
            array = self.arrays[name]
            readers.append(array.__getitem__ if array.dtype == object else array.item)
        self.getters[:] = readers

    def _flush(self) -> None:
        """Move the tail rows into the arrays (lock held).

        Arrays grow by half their size at least, so appends cost O(1) amortised.
        Growing makes new arrays; writing past ``hn`` never touches the part a
        reader holds, so neither needs a copy.
        """
        k = len(self.pks)
        if not k:
            return
        hn = self.hn
        end = hn + k
        arrays = self.arrays
        if end > len(arrays["pk"]):
            capacity = max(end + TAIL_MAX, hn + hn // 2)
            for name, array in arrays.items():
                grown = np.empty(capacity, dtype=array.dtype)
                grown[:hn] = array[:hn]
                arrays[name] = grown
            self._shared.clear()
        arrays["pk"][hn:end] = _to_array(self.pk_field, self.pks)
        for name, column in self.cols.items():
            arrays[name][hn:end] = _to_array(self.fields[name], column)
            column.clear()
        self.pks.clear()
        self.hn = end
        self._rebind()

    def _unshare(self, name: str) -> None:
        """Give column *name* an array of its own before writing into it in place."""
        self.arrays[name] = self.arrays[name].copy()
        self._shared.discard(name)
        self._rebind()

    def _value(self, name: str, pos: int) -> Any:
        """Return the stored value of one slot (no copy)."""
        p = pos - self.hn
        if p >= 0:
            return (self.pks if name == "pk" else self.cols[name])[p]
        return self.arrays[name].item(pos)

    def _row(self, pos: int) -> dict[str, Any]:
        """Return the stored field values of one slot (no copies)."""
        return {name: self._value(name, pos) for name in self.schema.names}

    # --- raw writes (lock held; no checks, no journal) ------------------------------

    def _insert(self, pk: str, values: tuple) -> None:
        pos = len(self.live)
        self.index[pk] = pos
        self.pks.append(pk)
        for column, value in zip(self.cols.values(), values, strict=False):
            column.append(value)
        self.live.append(1)
        self.version += 1
        if self.eqidx:
            self._index_row(pos)
        if len(self.pks) >= TAIL_MAX:
            self._flush()

    def _set(self, pos: int, changes: dict[str, Any]) -> None:
        hn = self.hn
        for name, value in changes.items():
            if pos >= hn:
                self.cols[name][pos - hn] = value
            else:
                if name in self._shared:
                    self._unshare(name)
                self.arrays[name][pos] = value
                chunk = pos - pos % TEXT_CHUNK
                self._text.pop((name, chunk, False), None)
                self._text.pop((name, chunk, True), None)
            index = self.eqidx.get(name)
            if index is not None:
                _index_add(index, value, pos)
                self._eqstale[name] += 1
                if self._eqstale[name] > len(self.live):   # mostly stale: build it again
                    del self.eqidx[name]
        self.version += 1

    def _index_row(self, pos: int) -> None:
        """Add the row at *pos* to every equality index (lock held)."""
        for name, index in self.eqidx.items():
            _index_add(index, self._value(name, pos), pos)

    def _build_index(self, name: str) -> dict[Any, Any]:
        """Return the equality index of column *name*: value -> slot or array of slots."""
        array = self._array(name)
        codes, uniques = pd.factorize(array)      # None gets code -1
        counts = np.bincount(codes + 1, minlength=len(uniques) + 1)
        order = np.argsort(codes, kind="stable")  # slots grouped by value, ascending
        stops = np.cumsum(counts)
        keys = [None, *uniques.tolist()]
        single = np.flatnonzero(counts == 1)
        index: dict[Any, Any] = dict(zip([keys[k] for k in single.tolist()],
                                         order[stops[single] - 1].tolist(), strict=True))
        for k in np.flatnonzero(counts > 1).tolist():
            slots = order[stops[k] - counts[k]:stops[k]]
            index[keys[k]] = Slots("q", slots.tobytes())
        return index

    def _index_lookup(self, name: str, value: Any) -> np.ndarray | None:
        """Return the live positions whose *name* equals *value*, ascending, by the
        column's equality index (built here when worth it); None when there is none."""
        index = self.eqidx.get(name)
        if index is None:
            field = self.fields[name]
            if len(self.live) < INDEX_MIN or field.kind not in ("str", "int", "ref"):
                return None
            index = self.eqidx[name] = self._build_index(name)
            self._eqstale[name] = 0
        entry = index.get(value)
        if entry is None:
            return np.zeros(0, dtype=np.int64)
        if entry.__class__ is int:
            slots = np.array([entry], dtype=np.int64)
        elif len(entry) * 8 > len(self.live):   # a common value: a vectorised scan is cheaper
            return None
        else:
            slots = np.frombuffer(entry, dtype=np.int64).copy()   # entry may grow later
        if self._eqstale[name] == 0 and not self.dead:
            return slots   # appended in slot order, never changed: ascending
        self._flush()
        slots = np.unique(slots)
        keep = np.frombuffer(bytes(self.live), dtype=np.bool_)[slots]
        keep &= _equal(self.arrays[name][slots], value)
        return slots[keep]

    def _kill(self, pos: int) -> None:
        pk = self._value("pk", pos)
        del self.index[pk]
        self.live[pos] = 0
        self.dead += 1
        self.livemut += 1
        self.version += 1
        if self.dead > COMPACT_MIN and self.dead * 2 > len(self.live):
            self._compact()

    def _revive(self, pk: str, pos: int, values: tuple, compactions: int) -> None:
        """Bring back the row *pk* dropped from slot *pos* (undoing a drop; lock held).

        In its old slot when no compaction moved the slots since, else as a new row.
        """
        if (compactions == self.compactions and pos < len(self.live) and not self.live[pos]
                and pk not in self.index and self._value("pk", pos) == pk):
            self.live[pos] = 1
            self.index[pk] = pos
            self.dead -= 1
            self.livemut += 1
            self.version += 1
        elif pk not in self.index:
            self._insert(pk, values)

    def _compact(self) -> None:
        """Remove tombstones: new arrays of the live rows, the index and live bytes anew."""
        self._flush()
        keep = np.frombuffer(bytes(self.live), dtype=np.bool_)
        for name, array in self.arrays.items():
            self.arrays[name] = array[:self.hn][keep]
        self.hn = n = len(self.arrays["pk"])
        self.index.clear()
        self.index.update(zip(self.arrays["pk"].tolist(), range(n), strict=True))
        self.live[:] = b"\x01" * n
        self.dead = 0
        self.compactions += 1
        self._changed_all()

    def _changed_all(self) -> None:
        """Forget every cache of the columns (they were replaced)."""
        self.livemut += 1
        self._shared.clear()
        self._text.clear()
        self.eqidx.clear()
        self._rebind()

    def _clear(self) -> None:
        self.pks.clear()
        for column in self.cols.values():
            column.clear()
        for name, dtype in self.dtypes.items():
            self.arrays[name] = np.empty(0, dtype)
        self.hn = 0
        self.index.clear()
        self.live.clear()
        self.dead = 0
        self.compactions += 1
        self._changed_all()
        self.version += 1

    def _load(self, pks: Sequence[str], cols: dict[str, Sequence],
              index: dict[str, int] | None = None) -> None:
        """Replace every row with loaded columns (trusted, checked by the loader).

        *pks* and the columns are lists or numpy arrays of the table's dtypes;
        *index*, when the loader built it already, maps each pk to its slot.
        """
        self._clear()
        n = len(pks)
        self.arrays["pk"] = _column(self.pk_field, self.dtypes["pk"], pks)
        for name in self.schema.names:
            self.arrays[name] = _column(self.fields[name], self.dtypes[name], cols[name])
        self.hn = n
        if index is None:
            index = dict(zip(self.arrays["pk"].tolist(), range(n), strict=True))
        self.index.update(index)
        self.live.extend(b"\x01" * n)
        self._shared.update(self.arrays)   # the loader's arrays: copy before writing into them
        self._rebind()
        self.version += 1

    # --- reads (lock held) ------------------------------------------------------------

    def _array(self, name: str) -> np.ndarray:
        """Return column *name* (or ``pk``) as an array over every slot.

        The array is the table's own: use it under the lock and keep no reference
        (see :meth:`_export` for one that may be kept).
        """
        if self.pks:
            self._flush()
        return self.arrays[name][:self.hn]

    def _export(self, name: str) -> np.ndarray:
        """Return column *name* as a read-only array a reader may keep.

        The column is marked shared: the next write into its slots copies it first.
        """
        array = self._array(name)
        self._shared.add(name)
        view = array.view()
        view.flags.writeable = False
        return view

    def _live_positions(self) -> np.ndarray | None:
        """Return the positions of live rows, or None when no row is dead."""
        if not self.dead:
            return None
        n = len(self.live)
        cached = self._livecache
        if cached is not None and cached[0] == n and cached[1] == self.livemut:
            return cached[2]
        positions = np.flatnonzero(np.frombuffer(bytes(self.live), dtype=np.uint8))
        self._livecache = (n, self.livemut, positions)
        return positions

    def _all_positions(self) -> np.ndarray:
        live = self._live_positions()
        return np.arange(len(self.live)) if live is None else live

    def _text_chunk(self, name: str, base: int, fold: bool) -> tuple[str, np.ndarray] | None:
        """Return slots ``base..base+TEXT_CHUNK`` of a str column joined by NUL (None as
        ``''``; casefolded with *fold*) and each slot's start offset; None when a value
        holds a NUL. Cached until a slot of the chunk changes."""
        stop = min(base + TEXT_CHUNK, self.hn)
        key = (name, base, fold)
        cached = self._text.get(key)
        if cached is not None and cached[0] == stop - base:
            return None if cached[1] is None else (cached[1], cached[2])
        values = self.arrays[name][base:stop].tolist()
        if None in values:
            values = ["" if v is None else v for v in values]
        text = "\x00".join(values)
        if text.count("\x00") != len(values) - 1:
            self._text[key] = (stop - base, None, None)
            return None
        if fold:
            folded = text.casefold()
            if len(folded) != len(text):
                values = folded.split("\x00")
            text = folded
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values)) + 1
        starts = np.zeros(len(values), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        self._text[key] = (stop - base, text, starts)
        return text, starts

    def _find(self, name: str, op: str, needle: str) -> np.ndarray | None:
        """Return the slots (ascending, dead ones too) whose text matches *needle* per
        *op* (contains, icontains, startswith, endswith), searching the joined pieces;
        None when a value holds a NUL (the caller then tests each value)."""
        self._array(name)
        parts = []
        fold = op == "icontains"
        if fold:
            needle = needle.casefold()
        pattern = {"startswith": "\x00" + needle, "endswith": needle + "\x00"}.get(op, needle)
        for base in range(0, self.hn, TEXT_CHUNK):
            chunk = self._text_chunk(name, base, fold)
            if chunk is None:
                return None
            text, starts = chunk
            found = _occurrences(text, pattern)
            if op == "startswith":
                found += 1     # the slot begins after the NUL
                if text.startswith(needle):
                    found = np.concatenate(([0], found))
            elif op == "endswith" and text.endswith(needle):
                found = np.concatenate((found, [len(text) - 1]))
            if len(found):
                slots = np.searchsorted(starts, found, side="right") - 1
                if len(slots) > 1:   # one slot may hold several occurrences
                    slots = slots[np.concatenate(([True], slots[1:] != slots[:-1]))]
                parts.append(slots + base)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _rows_at(self, positions: Any) -> tuple[list[str], dict[str, list]]:
        """Copy the rows at *positions* out of the columns."""
        positions = np.asarray(positions, dtype=np.int64)
        pks = self._array("pk")[positions].tolist()
        cols = {name: self.arrays[name][:self.hn][positions].tolist() for name in self.cols}
        return pks, cols

    def _live_rows(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return every live row as read-only arrays (for snapshots); no copy when no
        row is dead."""
        live = self._live_positions()
        names = ("pk",) + self.schema.names
        if live is None:
            arrays = {name: self._export(name) for name in names}
        else:
            arrays = {name: self._array(name)[live] for name in names}
        return arrays.pop("pk"), arrays

    def _instance(self, pk: str, row: dict[str, Any]) -> Model:
        instance = object.__new__(self.model)
        d = instance.__dict__
        d["pk"] = pk
        for name, value in row.items():
            d[name] = clone(value) if value.__class__ in (list, set, dict) else value
        return instance


def _dtype(field: Field) -> Any:
    """Return the numpy dtype a field's column is kept in."""
    if field.nullable:
        return object
    return _SCALAR_DTYPES.get(field.kind, object)


def _column(field: Field, dtype: Any, values: Sequence) -> np.ndarray:
    """Return *values* as a column array of *dtype* (arrays of that dtype as they are)."""
    if isinstance(values, np.ndarray) and values.dtype == dtype and values.ndim == 1:
        return values
    return _to_array(field, list(values))


def _equal(array: np.ndarray, value: Any) -> np.ndarray:
    """Return the mask of the items of *array* equal to *value*."""
    if array.dtype != object and value is not None:
        return np.asarray(array == value, dtype=bool)
    if value is None:
        return np.fromiter((v is None for v in array), dtype=bool, count=len(array))
    return np.asarray(array == value, dtype=bool)


def _occurrences(text: str, pattern: str) -> np.ndarray:
    """Return the offsets of the non-overlapping occurrences of *pattern* in *text*."""
    # The regular expression engine scans for a literal faster than str.find or
    # str.count do when its first character is common in the text.
    finder = _finders.get(pattern)
    if finder is None:
        if len(_finders) > 256:
            _finders.clear()
        finder = _finders[pattern] = re.compile(re.escape(pattern)).finditer
    found = [match.start() for match in finder(text)]
    return np.array(found, dtype=np.int64)


_finders: dict[str, Any] = {}



def _to_array(field: Field, values: list) -> np.ndarray:
    dtype = None if field.nullable else _SCALAR_DTYPES.get(field.kind)
    if dtype is not None:
        return np.fromiter(values, dtype=dtype, count=len(values))
    return np.fromiter(values, dtype=object, count=len(values))


# --- query results ----------------------------------------------------------------------


def _index_add(index: dict[Any, Any], value: Any, pos: int) -> None:
    entry = index.get(value)
    if entry is None:
        index[value] = pos
    elif entry.__class__ is int:
        index[value] = Slots("q", (entry, pos))
    else:
        entry.append(pos)

