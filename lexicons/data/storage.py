"""Durable storage: one CSV snapshot per table plus the journal, in DATA_DIR.

Theory of operation
-------------------
``DATA_DIR`` holds ``<Table>.csv`` for each model and journal files
``journal.<generation>``. The state of the database is: the CSV files, then every
journal file replayed in generation order.

A snapshot, under the database lock, copies the rows of each changed table and
*rotates* the journal: the current file is fsynced and closed, and writes go on
in the next generation. So the old journal files end exactly at the cut. Then,
without the lock, each copied table is written atomically (a temporary file in
the same directory, fsync, rename, fsync of the directory). Only when every one
is on disk are the old journal files deleted. A crash between those steps leaves
CSV files that may already hold some of the old files' writes; replay is
idempotent (a create overwrites the row, an update or drop of a missing row is
skipped), so replaying them again ends in the same state.

CSV cells: ``str`` as is (so ``''`` is an empty cell), ``int`` in decimal,
``float`` in its shortest form that reads back exactly (``nan``, ``inf``, ``-0``),
``bool`` as ``true``/``false``, a reference as the pk (empty for None), a
nullable ``int``/``float``/``bool`` as empty for None. Containers and ``str |
None`` cells are JSON (``null`` is None, ``""`` the empty string). Records end
with CRLF. Text is quoted only when some text cell of the file holds a comma, a
quote or a line break; then every text cell is.

Arrow (pyarrow) writes and parses the files: it formats and parses numbers in C++
and parses on every core, which makes a million-row table save and load in about
a second. Text Arrow refuses (lone surrogates, which ``str`` may hold) is written
by the csv module instead; a file Arrow refuses to parse is read by pandas,
which either reads it or tells the row and column at fault.

Damage is never repaired silently: a torn last journal record is ignored with a
warning; any other damage (a CSV cell that does not fit its field, a bad record
in the middle of a journal) stops loading with a StorageError naming the file and
the row and column (or offset), and the file is left exactly as it was.
A model that gained a field gets the column filled with the field's default; a
field that went away loses its column, after a copy of the file is kept as
``<Table>.csv.<time>.bak``.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from lexicons.data.database import Database
from lexicons.data.journal import Journal, _fsync_dir, read_records
from lexicons.data.lockfile import DirectoryLock
from lexicons.data.model import Field, Schema, to_json
from lexicons.data.table import Table
from lexicons.errors import StorageError, ValidationError

log = logging.getLogger("lexicons.storage")

JOURNAL_PATTERN = re.compile(r"^journal\.(\d+)$")
_BOOLS = {"true": True, "false": False, "True": True, "False": False}
_INT = re.compile(r"[+-]?\d+")
_SPECIAL = (b",", b'"', b"\r", b"\n")
_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def _json_cell(field: Field) -> bool:
    """Tell whether a field's cells are written as JSON."""
    return field.kind in ("list", "set", "dict") or (field.kind == "str" and field.nullable)


# --- writing a table -------------------------------------------------------------------


def _encode_column(field: Field, values: Any) -> list:
    """Return a column's cells for the csv module (the writer of data Arrow refuses)."""
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    kind = field.kind
    if _json_cell(field):
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        return [dumps(to_json(v)) for v in values]
    if kind == "bool":
        names = {True: "true", False: "false", None: ""}
        return list(map(names.__getitem__, values))
    if field.nullable:   # ref, int | None, float | None: empty for None
        return ["" if v is None else v for v in values]
    return values


def _arrow_column(field: Field, values: Any) -> pa.Array:
    """Return a column as an Arrow array to write (strings for JSON cells)."""
    if _json_cell(field):
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        return pa.array([dumps(to_json(v)) for v in values], type=pa.string())
    kind = "str" if field.kind == "ref" else field.kind
    return pa.array(values, type=_ARROW_TYPES[kind], from_pandas=False)


