"""Metrics: the router's call statistics and the Prometheus exposition of a daemon.

Theory of operation
-------------------
Almost nothing here runs on the hot path. The services already count what
they do (``info()``: connections, broadcasts, slow consumers, restarts,
journal lag, ...); :class:`DaemonCollector` reads those counters *at scrape
time*, so a daemon that is never scraped pays nothing for them.

The exceptions are the router's per-call numbers, kept in a
:class:`CallStats`: for each call, one ``record()`` (a counter per signal and
outcome, a latency histogram per signal: a few dict and list operations, no
lock and no prometheus_client object), plus a plain integer increment per
message and per reply. Label values are bounded: signals are the declared
ones (the protocol rejects any other name before a call runs), outcomes a
fixed set. Increments take no lock, so under heavy load from several
threads a count may rarely be lost; a count never goes down.

Each daemon has its own ``CollectorRegistry`` (never prometheus_client's
global default), so several daemons in one process each expose their own
numbers. The listener serves it on ``METRICS_PATH`` (default ``/metrics``)
in the Prometheus text format.
"""
from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lexicons.daemon.service import ServiceState

#: The clock call latencies are measured with.
clock = time.perf_counter

#: Upper bounds (seconds) of the call latency histogram's buckets.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0)

#: How a call ended, as CallStats.record takes it: answered; refused by the signal
#: (CallError, NotPermitted); failed (an exception in the signal, its commit or its answer).
OK, ERROR, FAILED = 0, 1, 2
#: The outcome label of each of those.
OUTCOMES = ("ok", "error", "failed")
_SUM = len(OUTCOMES)       # a row: one count per outcome, the latency sum, the buckets
_FIRST_BUCKET = _SUM + 1


class CallStats:
    """Counts and times the router's calls (see the module doc).

    Attributes read by the collector: ``received`` (messages handed to the
    router), ``sent`` (replies and errors sent to callers), ``rejected``
    (calls refused by the protocol: invalid JSON, unknown signal, bad
    arguments); per declared signal, :attr:`calls` and :meth:`histogram`.
    """

    def __init__(self, signals: Iterable[str], buckets: Iterable[float] = BUCKETS):
        self.bounds = tuple(buckets)
        self.received = 0
        self.sent = 0
        self.rejected = 0
        # one flat list per signal: counts by outcome, latency sum, bucket counts (not
        # cumulative; the last is +Inf); a list is the cheapest thing to bump per call
        self.rows = {name: [0] * _SUM + [0.0] + [0] * (len(self.bounds) + 1)
                     for name in signals}

    def record(self, signal: str, outcome: int, seconds: float,
               _bisect: Any = bisect.bisect_left) -> None:
        """Count one call of a declared *signal* that ended with *outcome* after *seconds*."""
        row = self.rows[signal]
        row[outcome] += 1
        row[_SUM] += seconds
        row[_FIRST_BUCKET + _bisect(self.bounds, seconds)] += 1

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """Return the calls counted, by (signal, outcome label)."""
        return {(name, label): row[index] for name, row in self.rows.items()
                for index, label in enumerate(OUTCOMES)}

    def histogram(self, signal: str) -> tuple[list[tuple[str, int]], float]:
        """Return one signal's cumulative buckets as (le, count) pairs, and its sum."""
        row = list(self.rows[signal])
        total = 0
        pairs = []
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), row[_FIRST_BUCKET:],
                                strict=True):
            total += count
            pairs.append((bound, total))
        return pairs, row[_SUM]


def _le(bound: float) -> str:
    return repr(float(bound))


def _gauge(name: str, doc: str, value: float | None = None,
           labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, labels=labels)


def _counter(name: str, doc: str, value: float | None = None,
             labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value, labels=labels)


