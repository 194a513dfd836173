"""Benchmark the lexicons database side by side with sqlite3, in one run.

    python bench/bench_database.py [--quick]

Prints operations per second for lexicons and for sqlite3 (in memory, no index
but the primary key) and their ratio, at 10k, 100k and 1M rows (``--quick``: 10k
and 100k). lexicons builds an equality index on a column the first time a large
table is filtered by equality on it; for the operations that use one, the last
column gives the ratio against sqlite3 with an index on the same column too.
Then the seconds to save and load a table as CSV (1M rows; 100k with
``--quick``); then acknowledged durable writes per second from 50 threads under
``DB_FSYNC=always``, against sqlite3 on a file with ``synchronous=FULL``.

Queries are read to the end on both sides: every row as a Model instance for
lexicons, as a tuple for sqlite3. Once a table is filled, the benchmark freezes
the objects the process holds (``gc.freeze()``), as the persister does after it
loads the database: a server's full garbage collections do not walk the objects
it made at start-up, nor the benchmark's own copy of the rows.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lexicons import Database, Model  # noqa: E402
from lexicons.data.journal import Journal  # noqa: E402
from lexicons.data.storage import Storage, read_table  # noqa: E402


class Member(Model):
    name: str
    age: int
    score: float
    active: bool
    team: str


SCHEMA = ("CREATE TABLE Member (pk TEXT PRIMARY KEY, name TEXT, age INTEGER, score REAL, "
          "active INTEGER, team TEXT)")
INSERT = "INSERT INTO Member VALUES (?, ?, ?, ?, ?, ?)"


def make_rows(n: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    return [(os.urandom(8).hex(), f"user{i}", rng.randrange(100), rng.random() * 1000,
             rng.random() < 0.5, f"team{rng.randrange(50)}") for i in range(n)]


def rate(count: int, fn: Callable[[], object], min_seconds: float = 0.3) -> float:
    """Run fn (which does *count* operations) until min_seconds pass; return ops/s.

    One call runs first, untimed: it builds what lexicons builds once and keeps up to
    date (the materialised columns, an equality index); see the build times printed.
    """
    fn()
    done, started = 0, time.perf_counter()
    while True:
        fn()
        done += count
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def bench_size(n: int, rows: list[tuple]) -> list[tuple[str, float, float, float | None]]:
    """Return (operation, lexicons ops/s, sqlite ops/s, indexed sqlite ops/s) at n rows."""
    results = []
    db = Database([Member])
    create = db.create
    started = time.perf_counter()
    for pk, name, age, score, active, team in rows:
        create(Member, pk=pk, name=name, age=age, score=score, active=active, team=team)
    lex_create = n / (time.perf_counter() - started)

    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute(SCHEMA)
    execute = conn.execute
    started = time.perf_counter()
    for row in rows:
        execute(INSERT, row)
    conn.commit()
    sql_create = n / (time.perf_counter() - started)
    results.append(("create", lex_create, sql_create, None))
    gc.collect()
    gc.freeze()   # as the persister does once the database is loaded

    rng = random.Random(1)
    sample = [rows[rng.randrange(n)] for _ in range(20000)]
    keys = [r[0] for r in sample]
    get = db.get

    def lex_get() -> None:
        for pk in keys:
            get(Member, pk)

    def sql_get() -> None:
        for pk in keys:
            execute("SELECT * FROM Member WHERE pk = ?", (pk,)).fetchone()

    results.append(("get by pk", rate(len(keys), lex_get), rate(len(keys), sql_get), None))

    names = [r[1] for r in sample[: max(5, 200000 // n)]]
    started = time.perf_counter()
    get(Member, name=names[0])
    build = time.perf_counter() - started
    print(f"  ({n:,} rows: the first look-up by name, which builds its index, took "
          f"{build * 1000:.0f} ms)", flush=True)

    def lex_get_field() -> None:
        for name in names:
            get(Member, name=name)

    def sql_get_field() -> None:
        for name in names:
            execute("SELECT * FROM Member WHERE name = ?", (name,)).fetchall()

    results.append(["get by a field", rate(len(names), lex_get_field),
                    rate(len(names), sql_get_field), sql_get_field])

    def lex_query() -> None:
        list(db.query(Member, age__gt=50, active=True, team="team7"))

    def sql_query() -> None:
        execute("SELECT * FROM Member WHERE age > 50 AND active = 1 AND team = 'team7'"
                ).fetchall()

    results.append(["query 3 filters", rate(1, lex_query), rate(1, sql_query), sql_query])

    def lex_range() -> None:
        db.count(Member, score__ge=100.0, score__lt=200.0)

    def sql_range() -> None:
        execute("SELECT count(*) FROM Member WHERE score >= 100.0 AND score < 200.0"
                ).fetchone()

    results.append(("count range", rate(1, lex_range), rate(1, sql_range), None))

    def lex_contains() -> None:
        list(db.query(Member, name__contains="777"))

    def sql_contains() -> None:
        execute("SELECT * FROM Member WHERE name LIKE '%777%'").fetchall()

    results.append(("query substring", rate(1, lex_contains), rate(1, sql_contains), None))

    def lex_aggregate() -> None:
        db.aggregate(Member, "score", "mean", active=True)

    def sql_aggregate() -> None:
        execute("SELECT avg(score) FROM Member WHERE active = 1").fetchone()

    results.append(("aggregate mean", rate(1, lex_aggregate), rate(1, sql_aggregate), None))

    def lex_sorted() -> None:
        list(db.query(Member, team="team3", _sort="-score", _limit=20))

    def sql_sorted() -> None:
        execute("SELECT * FROM Member WHERE team = 'team3' ORDER BY score DESC LIMIT 20"
                ).fetchall()

    results.append(["top 20 sorted", rate(1, lex_sorted), rate(1, sql_sorted), sql_sorted])

    # The same look-ups with sqlite3 indexes on the columns lexicons indexed by itself.
    execute("CREATE INDEX member_name ON Member (name)")
    execute("CREATE INDEX member_team ON Member (team)")
    for result in results:
        if callable(result[3]):
            result[3] = rate(len(names) if result[0] == "get by a field" else 1, result[3])
    conn.close()
    gc.unfreeze()
    return [tuple(result) for result in results]


def bench_snapshot(rows: list[tuple], directory: str) -> tuple[float, float, int]:
    """Return (save seconds, load seconds, file bytes) for a table of these rows."""
    db = Database([Member])
    for pk, name, age, score, active, team in rows:
        db.create(Member, pk=pk, name=name, age=age, score=score, active=active, team=team)
    storage = Storage(db, directory)
    started = time.perf_counter()
    storage.snapshot(everything=True)
    save = time.perf_counter() - started
    path = storage.table_path("Member")
    started = time.perf_counter()
    loaded = Database([Member])
    table = read_table(path, Member._schema())
    with loaded.lock:
        loaded.table(Member)._load(table.pks, table.cols, table.index)
    load = time.perf_counter() - started
    assert len(loaded.table(Member)) == len(rows)
    return save, load, os.path.getsize(path)


def bench_durable(directory: str, threads: int = 50, seconds: float = 2.0) -> tuple[float, float]:
    """Return acknowledged writes/s from *threads* threads: lexicons 'always' vs sqlite FULL."""
    db = Database([Member])
    db.journal = Journal(os.path.join(directory, "journal.000001"), "always", db.encode_record)
    stop = threading.Event()
    acks = [0] * threads

    def lex_worker(k: int) -> None:
        while not stop.is_set():
            db.create(Member, name="w", age=k, score=1.0, team="t")
            db.commit()
            acks[k] += 1

    lex = _run_threads(lex_worker, threads, seconds, stop, acks)
    db.journal.close()

    path = os.path.join(directory, "peer.sqlite")
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute(SCHEMA)
    setup.commit()
    setup.close()
    stop = threading.Event()
    acks = [0] * threads

    def sql_worker(k: int) -> None:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        try:
            while not stop.is_set():
                conn.execute(INSERT, (os.urandom(8).hex(), "w", k, 1.0, False, "t"))
                acks[k] += 1
        finally:
            conn.close()

    sql = _run_threads(sql_worker, threads, seconds, stop, acks)
    return lex, sql


def _run_threads(worker: Callable[[int], None], threads: int, seconds: float,
                 stop: threading.Event, acks: list[int]) -> float:
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join(timeout=60)
    return sum(acks) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    print(f"{'operation':<18}{'rows':>10}{'lexicons/s':>14}{'sqlite3/s':>14}{'ratio':>9}"
          f"{'indexed':>9}")
    for n in sizes:
        for name, lex, sql, indexed in bench_size(n, make_rows(n)):
            extra = f"{lex / indexed:>8.1f}x" if indexed else ""
            print(f"{name:<18}{n:>10,}{lex:>14,.0f}{sql:>14,.0f}{lex / sql:>8.1f}x{extra}",
                  flush=True)
    directory = tempfile.mkdtemp(prefix="lexicons-bench-", dir=os.getcwd())
    try:
        save, load, size = bench_snapshot(make_rows(sizes[-1]), directory)
        print(f"\nsnapshot of {sizes[-1]:,} rows ({size / 1e6:.0f} MB CSV): "
              f"save {save:.2f} s, load {load:.2f} s")
        lex, sql = bench_durable(directory)
        print(f"durable writes, 50 threads: lexicons DB_FSYNC=always {lex:,.0f}/s, "
              f"sqlite3 synchronous=FULL {sql:,.0f}/s, ratio {lex / sql:.1f}x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
