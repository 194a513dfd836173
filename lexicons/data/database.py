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

import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from lexicons.data.model import Model, check_pk, clone, new_pk, to_json
from lexicons.data.query import Queries, _isin_object
from lexicons.data.query import Rows as Rows  # what db.query returns, importable from here too
from lexicons.data.table import Table
from lexicons.errors import (
    DatabaseError,
    DoesNotExist,
    IntegrityError,
    MultipleRowsFound,
    ValidationError,
)


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


class Database(Queries):
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
