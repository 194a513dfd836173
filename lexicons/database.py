"""The in-memory database: one table per Model, numpy columns, vectorised scans.

Theory of operation
-------------------
A :class:`Table` keeps each field as a numpy array (int64, float64 and bool for
plain numbers, object for the rest), plus a ``pk -> slot`` dict, so ``get(pk)``
is one dict lookup and one read per field. Rows just created wait in Python
lists, the *tail*, where ``create`` is a handful of list appends; every
``TAIL_MAX`` creates, and before any scan, the tail moves into the arrays, which
grow by half at least (amortised O(1) a row). A dropped row leaves a tombstone
(its byte in ``live`` turns 0); tombstones are compacted away once they
outnumber the live rows.

Scans are numpy expressions over the arrays themselves, with no copy to make
first. An equality filter on a large table builds an index of the column on
first use (value -> slots) and keeps it up to date. Text filters (contains,
icontains, startswith, endswith) search the column joined by NUL, cut in pieces
of ``TEXT_CHUNK`` slots and cached per piece until a slot of it changes; the
few matching slots are then the candidates the other filters look at.
``db.<Model>`` is a pandas DataFrame over the arrays (cached until the next
write; each reader gets a copy-on-write view). An array a reader may hold is
marked *shared*: the next write into one of its slots copies it first, so a
frame never changes under its reader. The garbage collector never walks a
table: numpy arrays, the index dict (of str and int) and the text are not
containers it tracks, and the tail stays short.

One lock serialises every write and every read of the buffers, so a reader
never sees half a write. Values are checked before the lock is taken; the
part under the lock is short (appends, index updates, the journal hand-off).
Stored values are never changed in place: an update stores a new object. So an
array, a query result or a journal record may hold a stored container without
copying it; anything handed to a caller is a copy.

Durability is pluggable: with a journal attached, every write hands it a small
record (``('c', table, values)``, ``('u', table, pk, fields)``, ``('d', table,
pk)``) while the lock is held, so the journal's order is the order of the
writes; :meth:`Database.commit` waits until the calling thread's writes are
durable per the journal's policy. Every write passes :meth:`Database._record`,
which holds the records of a thread's open :meth:`Database.transaction` back
(with how to undo each) until it ends: journaled in order when it succeeds,
undone when it raises.

What the calls return
---------------------
``create``, ``get``, ``update`` and ``get_or_create`` return Model instances
(detached copies). ``query`` returns :class:`Rows`: a sequence of instances,
made only when read, holding a consistent copy of the matching rows; it also
gives ``.pks``, ``.to_dicts()`` (JSON-ready) and ``.frame()`` (a DataFrame)
without making instances at all. Making many instances at once pauses the
cyclic garbage collector (see :func:`_gc_paused`).
"""
from __future__ import annotations

import gc
import hashlib
import json
import operator
import re
import threading
from array import array as Slots
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from .errors import DatabaseError, DoesNotExist, IntegrityError, MultipleRowsFound, ValidationError
from .model import INT_MAX, INT_MIN, MISSING, Field, Model, Schema, check_pk, clone, new_pk, to_json

#: The filter operators, as in ``query(User, age__gt=30)``.
OPS = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "in", "nin", "contains", "icontains",
                 "startswith", "endswith", "regex", "min", "max"})
_ORDER = {"gt": operator.gt, "lt": operator.lt, "ge": operator.ge, "le": operator.le,
          "min": operator.ge, "max": operator.le}
#: Tombstones are compacted away when there are more of them than this and than live rows.
COMPACT_MIN = 4096
#: Tables with fewer rows than this are scanned, not indexed, for equality filters.
INDEX_MIN = 2048
#: Rows created since the columns were last extended wait in Python lists (quick to
#: append to) up to this many; then, or at the next scan, they join the numpy columns.
TAIL_MAX = 8192
#: Slots per piece of the joined text that substring filters search (cached per piece).
TEXT_CHUNK = 1 << 18
#: Aggregates accepted by :meth:`Database.aggregate`.
AGGREGATES = ("count", "sum", "mean", "min", "max", "median", "std")