def _arrow_table(schema: Schema, pks: Any, cols: dict[str, Any]) -> pa.Table | None:
    """Return the rows as an Arrow table, or None for data Arrow cannot hold (text
    with lone surrogates)."""
    try:
        arrays = [pa.array(pks, type=pa.string())]
        arrays += [_arrow_column(schema.fields[n], cols[n]) for n in schema.names]
    except (UnicodeError, pa.ArrowException, ValueError, TypeError):
        return None
    return pa.Table.from_arrays(arrays, names=["pk", *schema.names])


def _needs_quotes(table: pa.Table) -> bool:
    """Tell whether any text cell holds a comma, a quote or a line break."""
    for column in table.columns:
        if column.type != pa.string():
            continue
        for chunk in column.chunks:
            data = chunk.buffers()[2]   # the UTF-8 bytes of every cell, end to end
            if data is None:
                continue
            text = data.to_pybytes()
            if any(char in text for char in _SPECIAL):
                return True
    return False


def write_table(path: str, schema: Schema, pks: Any, cols: dict[str, Any]) -> None:
    """Write one table to *path* atomically (temporary file, fsync, rename, fsync dir).

    *pks* and the columns are lists or arrays. Arrow formats the rows (floats in
    their shortest exact form); text is quoted only when some cell needs it, and
    then every text cell is. Text Arrow refuses goes through the csv module.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    header = ",".join(("pk",) + schema.names) + "\r\n"
    table = _arrow_table(schema, pks, cols) if len(pks) else None
    try:
        # 0600: tables may hold password hashes; only the daemon's user reads them
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as handle:
            handle.write(header.encode("utf-8"))
            if table is not None:
                style = "needed" if _needs_quotes(table) else "none"
                options = pacsv.WriteOptions(include_header=False, batch_size=1 << 16,
                                             quoting_style=style, eol="\r\n")
                pacsv.write_csv(table, handle, write_options=options)
            elif len(pks):
                handle.write(_csv_rows(schema, pks, cols))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StorageError(f"cannot write {path}: {exc}") from exc


def _csv_rows(schema: Schema, pks: Any, cols: dict[str, Any]) -> bytes:
    """Return the rows as CSV bytes written by the csv module."""
    columns = [_encode_column(Field(schema.name, "pk", "str"), pks)]
    columns += [_encode_column(schema.fields[n], cols[n]) for n in schema.names]
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(zip(*columns, strict=True))
    return out.getvalue().encode("utf-8", "surrogatepass")


# --- reading a table ---------------------------------------------------------------------


class Loaded:
    """A table read from its CSV file, with what migration did to it.

    ``pks`` and ``cols`` are arrays (or lists) in the table's dtypes; ``index``
    maps each pk to its row.
    """

    def __init__(self, pks: Any, cols: dict[str, Any], added: list[str], dropped: list[str],
                 index: dict[str, int]):
        self.pks, self.cols, self.added, self.dropped = pks, cols, added, dropped
        self.index = index


def read_table(path: str, schema: Schema) -> Loaded:
    """Read *path* with the types of *schema*; raise StorageError naming row and column."""
    header = _read_header(path)
    if "pk" not in header:
        raise StorageError(f"{path}: the header has no pk column")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise StorageError(f"{path}: column {duplicates[0]!r} appears twice in the header")
    cells = _read_arrow(path, header, schema)
    if cells is None:   # Arrow refused the file: pandas reads it, or says what is wrong
        _check_rows(path, header)
        dtypes: dict[str, Any] = {}
        for name in header:
            field = schema.fields.get(name)
            dtypes[name] = (_DTYPE.get(field.kind, object) if field and not field.nullable
                            else object)
        frame = _read_frame(path, dtypes, schema)
        _check_cell_counts(path, header, frame)
        cells = {name: frame[name].to_numpy() for name in frame.columns}
    pks, index = _decode_pks(path, cells["pk"])
    cols: dict[str, Any] = {}
    n = len(pks)
    for name in schema.names:
        field = schema.fields[name]
        if name in cells:
            cols[name] = _decode_column(path, field, cells[name])
        else:
            cols[name] = [field.fresh_default() for _ in range(n)]
    added = [n for n in schema.names if n not in header]
    dropped = [h for h in header if h != "pk" and h not in schema.fields]
    return Loaded(pks, cols, added, dropped, index)


def _read_arrow(path: str, header: list[str], schema: Schema) -> dict[str, np.ndarray] | None:
    """Return the cells of the model's columns, parsed by Arrow (numbers and booleans
    typed, the rest as text); None when Arrow refuses the file."""
    types = {}
    for name in header:
        field = schema.fields.get(name)
        if field is not None and not field.nullable and field.kind in ("int", "float", "bool"):
            types[name] = _ARROW_TYPES[field.kind]
        else:
            types[name] = pa.string()
    wanted = [name for name in header if name == "pk" or name in schema.fields]
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        convert = pacsv.ConvertOptions(
            column_types=types, include_columns=wanted, null_values=[],
            strings_can_be_null=False, quoted_strings_can_be_null=False,
            true_values=["true", "True"], false_values=["false", "False"])
        # Quoted cells may hold line breaks, which the parallel reader cannot split at.
        parse = pacsv.ParseOptions(newlines_in_values=b'"' in data)
        table = pacsv.read_csv(pa.py_buffer(data), parse_options=parse,
                               convert_options=convert)
    except (OSError, pa.ArrowException):
        return None
    cells = {}
    for name in wanted:
        column = table.column(name)
        cells[name] = _text_cells(column) if column.type == pa.string() else column.to_numpy()
    return cells


def _text_cells(column: pa.ChunkedArray) -> np.ndarray:
    """Return a text column as an object array of str; a column of few distinct values
    shares one str object per value."""
    n = len(column)
    sample = column.slice(0, 1000).to_pylist()
    if n > 2000 and len(set(sample)) * 4 < len(sample):
        encoded = column.combine_chunks().dictionary_encode()
        words = np.fromiter(encoded.dictionary.to_pylist(), dtype=object,
                            count=len(encoded.dictionary))
        return words[encoded.indices.to_numpy()]
    return np.fromiter(column.to_pylist(), dtype=object, count=n)


_DTYPE = {"int": "int64", "float": "float64"}


def _read_header(path: str) -> list[str]:
    try:
        with open(path, "rb") as handle:
            # decode only the lines the header takes: damage further on is not in it
            lines = (line.decode("utf-8", "surrogatepass") for line in handle)
            header = next(csv.reader(lines), None)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise StorageError(f"{path}: cannot read the header: {exc}") from exc
    if not header:
        raise StorageError(f"{path}: the file is empty (no header row)")
    return header


def _check_rows(path: str, header: list[str]) -> None:
    """Raise StorageError naming the first damaged row: bytes that are not UTF-8 text
    (with their offset in the file), or a row with more or fewer cells than the header."""
    with open(path, "rb") as handle:
        data = handle.read()
    offset = 0
    rows = 0  # records read so far, the header included

    def lines():
        nonlocal offset
        for line in io.BytesIO(data):
            try:
                text = line.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise StorageError(f"{path}: row {rows} (after the header), byte "
                                   f"{offset + exc.start} of the file: not UTF-8 text "
                                   f"(damaged or binary data)") from None
            offset += len(line)
            yield text

    try:
        for cells in csv.reader(lines()):
            if rows and cells and len(cells) != len(header):
                if len(cells) > len(header):
                    raise StorageError(f"{path}: row {rows} (after the header) has "
                                       f"{len(cells)} cells, the header has {len(header)}")
                raise _bad_cell(path, rows, header[len(cells)], "",
                                f"the row has {len(cells)} cells, the header {len(header)}")
            rows += 1
    except csv.Error as exc:
        raise StorageError(f"{path}: row {rows} (after the header): {exc}") from None


def _check_cell_counts(path: str, header: list[str], frame: pd.DataFrame) -> None:
    """Raise StorageError for a row with too few cells (pandas fills them in as empty).

    Rows with too many cells already failed to parse, so the file's commas add up
    to the header's count per row, plus the commas inside (quoted) text cells,
    exactly when no row is short.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    expected = (len(header) - 1) * (len(frame) + 1)
    if b'"' in data:
        expected += sum(name.count(",") for name in header)
        for name in frame.columns:
            if frame[name].dtype == object:
                expected += "\x00".join(frame[name].tolist()).count(",")
    if data.count(b",") == expected:
        return
    with open(path, encoding="utf-8", errors="surrogatepass", newline="") as handle:
        for row, cells in enumerate(csv.reader(handle)):
            if row and cells and len(cells) < len(header):
                raise _bad_cell(path, row, header[len(cells)], "",
                                f"the row has {len(cells)} cells, the header {len(header)}")
    raise StorageError(f"{path}: the rows do not have as many cells as the header")


