"""Benchmark replicated writes (a Redis Stream) against the local journal and PostgreSQL.

    python bench/bench_replicated.py [--threads 16] [--seconds 3] [--nodes 3] [--rounds 3]
                                     [--appendfsync always] [--quick]

Every figure is acknowledged creates per second from the same number of threads,
each thread writing one row at a time and waiting for its answer, with the p50
and p99 latency of one write:

* ``replicated``: ``DATABASE = redis://`` on a private redis-server (started here,
  ``--appendfsync always`` by default: a write is on Redis' disk before it is
  answered). The measured node runs in this process; ``--nodes`` - 1 more
  nodes run in processes of their own and apply every write too. A write is
  answered once it is in the stream and applied on the measured node.
* ``journal``: the local journal with ``DB_FSYNC=always`` (one node).
* ``postgresql``: the same inserts into a table of a real server (``--dsn``,
  default ``host=127.0.0.1 dbname=test user=postgres``) with
  ``synchronous_commit=on``, one connection per thread, each insert its own
  transaction. The table's name is unique to the run; it is dropped after.

The three alternate, round after round; the median round of each is shown, and
with them what redis-server alone allows: XADDs of ~100 bytes from as many
connections, each waiting for its answer (a replicated write cannot be faster).
Then reads: ``get(pk)`` per second on the replicated database and on a local one.
Needs redis-server and psycopg (``pip install 'psycopg[binary]'``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_database import _run_threads  # noqa: E402

from lexicons import Database, Model  # noqa: E402
from lexicons.data.journal import Journal  # noqa: E402
from lexicons.data.replication import StreamLog  # noqa: E402


class Member(Model):
    name: str
    age: int
    score: float
    team: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    """A private redis-server in a temporary directory."""

    def __init__(self, directory: str, appendfsync: str):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        persistence = (["--appendonly", "no"] if appendfsync == "off" else
                       ["--appendonly", "yes", "--appendfsync", appendfsync])
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence, "--dir", directory, "--logfile", os.path.join(directory, "r.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def follower(url: str, stream: str) -> None:
    """Run one more node that applies the stream until its standard input closes."""
    db = Database([Member])
    log = StreamLog(db, url, stream, f"follower-{os.getpid()}")
    log.start()
    log.catch_up(30)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
    db.sync()   # hold every write the stream has before counting
    log.stop()
    sys.stdout.write(f"{db.count(Member)}\n")
    sys.stdout.flush()


def measure(write: Callable[[int], None], threads: int, seconds: float,
            setup: Callable[[int], Callable[[int], None]] | None = None) -> dict[str, float]:
    """Run *write* in *threads* threads for *seconds*; return rate and latencies (ms)."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    acks = [0] * threads

    def worker(k: int) -> None:
        fn = setup(k) if setup is not None else write
        mine = latencies[k]
        clock = time.perf_counter
        while not stop.is_set():
            started = clock()
            fn(k)
            mine.append(clock() - started)
            acks[k] += 1

    rate = _run_threads(worker, threads, seconds, stop, acks)
    every = sorted(x for part in latencies for x in part)
    return {"rate": rate, "p50": every[len(every) // 2] * 1000,
            "p99": every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
            "count": len(every)}


def bench_replicated(url: str, stream: str, nodes: int, threads: int,
                     seconds: float) -> tuple[dict[str, float], Database, list[int]]:
    followers = []
    for _ in range(nodes - 1):
        process = subprocess.Popen([sys.executable, __file__, "--follow", url, stream],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        followers.append(process)
    db = Database([Member])
    log = StreamLog(db, url, stream, "measured")
    log.start()
    log.catch_up(30)

    def write(k: int) -> None:
        db.create(Member, name="w", age=k, score=1.0, team="t")

    result = measure(write, threads, seconds)
    counts = []
    db.sync()
    for process in followers:
        out, _ = process.communicate("", timeout=120)
        counts.append(int(out.split()[-1]))
    log.stop()
    return result, db, counts


def bench_journal(directory: str, threads: int, seconds: float) -> dict[str, float]:
    db = Database([Member])
    db.journal = Journal(os.path.join(directory, "journal.000001"), "always", db.encode_record)

    def write(k: int) -> None:
        db.create(Member, name="w", age=k, score=1.0, team="t")
        db.commit()

    try:
        return measure(write, threads, seconds)
    finally:
        db.journal.close()


def bench_postgresql(dsn: str, threads: int, seconds: float) -> dict[str, float]:
    import psycopg

    table = f"lexicons_bench_{os.getpid()}_{os.urandom(4).hex()}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (pk TEXT PRIMARY KEY, name TEXT, age INTEGER, "
                     "score DOUBLE PRECISION, team TEXT)")
    connections: list = []
    lock = threading.Lock()
    insert = f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s)"

    def setup(k: int) -> Callable[[int], None]:
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute("SET synchronous_commit = on")
        with lock:
            connections.append(conn)
        cursor = conn.cursor()

        def write(k: int) -> None:
            cursor.execute(insert, (os.urandom(8).hex(), "w", k, 1.0, "t"))
        return write

    try:
        return measure(lambda k: None, threads, seconds, setup=setup)
    finally:
        for conn in connections:
            conn.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")