_PK_FIELD_KIND = "str"
_TEXT_OPS = frozenset({"contains", "icontains", "startswith", "endswith"})
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
        names = self.schema.names
        env: dict[str, Any] = {
            "LOCK": self.db.lock, "INDEX": self.index, "PKS": self.pks, "T": self,
            "DB": self.db, "TL": self.db._local, "NAME": self.name, "CLS": self.model,
            "NEW": object.__new__, "NEW_PK": new_pk, "CHECK_PK": check_pk,
            "MISSING": MISSING, "CLONE": clone, "PKS_APPEND": self.pks.append,
            "LIVE": self.live, "LIVE_APPEND": self.live.append, "INT_MIN": INT_MIN,
            "INT_MAX": INT_MAX, "SETTERS": frozenset(self.schema.setters),
            "SLOW": self._create_slow, "UNKNOWN": self._unknown, "DUP": self._duplicate,
            "DANGLING": self._dangling, "G": self.getters, "TAIL_MAX": TAIL_MAX,
            "FLUSH": self._flush, "TURN": self.db._wait_turn, "RECORD": self.db._record,
        }
        lines = ["def create(kw):"]
        if self.schema.setters:
            lines.append("    if not SETTERS.isdisjoint(kw): return SLOW(kw)")
        lines += ["    pk = kw.pop('pk', None)",
                  "    if pk is not None and (pk.__class__ is not str or not pk):",
                  "        pk = CHECK_PK(NAME, pk)"]
        checks: list[str] = []
        for i, name in enumerate(names):
            field = self.fields[name]
            env[f"F{i}"] = field
            env[f"C{i}"] = field.check
            env[f"D{i}"] = field.default
            env[f"A{i}"] = self.cols[name].append
            env[f"L{i}"] = self.cols[name]
            if field.kind in ("list", "set", "dict"):
                lines.append(f"    v{i} = kw.pop({name!r}, MISSING)")
                lines.append(f"    v{i} = F{i}.fresh_default() if v{i} is MISSING else C{i}(v{i})")
                continue
            lines.append(f"    v{i} = kw.pop({name!r}, D{i})")
            test = _fast_test(field, f"v{i}")
            lines.append(f"    if {test}: v{i} = C{i}(v{i})")
            if field.kind == "ref":
                env[f"R{i}"] = self.db._tables[field.ref.__name__].index
                checks.append(f"        if v{i} is not None and v{i} not in R{i}: "
                              f"DANGLING(F{i}, v{i})")
        values = "".join(f", v{i}" for i in range(len(names)))
        lines += ["    if kw: UNKNOWN(kw)",
                  "    with LOCK:",
                  "        if DB._owner is not None: TURN()",
                  "        if pk is None:",
                  "            pk = NEW_PK()",
                  "            while pk in INDEX: pk = NEW_PK()",
                  "        elif pk in INDEX: DUP(pk)"]
        lines += checks
        lines += ["        pos = len(LIVE)",
                  "        INDEX[pk] = pos",
                  "        PKS_APPEND(pk)"]
        lines += [f"        A{i}(v{i})" for i in range(len(names))]
        env["EQ"] = self.eqidx
        env["INDEX_ROW"] = self._index_row
        lines += ["        LIVE_APPEND(1)",
                  "        if EQ: INDEX_ROW(pos)",
                  "        if len(PKS) >= TAIL_MAX: FLUSH()",
                  "        T.version += 1",
                  # _record, inlined for the common case: no transaction open
                  "        if TL.tx is not None:",
                  f"            RECORD(('c', NAME, (pk{values},)), (T, 'c', pk), TL.tx)",
                  "        else:",
                  "            J = DB.journal",
                  f"            if J is not None: TL.seq = J.append(('c', NAME, (pk{values},)))",
                  "    o = NEW(CLS)",
                  "    d = o.__dict__"]
        # Storing into the instance's own dict is quicker than building one to copy.
        lines += _stores(self.schema, "v{i}", "    ")
        lines += ["    return o",
                  "",
                  "def get_pk(pk):",
                  "    with LOCK:",
                  "        pos = INDEX.get(pk)",
                  "        if pos is None: return None",
                  "        o = NEW(CLS)",
                  "        d = o.__dict__",
                  "        p = pos - T.hn",
                  "        if p >= 0:"]
        lines += _stores(self.schema, "L{i}[p]", "            ", clone=False)
        lines += ["        else:"]
        lines += _stores(self.schema, "G[{i}](pos)", "            ", clone=False)
        for name in names:
            if self.fields[name].kind in ("list", "set", "dict"):
                lines.append(f"    d[{name!r}] = CLONE(d[{name!r}])")
        lines += ["    return o"]
        args = "".join(f", v{i}" for i in range(len(names)))
        lines += ["",
                  f"def make_rows(pks{args}):",
                  "    out = []",
                  "    put = out.append",
                  f"    for pk{args}, in zip(pks{args}):",   # the comma: models without fields
                  "        o = NEW(CLS)",
                  "        d = o.__dict__"]
        lines += _stores(self.schema, "v{i}", "        ")
        lines += ["        put(o)",
                  "    return out"]
        code = "\n".join(lines) + "\n"
        exec(compile(code, f"<lexicons table {self.name}>", "exec"), env)  # noqa: S102
        self.create = env["create"]
        self.get_pk = env["get_pk"]
        self.make_rows = env["make_rows"]

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