def _read_frame(path: str, dtypes: dict[str, Any], schema: Schema) -> pd.DataFrame:
    floats = {n: ["nan"] for n, d in dtypes.items() if d == "float64"}
    options = dict(keep_default_na=False, low_memory=False, na_values=floats, engine="c",
                   encoding="utf-8", encoding_errors="surrogatepass")
    try:
        return pd.read_csv(path, dtype=dtypes, **options)
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, pd.errors.ParserError):
            raise StorageError(f"{path}: {exc}".strip()) from exc
        first = exc
    # A numeric cell did not parse: read every cell as text to say which one.
    try:
        frame = pd.read_csv(path, dtype=object, **{**options, "na_values": {}})
    except ValueError as exc:
        raise StorageError(f"{path}: {exc}".strip()) from exc
    for name, dtype in dtypes.items():
        if dtype == "int64":
            _locate(path, name, frame[name].to_numpy(), _INT.fullmatch, schema.fields[name])
        elif dtype == "float64":
            _locate(path, name, frame[name].to_numpy(), _is_float, schema.fields[name])
    raise StorageError(f"{path}: {first}") from first


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and text != ""


def _locate(path: str, name: str, cells: np.ndarray, ok: Any, field: Field) -> None:
    for row, text in enumerate(cells.tolist(), start=1):
        if text.__class__ is not str:
            raise _bad_cell(path, row, name, "", "the row has too few cells")
        if not ok(text) or (field.kind == "int" and not -(1 << 63) <= int(text) < (1 << 63)):
            raise _bad_cell(path, row, name, text, f"expected {field.describe()}")