def _number(value: Any) -> float | None:
    """Return *value* as a float if it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class DaemonCollector:
    """Read a daemon's numbers at scrape time and yield them as Prometheus metrics."""

    def __init__(self, manager: Any):
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        """Yield every metric of the daemon (called by the registry at each scrape)."""
        status = self.manager.status()
        services = {s["name"]: s for s in status["services"]}
        yield from self._daemon(status)
        yield from self._listener(services.get("listener"))
        yield from self._router(services.get("router"))
        yield from self._rooms(services.get("rooms"))
        yield from self._persister(services.get("persister"))
        yield from self._backplane(services.get("backplane"))
        yield from self._scheduler(services.get("scheduler"))
        yield from self._filters()

    def _service(self, name: str) -> Any:
        return self.manager.get_service(name) if self.manager.has_service(name) else None

    # --- the daemon and its services ------------------------------------------------------

    def _daemon(self, status: dict[str, Any]) -> Iterator[Metric]:
        yield _gauge("lexicons_uptime_seconds", "Seconds since the daemon started.",
                     status.get("uptime", 0.0))
        yield _gauge("lexicons_healthy",
                     "1 when every service is RUNNING and none is hung, else 0.",
                     1.0 if status.get("healthy") else 0.0)
        state = _gauge("lexicons_service_state",
                       "1 for the state each service is in, 0 for the others.",
                       labels=["service", "state"])
        restarts = _counter("lexicons_service_restarts",
                            "Times the manager restarted each service after a failure.",
                            labels=["service"])
        hung = _gauge("lexicons_service_hung",
                      "1 when a service missed its heartbeat, else 0.", labels=["service"])
        for service in status["services"]:
            name = service["name"]
            for possible in ServiceState:
                state.add_metric([name, possible.value],
                                 1.0 if service["state"] == possible.value else 0.0)
            restarts.add_metric([name], service.get("restarts", 0))
            hung.add_metric([name], 1.0 if service.get("hung") else 0.0)
        yield state
        yield restarts
        yield hung

    def _listener(self, described: dict[str, Any] | None) -> Iterator[Metric]:
        if described is None:
            return
        info = described.get("info") or {}
        yield _gauge("lexicons_connections", "Websocket connections open now.",
                     info.get("connections", 0))
        yield _counter("lexicons_connections_accepted",
                       "TCP connections accepted by the listener.", info.get("accepted", 0))
        refused = _counter("lexicons_handshakes_refused",
                           "Requests answered with an HTTP error, by status.",
                           labels=["status"])
        for code, count in sorted((info.get("refused") or {}).items()):
            refused.add_metric([str(code)], count)
        yield refused
        yield _counter("lexicons_slow_consumer_closes",
                       "Connections closed because their outbound buffer overflowed.",
                       info.get("slow_consumers", 0))
        hub = getattr(self._service("listener"), "hub", None)
        sizes = [conn.out_bytes for conn in list(hub.connections)] if hub is not None else []
        yield _gauge("lexicons_outbound_buffer_bytes",
                     "Bytes queued for clients, summed over every connection.",
                     float(sum(sizes)))
        yield _gauge("lexicons_outbound_buffer_max_bytes",
                     "Bytes queued for the connection with the most queued.",
                     float(max(sizes, default=0)))

    def _router(self, described: dict[str, Any] | None) -> Iterator[Metric]:
        router = self._service("router")
        stats: CallStats | None = getattr(router, "stats", None)
        if described is None or stats is None:
            return
        filters = getattr(router, "filters", None)
        refused = 0
        if filters is not None:  # messages the data filters took before the router saw them
            refused = filters.dropped["data"] + filters.failed["data"]
        yield _counter("lexicons_messages_received",
                       "Messages received from native-protocol clients.",
                       stats.received + refused)
        sent = _counter("lexicons_messages_sent", "Messages sent to clients, by kind.",
                        labels=["kind"])
        sent.add_metric(["reply"], stats.sent)
        rooms = self._service("rooms")
        sent.add_metric(["broadcast"], getattr(rooms, "delivered", 0))
        yield sent
        calls = _counter("lexicons_calls", "Calls run, by signal and outcome (ok, error, "
                         "failed).", labels=["signal", "outcome"])
        for (signal, outcome), count in sorted(stats.calls.items()):
            calls.add_metric([signal, outcome], count)
        yield calls
        yield _counter("lexicons_calls_rejected",
                       "Calls refused before running: invalid JSON, unknown signal, bad "
                       "arguments.", stats.rejected)
        latency = HistogramMetricFamily(
            "lexicons_call_duration_seconds",
            "Seconds from a call's start to its answer being sent, by signal.",
            labels=["signal"])
        for signal in sorted(stats.rows):
            buckets, total = stats.histogram(signal)
            if buckets[-1][1]:  # signals never called yet: no series of zeros
                latency.add_metric([signal], buckets, total)
        yield latency

    def _rooms(self, described: dict[str, Any] | None) -> Iterator[Metric]:
        if described is None:
            return
        info = described.get("info") or {}
        yield _gauge("lexicons_channels", "Channels with at least one member on this node.",
                     info.get("channels", 0))
        yield _gauge("lexicons_channel_memberships",
                     "Memberships of connections in channels on this node.",
                     info.get("memberships", 0))
        yield _counter("lexicons_broadcasts", "Broadcasts published by this node.",
                       info.get("published", 0))

    def _persister(self, described: dict[str, Any] | None) -> Iterator[Metric]:
        if described is None:
            return
        info = described.get("info") or {}
        rows = _gauge("lexicons_table_rows", "Rows in each table.", labels=["table"])
        for table, count in sorted((info.get("tables") or {}).items()):
            rows.add_metric([table], count)
        yield rows
        journal = info.get("journal")
        if journal:
            yield _gauge("lexicons_journal_lag_records",
                         "Journal records written but not fsynced yet.", journal.get("lag", 0))
            yield _gauge("lexicons_journal_bytes", "Size of the current journal file.",
                         journal.get("bytes", 0))
            yield _counter("lexicons_journal_fsyncs", "fsync calls on the journal.",
                           journal.get("fsyncs", 0))
        if info.get("last_snapshot") is not None:
            yield _gauge("lexicons_last_snapshot_timestamp_seconds",
                         "Unix time of the last CSV snapshot.", info["last_snapshot"])

    def _backplane(self, described: dict[str, Any] | None) -> Iterator[Metric]:
        if described is None:
            return
        info = described.get("info") or {}
        kind = str(info.get("kind", "unknown"))
        state = str(info.get("state", "up" if described.get("state") == "RUNNING" else "down"))
        up = _gauge("lexicons_backplane_up",
                    "1 when the backplane delivers to other nodes (memory: always), else 0.",
                    labels=["kind", "state"])
        up.add_metric([kind, state], 0.0 if info.get("degraded") or state != "up" else 1.0)
        yield up
        for key, doc in (("channels", "Channels this node receives from the backplane."),
                         ("queued", "Broadcasts waiting to be sent to the backplane.")):
            value = _number(info.get(key))
            if value is not None:
                yield _gauge(f"lexicons_backplane_{key}", doc, value)
        messages = _counter("lexicons_backplane_messages",
                            "Backplane broadcasts by what happened to them.", labels=["kind"])
        for key in ("published", "sent", "received", "dropped"):
            value = _number(info.get(key))
            if value is not None:
                messages.add_metric([key], value)
        yield messages

    def _scheduler(self, described: dict[str, Any] | None) -> Iterator[Metric]:
        if described is None:
            return
        runs = _counter("lexicons_task_runs", "Runs of each task.", labels=["task"])
        failures = _counter("lexicons_task_failures", "Failed runs of each task.",
                            labels=["task"])
        for task in (described.get("info") or {}).get("tasks", ()):
            runs.add_metric([task["name"]], task.get("runs", 0))
            failures.add_metric([task["name"]], task.get("failures", 0))
        yield runs
        yield failures

    def _filters(self) -> Iterator[Metric]:
        filters = getattr(self._service("router"), "filters", None)
        if not filters:
            return
        dropped = _counter("lexicons_filter_dropped",
                           "What the filters of each stage dropped.", labels=["stage"])
        failed = _counter("lexicons_filter_failures",
                          "Times a filter raised, by stage.", labels=["stage"])
        for stage, chain in filters.stages.items():
            if chain:
                dropped.add_metric([stage], filters.dropped[stage])
                failed.add_metric([stage], filters.failed[stage])
        yield dropped
        yield failed


class Metrics:
    """One daemon's registry and the plain HTTP route that serves it."""

    #: The classic text format, which every Prometheus version reads.
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, manager: Any):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(manager))
        self.scrapes = 0
        self.last_scrape_seconds = 0.0

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        started = time.perf_counter()
        text = generate_latest(self.registry)
        self.scrapes += 1
        self.last_scrape_seconds = time.perf_counter() - started
        return text