def _fast_test(field: Field, var: str) -> str:
    """Return a Python expression true when *var* needs the full check of *field*."""
    kind = field.kind
    if kind == "int":
        test = f"({var}.__class__ is not int or not INT_MIN <= {var} <= INT_MAX)"
    elif kind == "ref":
        test = f"{var}.__class__ is not str"
    else:
        test = f"{var}.__class__ is not {kind}"
    if field.nullable:
        test = f"{var} is not None and {test}"
    return test


def _stores(schema: Schema, template: str, indent: str, clone: bool = True) -> list[str]:
    """Return the lines storing ``pk`` and each field's value (per *template*) in ``d``."""
    lines = [f"{indent}d['pk'] = pk"]
    for i, name in enumerate(schema.names):
        value = template.format(i=i)
        if clone and schema.fields[name].kind in ("list", "set", "dict"):
            value = f"CLONE({value})"
        lines.append(f"{indent}d[{name!r}] = {value}")
    return lines


def _to_array(field: Field, values: list) -> np.ndarray:
    dtype = None if field.nullable else _SCALAR_DTYPES.get(field.kind)
    if dtype is not None:
        return np.fromiter(values, dtype=dtype, count=len(values))
    return np.fromiter(values, dtype=object, count=len(values))


# --- query results ----------------------------------------------------------------------

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


class _Local(threading.local):
    """Per thread: its open transaction and the journal sequence of its last write."""

    tx: Transaction | None = None
    seq: int = 0


class Transaction:
    """One thread's writes as a unit: all kept, or all undone (see Database.transaction)."""

    __slots__ = ("db", "records", "undo", "holding", "nested")

    def __init__(self, db: Database):
        self.db = db
        self.records: list[tuple] = []
        self.undo: list[tuple] = []
        self.holding = False   # this transaction owns the writes (db._owner)
        self.nested = False    # inside another transaction of this thread: that one decides

    def __enter__(self) -> Transaction:
        local = self.db._local
        if local.tx is not None:
            self.nested = True
            return local.tx
        local.tx = self
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self.nested:
            return
        db = self.db
        db._local.tx = None
        if not self.holding:
            return
        with db.lock:
            try:
                if kind is None:
                    for record in self.records:
                        db._journal(record)
                else:
                    db._rollback(self.undo)
            finally:
                self.holding = False
                db._end_turn()