def _bad_cell(path: str, row: int, column: str, text: Any, why: str) -> StorageError:
    shown = repr(text)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return StorageError(f"{path}: row {row} (after the header), column {column!r}: "
                        f"{why}, found {shown}")


def _decode_pks(path: str, cells: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Return the pks and the index pk -> row; StorageError for an empty or repeated pk."""
    pks = cells.tolist()
    index = dict(zip(pks, range(len(pks)), strict=True))
    if len(index) == len(pks) and "" not in index:
        return cells, index
    seen: dict[str, int] = {}
    for row, pk in enumerate(pks, start=1):
        if not pk:
            raise _bad_cell(path, row, "pk", pk, "a pk may not be empty")
        first = seen.setdefault(pk, row)
        if first != row:
            raise _bad_cell(path, row, "pk", pk, f"the same pk as row {first}")
    return pks


def _decode_column(path: str, field: Field, cells: np.ndarray) -> Any:
    """Return a column's values (an array, or a list) from its parsed cells."""
    kind = field.kind
    if cells.dtype != object:             # int64 / float64 / bool parsed already
        return cells
    if _json_cell(field):
        texts = cells.tolist()
        return [_decode_json(path, field, row, text) for row, text in enumerate(texts, 1)]
    if kind == "str":
        return cells
    texts = cells.tolist()
    if kind == "ref":
        return [text or None for text in texts]
    if kind == "bool" and not field.nullable:
        true = (cells == "true") | (cells == "True")
        if (true | (cells == "false") | (cells == "False")).all():
            return true
    out = []
    for row, text in enumerate(texts, start=1):
        if text == "" and field.nullable:
            out.append(None)
            continue
        try:
            if kind == "bool":
                value: Any = _BOOLS[text]
            elif kind == "int":
                if not _INT.fullmatch(text):
                    raise ValueError(text)
                value = field.check(int(text))
            else:
                if not _is_float(text):
                    raise ValueError(text)
                value = float(text)
        except (KeyError, ValueError, ValidationError):
            raise _bad_cell(path, row, field.name, text,
                            f"expected {field.describe()}") from None
        out.append(value)
    return out


def _decode_json(path: str, field: Field, row: int, text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad_cell(path, row, field.name, text, f"not JSON ({exc.msg})") from None
    except ValueError:  # an integer of more digits than int() converts
        raise _bad_cell(path, row, field.name, text, "not JSON (number too long)") from None
    try:
        return field.from_json(value)
    except ValidationError as exc:
        raise _bad_cell(path, row, field.name, text, str(exc)) from None


# --- the data directory ----------------------------------------------------------------------


def make_data_dir(path: str) -> None:
    """Create the data directory if need be; StorageError naming it when that fails."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create data directory {path}: {exc}") from exc



class Storage:
    """Load, journal and snapshot a Database in a data directory (see the module docstring)."""

    def __init__(self, db: Database, data_dir: str, fsync: str = "everysec"):
        self.db = db
        self.data_dir = os.path.abspath(data_dir)
        self.fsync = fsync
        self.journal: Journal | None = None
        self.generations: list[int] = []
        self.last_snapshot: float | None = None
        self.last_snapshot_seconds: float | None = None
        self.replayed = 0
        self.lock = DirectoryLock(self.data_dir)
        # one snapshot at a time: the periodic one and the control command share the
        # temporary files and the list of journal generations
        self._snapshot_lock = threading.Lock()

    def table_path(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return os.path.join(self.data_dir, f"{name}.csv")

    def journal_path(self, generation: int) -> str:
        return os.path.join(self.data_dir, f"journal.{generation:06d}")

    def _journal_generations(self) -> list[int]:
        found = []
        for name in os.listdir(self.data_dir):
            match = JOURNAL_PATTERN.match(name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    # --- start-up ---------------------------------------------------------------------------

    def load(self) -> dict[str, int]:
        """Load every table's CSV, then replay the journal files; return rows per table."""
        make_data_dir(self.data_dir)
        self.lock.acquire()  # before reading: another process may be writing here
        try:
            return self._load()
        except BaseException:
            self.lock.release()
            raise

    def _load(self) -> dict[str, int]:
        for stale in glob.glob(os.path.join(self.data_dir, ".*.csv.tmp")):
            log.info("removing %s, left by a snapshot cut short", stale)
            os.unlink(stale)
        tables = self.db.tables()
        loaded = [(table, self._load_table(table)) for table in tables]
        for table, result in loaded:
            if result is None:
                continue
            with self.db.lock:
                table._load(result.pks, result.cols, result.index)
                if not (result.added or result.dropped):
                    table.saved_version = table.version
        known = {t.name for t in tables}
        for path in glob.glob(os.path.join(self.data_dir, "*.csv")):
            name = os.path.basename(path)[:-4]
            if name not in known:
                log.warning("%s belongs to no model; leaving it alone", path)
        self.generations = self._journal_generations()
        for generation in self.generations:
            self._replay(self.journal_path(generation))
        return {t.name: len(t) for t in tables}

    def _load_table(self, table: Table) -> Loaded | None:
        path = self.table_path(table)
        if not os.path.exists(path):
            return None
        result = read_table(path, table.schema)
        if result.added:
            log.info("%s: new field(s) %s, filled with their defaults", table.name,
                     ", ".join(result.added))
        if result.dropped:
            backup = f"{path}.{time.strftime('%Y%m%d-%H%M%S')}.bak"
            try:
                shutil.copy2(path, backup)
            except OSError as exc:
                raise StorageError(f"cannot keep a copy of {path} before dropping "
                                   f"columns: {exc}") from exc
            log.warning("%s: column(s) %s belong to no field any more and are dropped; "
                        "the old file is kept as %s", table.name, ", ".join(result.dropped),
                        backup)
        return result

    def _replay(self, path: str) -> None:
        count = 0
        notes: set[str] = set()
        for offset, payload in read_records(path):
            try:
                note = self.db.replay(payload)
            except (ValueError, TypeError, KeyError) as exc:
                raise StorageError(f"journal {path}: the record at offset {offset} cannot "
                                   f"be applied: {exc}") from exc
            if note:
                notes.add(note)
            count += 1
        for note in sorted(notes):
            log.warning("journal %s: %s", path, note)
        self.replayed += count
        log.info("replayed %d write(s) from %s", count, path)

    def open(self) -> Journal:
        """Start a new journal file and attach it to the database."""
        generation = max(self.generations, default=0) + 1
        journal = Journal(self.journal_path(generation), self.fsync, self.db.encode_record)
        self.generations.append(generation)
        self.journal = journal
        self.db.journal = journal
        return journal

    # --- snapshots ------------------------------------------------------------------------------

    def dirty(self) -> list[str]:
        """Return the names of the tables changed since they were last written."""
        return [t.name for t in self.db.tables() if t.version != t.saved_version]

    def snapshot(self, everything: bool = False) -> list[str]:
        """Write every changed table (or all) and cut the journal; return the tables written."""
        with self._snapshot_lock:
            return self._snapshot(everything)

    def _snapshot(self, everything: bool) -> list[str]:
        """Do the work of snapshot(); needs self._snapshot_lock held."""
        started = time.monotonic()
        db = self.db
        with db.lock:
            copies = [(t, t.version, *t._live_rows()) for t in db.tables()
                      if everything or t.version != t.saved_version]
            if not copies:
                return []
            old = list(self.generations)
            if self.journal is not None and not self.journal.closed:
                generation = max(old, default=0) + 1
                self.journal.rotate(self.journal_path(generation))
                self.generations.append(generation)
        for table, _, pks, cols in copies:
            write_table(self.table_path(table), table.schema, pks, cols)
        for table, version, _, _ in copies:
            table.saved_version = version
        # Every write in the old journal files is now in a CSV file (or was already).
        for generation in old:
            try:
                os.unlink(self.journal_path(generation))
            except FileNotFoundError:
                pass
            self.generations.remove(generation)
        if old:
            _fsync_dir(self.data_dir)
        self.last_snapshot = time.time()
        self.last_snapshot_seconds = time.monotonic() - started
        log.info("snapshot of %s in %.3f s", ", ".join(t.name for t, *_ in copies),
                 self.last_snapshot_seconds)
        return [t.name for t, *_ in copies]

    def sync(self) -> None:
        """Flush the journal per its policy (called about once a second)."""
        if self.journal is not None and not self.journal.closed:
            self.journal.sync()

    def close(self) -> None:
        """Take a final snapshot, close the journal and remove the journal files."""
        self.snapshot()
        if self.journal is not None:
            self.journal.close()
            if not self.dirty():
                for generation in list(self.generations):
                    try:
                        os.unlink(self.journal_path(generation))
                    except FileNotFoundError:
                        pass
                    self.generations.remove(generation)
                _fsync_dir(self.data_dir)
            self.db.journal = None
        self.lock.release()