def bench_redis_alone(url: str, threads: int, seconds: float) -> dict[str, float]:
    """Return XADDs/s of ~100-byte entries from *threads* connections, each waiting for
    its answer: what the redis-server (and its AOF policy) allows at most."""
    import redis

    clients: list = []

    def setup(k: int) -> Callable[[int], None]:
        client = redis.Redis.from_url(url)
        clients.append(client)
        body = {"w": b"x" * 100}

        def write(k: int) -> None:
            client.xadd("bench:alone", body)
        return write

    try:
        return measure(lambda k: None, threads, seconds, setup=setup)
    finally:
        for client in clients:
            client.delete("bench:alone")
            client.close()


def read_rate(db: Database, seconds: float = 1.0) -> float:
    pks = db.query(Member, _limit=10000).pks
    if not pks:
        return 0.0
    get = db.get
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for pk in pks:
            get(Member, pk)
        n += len(pks)
    return n / (time.perf_counter() - started)


def line(name: str, result: dict[str, float], base: float | None = None) -> str:
    ratio = f"{result['rate'] / base:>8.2f}x" if base else ""
    return (f"{name:<44}{result['rate']:>12,.0f}{result['p50']:>10.2f}{result['p99']:>10.2f}"
            f"{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--nodes", type=int, default=3, help="nodes applying the stream")
    parser.add_argument("--appendfsync", default="always",
                        choices=("always", "everysec", "no", "off"),
                        help="Redis' AOF policy ('off': no AOF)")
    parser.add_argument("--dsn", default="host=127.0.0.1 dbname=test user=postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 second")
    parser.add_argument("--follow", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        follower(*args.follow)
        return
    seconds = 1.0 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    directory = tempfile.mkdtemp(prefix="lexicons-bench-")
    redis_server = Redis(directory, args.appendfsync)
    results: dict[str, list[dict[str, float]]] = {"pg": [], "journal": [], "replicated": [],
                                                  "alone": []}
    try:
        for r in range(rounds):   # alternate, so that a busy moment hits each alike
            stream = f"bench:{os.getpid()}:{r}"
            results["pg"].append(bench_postgresql(args.dsn, args.threads, seconds))
            results["journal"].append(bench_journal(directory, args.threads, seconds))
            replicated, db, counts = bench_replicated(redis_server.url, stream, args.nodes,
                                                      args.threads, seconds)
            results["replicated"].append(replicated)
            results["alone"].append(bench_redis_alone(redis_server.url, args.threads, seconds))
            rows = db.count(Member)
            assert all(c == rows for c in counts), f"followers hold {counts}, the node {rows}"
        pg, journal, replicated, alone = (median(results[k]) for k in
                                          ("pg", "journal", "replicated", "alone"))
        print(f"acknowledged creates, {args.threads} threads, {seconds:g} s each, median of "
              f"{rounds} round(s); load average {os.getloadavg()[0]:.1f}")
        print(f"{'':<44}{'writes/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'vs PG':>9}")
        print(line("postgresql synchronous_commit=on", pg, pg["rate"]))
        print(line("lexicons journal DB_FSYNC=always", journal, pg["rate"]))
        print(line(f"lexicons replicated, {args.nodes} node(s), AOF {args.appendfsync}",
                   replicated, pg["rate"]))
        print(line(f"(redis-server alone: XADD, AOF {args.appendfsync})", alone, pg["rate"]))
        print(f"every node holds the same {rows:,} rows (last round)")
        local = Database([Member])
        for _ in range(rows):
            local.create(Member, name="w", age=1, score=1.0, team="t")
        reads = [(read_rate(db), read_rate(local)) for _ in range(3)]   # alternating
        print(f"get(pk)/s, best of 3: replicated {max(r for r, _ in reads):,.0f}, "
              f"local {max(lo for _, lo in reads):,.0f}")
    finally:
        redis_server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Return the run of median rate."""
    return sorted(runs, key=lambda run: run["rate"])[len(runs) // 2]


if __name__ == "__main__":
    main()