class Database:
    """The tables of an application, in memory (see the module docstring).

    *models* are Model classes. *journal*, when given, receives every write
    (see :mod:`lexicons.journal`); it may also be attached later by setting
    :attr:`journal`.
    """

    def __init__(self, models: Iterable[type[Model]] = (), *, journal: Any = None):
        self.lock = threading.Lock()
        # A transaction owns the writes from its first write to its end: no other
        # thread's write comes between, so its records, journaled at the end, keep the
        # order of the changes, and undoing them undoes nobody else's (see
        # transaction()). Writers check the owner under the lock (_wait_turn).
        self._owner: int | None = None
        self._turn = threading.Condition(self.lock)
        self.journal = journal
        #: The replication log every write goes through, when one is attached
        #: (:class:`lexicons.replication.StreamLog`); None: writes are made here.
        self.replica: Any = None
        self._local = _Local()
        self._tables: dict[Any, Table] = {}
        self._referrers: dict[str, list[tuple[Table, str]]] = {}
        models = list(models)
        for model in models:
            if not (isinstance(model, type) and issubclass(model, Model)):
                raise DatabaseError(f"not a Model class: {model!r}")
            if model.__name__ in self._tables:
                raise DatabaseError(f"two models are named {model.__name__}")
            table = Table(self, model._schema())
            self._tables[model] = self._tables[model.__name__] = table
        for table in self.tables():
            for name, field in table.schema.refs.items():
                target = field.ref.__name__
                if target not in self._tables:
                    raise DatabaseError(f"{field.where} refers to {target}, which is not "
                                        "one of the database's models")
                self._referrers.setdefault(target, []).append((table, name))
        for table in self.tables():
            table.compile()

    # --- tables -----------------------------------------------------------------------

    def tables(self) -> list[Table]:
        """Return the tables, in the order of the models."""
        seen: dict[int, Table] = {}
        for table in self._tables.values():
            seen.setdefault(id(table), table)
        return list(seen.values())

    def table(self, model: Any) -> Table:
        """Return the table of *model* (a Model class, instance or name)."""
        try:
            return self._tables[model]
        except (KeyError, TypeError):
            pass
        if isinstance(model, Model):
            return self.table(type(model))
        name = model.__name__ if isinstance(model, type) else model
        if isinstance(name, str) and name in self._tables:
            if isinstance(model, type):
                raise DatabaseError(f"{name} is not the model this database was built with")
            return self._tables[name]
        raise DatabaseError(f"unknown model {name!r}")

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = self.__dict__.get("_tables")
        if tables is not None and name in tables and not name.startswith("_"):
            return self.frame(name)
        raise AttributeError(f"{type(self).__name__} has no attribute or model {name!r}")

    # --- writes -------------------------------------------------------------------------
    #
    # A write is checked first, outside the lock, then becomes one *write op*, a tuple
    # handed to :meth:`_write`, the one place where a write is made: applied here under
    # the lock (and journaled), or, with a replication log attached, recorded in the log
    # and applied by every node in the log's order (see :mod:`lexicons.replication`).
    # :meth:`_apply` alone turns an op into changes of the tables; it decides everything
    # that depends on the data (a made-up pk that is taken, a reference to a missing row,
    # the rows a cascade takes, get_or_create finding a row), so that nodes applying
    # the same ops in the same order end with the same tables and the same answers.
    #
    #   ("c", table, pk, row, given)            create; row: a value per field
    #   ("u", table, pk, changes)               update; changes: field -> value
    #   ("d", table, pk, cascade)               drop
    #   ("g", table, lookup, pk, row, given)    get_or_create; lookup: field -> value

    def create(self, model: Any, **fields: Any) -> Model:
        """Insert a row and return it; ``pk`` may be given, else one is made up."""
        try:
            table = self._tables[model]
        except (KeyError, TypeError):
            table = self.table(model)
        if self.replica is None:
            return table.create(fields)
        given = "pk" in fields
        candidate = table.model(**fields)
        d = candidate.__dict__
        row = tuple(d[n] for n in table.schema.names)
        d["pk"] = self._write(("c", table.name, d["pk"], row, given))
        for name in table.containers:   # the stored row holds the candidate's own
            d[name] = clone(d[name])
        return candidate

    def update(self, model: Any, row: Any, **fields: Any) -> Model:
        """Change fields of the row *row* (a pk or an instance) and return the row.

        With an instance and no fields, the instance's field values are written.
        Raises DoesNotExist when there is no such row.
        """
        table = self.table(model)
        pk = self._pk_of(table, row)
        if "pk" in fields:
            raise ValidationError(f"{table.name}.pk cannot be changed")
        from_instance = not fields and isinstance(row, Model)
        if from_instance:   # the instance's values as stored: its setters already ran
            fields = {n: row.__dict__[n] for n in table.schema.names if n in row.__dict__}
        setters = table.schema.setters
        computed = {} if from_instance else {n: fields.pop(n) for n in list(fields)
                                             if n in setters}
        changes = {}
        for name, value in fields.items():
            field = table.fields.get(name)
            if field is None:
                raise ValidationError(f"{table.name} has no field {name!r}")
            changes[name] = field.check(value)
        if computed:
            current = self.get(table.model, pk)
            if current is None:
                raise DoesNotExist(f"no {table.name} with pk {pk!r}")
            current.__dict__.update(changes)
            for name, value in computed.items():
                setattr(current, name, value)
            changes = {n: current.__dict__[n] for n in table.schema.names}
        return self._write(("u", table.name, pk, changes))

    def drop(self, model: Any, row: Any, cascade: bool = False) -> int:
        """Delete the row *row* (a pk or an instance); return how many rows went.

        Rows that refer to it are deleted too with ``cascade=True``; without it
        the drop is refused (IntegrityError) while any row refers to it, so no
        reference ever points at nothing. Raises DoesNotExist when there is no
        such row.
        """
        table = self.table(model)
        return self._write(("d", table.name, self._pk_of(table, row), bool(cascade)))

    def _doomed(self, table: Table, pk: str, cascade: bool) -> dict[Table, list[str]]:
        """Return every row a drop takes with it, or raise IntegrityError (lock held)."""
        doomed: dict[Table, dict[str, None]] = {table: {pk: None}}
        queue = [(table, [pk])]
        while queue:
            target, pks = queue.pop()
            for source, name in self._referrers.get(target.name, ()):
                array = source._array(name)
                hits = np.flatnonzero(_isin_object(array, set(pks)))
                hits = [p for p in hits.tolist() if source.live[p]]
                already = doomed.setdefault(source, {})
                found = source._array("pk")[hits].tolist()
                new = [pk for pk in found if pk not in already]
                if not new:
                    continue
                if not cascade:
                    raise IntegrityError(
                        f"cannot drop {table.name} {pk!r}: {len(new)} {source.name} row(s) "
                        f"refer to it through {source.name}.{name} (drop them first, or "
                        "pass cascade=True)")
                already.update(dict.fromkeys(new))
                queue.append((source, new))
        return {t: list(pks) for t, pks in doomed.items() if pks}

    def get_or_create(self, model: Any, defaults: dict[str, Any] | None = None,
                      **fields: Any) -> tuple[Model, bool]:
        """Return ``(row, False)`` for the one row matching *fields*, else create it.

        The new row gets *fields* plus *defaults*; the look-up and the insert are
        one step, so two threads (or, replicated, two nodes) never both create it.
        """
        table = self.table(model)
        values = dict(fields)
        values.update(defaults or {})
        found = self.get(table.model, **fields)
        if found is not None:
            return found, False
        candidate = table.model(**values)   # outside the lock: setters may be slow
        d = candidate.__dict__
        lookup = {name: d[name] if name in d else value for name, value in fields.items()}
        row = tuple(d[n] for n in table.schema.names)
        return self._write(("g", table.name, lookup, d["pk"], row, "pk" in values))

    def _write(self, op: tuple) -> Any:
        """Make one write op (see above) and return what applying it decided."""
        replica = self.replica
        if replica is not None:
            return replica.submit(op)
        with self.lock:
            if self._owner is not None:
                self._wait_turn()
            return self._apply(op, None, True)

    def _apply(self, op: tuple, position: str | None, answer: bool) -> Any:
        """Apply one write op to the tables and return its result (lock held).

        *position* is the op's place in the replication log (None for a local
        write): a made-up pk that is taken is replaced by one derived from it, so
        every node picks the same. *answer* asks for the instances a caller gets
        back (only the node whose caller waits needs them). Raises before changing
        anything when the op cannot be made; journals what it changed.
        """
        kind, table = op[0], self._tables[op[1]]
        # A local write belongs to this thread's transaction, if one is open; an op of
        # the replication log is committed already, wherever it is applied.
        tx = self._local.tx if position is None else None
        if kind == "c":
            return self._insert(table, op[2], op[3], op[4], position, tx)
        if kind == "u":
            pk, changes = op[2], op[3]
            pos = table.index.get(pk)
            if pos is None:
                raise DoesNotExist(f"no {table.name} with pk {pk!r}")
            table._check_refs(changes)
            if changes:
                old = {name: table._value(name, pos) for name in changes} \
                    if tx is not None else None   # what an undo needs
                table._set(pos, changes)
                self._record(("u", table.name, pk, changes), (table, "u", pk, old), tx)
            return table._instance(pk, table._row(pos)) if answer else pk
        if kind == "d":
            pk = op[2]
            if pk not in table.index:
                raise DoesNotExist(f"no {table.name} with pk {pk!r}")
            doomed = self._doomed(table, pk, op[3])
            for victim, pks in doomed.items():
                for victim_pk in pks:
                    pos = victim.index[victim_pk]
                    undo = (victim, "d", victim_pk, pos, victim._row(pos), victim.compactions) \
                        if tx is not None else ()
                    victim._kill(pos)
                    self._record(("d", victim.name, victim_pk), undo, tx)
            return sum(len(pks) for pks in doomed.values())
        if kind == "g":
            lookup, row = op[2], op[4]
            found = self._select(table, dict(lookup))
            if len(found) > 1:
                shown = ", ".join(f"{k}={v!r}" for k, v in lookup.items())
                raise MultipleRowsFound(f"{table.name}: several rows match {shown}")
            if len(found):
                pk = table._value("pk", int(found[0]))
                return (table._instance(pk, table._row(int(found[0]))) if answer else pk,
                        False)
            pk = self._insert(table, op[3], row, op[5], position, tx)
            names = table.schema.names
            return (table._instance(pk, dict(zip(names, row, strict=True))) if answer
                    else pk, True)
        raise DatabaseError(f"unknown write op {kind!r}")

    def _insert(self, table: Table, pk: str, row: tuple, given: bool,
                position: str | None, tx: Transaction | None) -> str:
        """Insert one checked row and record it; return its pk (lock held)."""
        if pk in table.index:
            if given:
                table._duplicate(pk)
            pk = _free_pk(table, position)
        table._check_refs(dict(zip(table.schema.names, row, strict=True)))
        table._insert(pk, row)
        self._record(("c", table.name, (pk,) + tuple(row)), (table, "c", pk), tx)
        return pk

    # --- transactions -----------------------------------------------------------------

    def transaction(self) -> Transaction:
        """Return a context making this thread's writes in the block one unit.

        ::

            with db.transaction():
                db.create(Order, ...)
                db.update(Stock, pk, left=n - 1)   # raises: the order goes too

        The writes are made at once (the thread reads its own writes) and
        journaled when the block ends without an exception; on an exception they
        are undone, in reverse order, and never reach the journal. From its first
        write to its end, a transaction holds other writers back (readers are
        not): keep the code after a transaction's first write short. A
        transaction inside another is part of the outer one. The router runs
        every signal in one.
        """
        return Transaction(self)

    def _record(self, record: tuple, undo: tuple, tx: Transaction | None) -> None:
        """Hand a write on: to the transaction *tx*, or to the journal (lock held).

        Every write ends here once the tables are changed; *undo* says how to take
        it back (``(table, 'c', pk)``, ``(table, 'u', pk, old values)``, ``(table,
        'd', pk, slot, values, compactions)``).
        """
        if tx is None:
            self._journal(record)
            return
        if not tx.holding:   # the first write: keep other writers out until the end
            self._owner = threading.get_ident()
            tx.holding = True
        tx.records.append(record)
        tx.undo.append(undo)

    def _wait_turn(self) -> None:
        """Wait until no other thread's transaction owns the writes (lock held)."""
        owner = self._owner
        if owner is None:
            return
        me = threading.get_ident()
        while owner is not None and owner != me:
            self._turn.wait()
            owner = self._owner

    def _end_turn(self) -> None:
        """Let other writers in again (lock held)."""
        self._owner = None
        self._turn.notify_all()

    def _rollback(self, undo: list[tuple]) -> None:
        """Take back a transaction's writes, last first (lock held, this thread owning)."""
        for entry in reversed(undo):
            table, op, pk = entry[0], entry[1], entry[2]
            if op == "c":
                pos = table.index.get(pk)
                if pos is not None:
                    table._kill(pos)
            elif op == "u":
                pos = table.index.get(pk)
                if pos is not None:
                    table._set(pos, entry[3])
            else:
                table._revive(pk, entry[3], tuple(entry[4].values()), entry[5])

    def _journal(self, record: tuple) -> None:
        journal = self.journal
        if journal is not None:
            self._local.seq = journal.append(record)

    def sync(self) -> None:
        """Wait until this node holds every write recorded so far on any node.

        A node reads its own writes at once; another node's writes arrive
        within the replication lag (about a Redis round trip). Call this before a
        read that must see them, e.g. a login that finds no such user. A no-op
        without replication. Raises Unavailable when the stream cannot be reached.
        """
        replica = self.replica
        if replica is not None:
            replica.sync()

    def commit(self) -> None:
        """Wait until every write this thread made is durable (no-op without a journal)."""
        journal = self.journal
        if journal is not None:
            seq = getattr(self._local, "seq", 0)
            if seq:
                journal.wait(seq)

    # --- reads ----------------------------------------------------------------------------

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

    # --- persistence hooks ----------------------------------------------------------------

    def encode_record(self, record: tuple) -> bytes:
        """Return the journal payload of a write record (JSON, sets as sorted lists)."""
        op, name = record[0], record[1]
        table = self._tables[name]
        if op == "c":
            values = record[2]
            row = {"pk": values[0]}
            for field_name, value in zip(table.schema.names, values[1:], strict=False):
                row[field_name] = to_json(value)
            data: list = ["c", name, row]
        elif op == "u":
            data = ["u", name, record[2], {k: to_json(v) for k, v in record[3].items()}]
        else:
            data = ["d", name, record[2]]
        return json.dumps(data, separators=(",", ":"), allow_nan=True).encode("ascii")

    def replay(self, payload: bytes) -> str | None:
        """Apply one journal payload (idempotently) without journaling it again.

        Creates overwrite, updates of a missing row and drops of a missing row are
        ignored: replaying a journal over a snapshot that already holds some of its
        writes ends in the same state. Returns a note when something was skipped.
        Raises ValidationError for a record that does not fit the models.
        """
        data = json.loads(payload)
        if not isinstance(data, list) or len(data) < 3 or data[0] not in ("c", "u", "d"):
            raise ValidationError("not a write record")
        op, name = data[0], data[1]
        table = self._tables.get(name) if isinstance(name, str) else None
        if table is None:
            return f"skipped a write to {name!r}, which is not a model any more"
        if op == "c":
            row = data[2]
            if not isinstance(row, dict):
                raise ValidationError("a create record needs an object of fields")
            pk = check_pk(table.name, row.get("pk"))
            values = tuple(table.fields[n].from_json(row[n]) if n in row
                           else table.fields[n].fresh_default() for n in table.schema.names)
            with self.lock:
                pos = table.index.get(pk)
                if pos is None:
                    table._insert(pk, values)
                else:
                    table._set(pos, dict(zip(table.schema.names, values, strict=False)))
            return None
        pk = check_pk(table.name, data[2])
        if op == "u":
            fields = data[3] if len(data) > 3 else None
            if not isinstance(fields, dict):
                raise ValidationError("an update record needs an object of fields")
            changes = {n: table.fields[n].from_json(v) for n, v in fields.items()
                       if n in table.fields}
            with self.lock:
                pos = table.index.get(pk)
                if pos is not None and changes:
                    table._set(pos, changes)
            return None
        with self.lock:
            pos = table.index.get(pk)
            if pos is not None:
                table._kill(pos)
        return None


def _free_pk(table: Table, position: str | None) -> str:
    """Return a pk no row of *table* has: random, or derived from a log position."""
    if position is None:
        pk = new_pk()
        while pk in table.index:
            pk = new_pk()
        return pk
    n = 0
    while True:
        digest = hashlib.blake2b(f"{position}/{table.name}/{n}".encode(), digest_size=8)
        pk = digest.hexdigest()
        if pk not in table.index:
            return pk
        n += 1


def _index_add(index: dict[Any, Any], value: Any, pos: int) -> None:
    entry = index.get(value)
    if entry is None:
        index[value] = pos
    elif entry.__class__ is int:
        index[value] = Slots("q", (entry, pos))
    else:
        entry.append(pos)


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
