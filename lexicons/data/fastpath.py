"""The generated hot paths of a table: ``create``, ``get_pk`` and ``make_rows``.

Each :class:`~lexicons.data.table.Table` compiles these three functions for its
own model's fields when it is built (and again when its storage is rebound):
straight-line Python with the field checks inlined and the table's lists, locks
and checks bound as globals, which is several times quicker than a loop over the
fields. :func:`compile_table` writes the source and runs it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lexicons.data.model import INT_MAX, INT_MIN, MISSING, Field, Schema, check_pk, clone, new_pk

if TYPE_CHECKING:
    from lexicons.data.table import Table


def compile_table(self: Table, tail_max: int) -> tuple[Any, Any, Any]:
    """Return ``create``, ``get_pk`` and ``make_rows`` generated for *self*'s fields.

    ``create`` moves the tail into the arrays once it holds *tail_max* rows.
    """
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
        "DANGLING": self._dangling, "G": self.getters, "TAIL_MAX": tail_max,
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
    return env["create"], env["get_pk"], env["make_rows"]



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

