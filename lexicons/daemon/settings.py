"""Settings: every setting declared once, with its default, type and doc.

The declarations below are the single source of truth: loading, validation,
environment overrides (``LEXICONS_<NAME>``), ``lexiconsd settings`` and the
settings reference in README.md all read them.

A settings *file* is an ordinary Python module (``settings.py``) that assigns
upper-case names; it only needs the names it changes. Precedence, lowest
first: declared default, settings file, environment, explicit overrides.

Relative paths are made absolute at load time, before the daemon changes
directory: those of a settings file, and the defaults when there is one, against
that file's directory (so ``lexiconsd status --settings /srv/app/settings.py``
finds the daemon from anywhere); those of the environment and of explicit
overrides against the working directory (or *base_dir*).
"""
from __future__ import annotations

import json
import os
import runpy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lexicons.errors import SettingsError

ENV_PREFIX = "LEXICONS_"


# --- kinds: how a value is parsed from text and checked -----------------------------


@dataclass(frozen=True)
class Kind:
    """A type of setting: checks a Python value and parses an environment string."""

    name: str
    check: Callable[[Any], Any]
    parse: Callable[[str], Any]


def _fail(expected: str, value: Any) -> SettingsError:
    return SettingsError(f"expected {expected}, got {value!r}")


def integer(low: int | None = None, high: int | None = None) -> Kind:
    """An int, optionally bounded (inclusive)."""
    what = "an integer" + (
        f" from {low} to {high}" if low is not None and high is not None
        else f" >= {low}" if low is not None else "")

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(what, value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(what, value)
        return value

    def parse(text: str) -> int:
        try:
            return check(int(text.strip()))
        except ValueError:
            raise _fail(what, text) from None

    return Kind(what, check, parse)


def number(low: float | None = None) -> Kind:
    """A float (ints accepted), optionally with a lower bound."""
    what = "a number" + (f" >= {low}" if low is not None else "")

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(what, value)
        if low is not None and value < low:
            raise _fail(what, value)
        return float(value)

    def parse(text: str) -> float:
        try:
            return check(float(text.strip()))
        except ValueError:
            raise _fail(what, text) from None

    return Kind(what, check, parse)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("true or false", value)
    return value


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _fail("true or false (1/0, yes/no, on/off)", text)


BOOL = Kind("true or false", _check_bool, _parse_bool)


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("a string", value)
    return value


STR = Kind("a string", _check_str, lambda text: text)


def choice(*values: str) -> Kind:
    """One of a fixed set of strings (case-insensitive from the environment)."""
    what = "one of " + ", ".join(values)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in values:
            raise _fail(what, value)
        return value

    def parse(text: str) -> str:
        text = text.strip()
        for v in values:
            if v.lower() == text.lower():
                return v
        raise _fail(what, text)

    return Kind(what, check, parse)


def _check_str_list(value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail("a list of strings", value)
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise _fail("a list of strings", value)
    return items


def _parse_str_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            return _check_str_list(json.loads(text))
        except json.JSONDecodeError:
            raise _fail("a JSON list of strings or comma-separated words", text) from None
    return [part.strip() for part in text.split(",") if part.strip()]


STR_LIST = Kind("a list of strings", _check_str_list, _parse_str_list)


def _check_dict(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise _fail("a mapping", value)
    return dict(value)


def _parse_dict(text: str) -> dict:
    try:
        return _check_dict(json.loads(text))
    except json.JSONDecodeError:
        raise _fail("a JSON object", text) from None


DICT = Kind("a mapping", _check_dict, _parse_dict)


def path() -> Kind:
    """A filesystem path; relative paths are made absolute at load time."""
    return Kind("a path", _check_str, lambda text: text)


PATH = path()


# --- declarations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default, kind and a one-line doc."""

    name: str
    default: Any
    kind: Kind
    doc: str
    section: str = "daemon"
    live: bool = False  # re-read on reload (SIGHUP / `lexiconsd reload`)
    check: Callable[[Any], None] | None = field(default=None, compare=False)


DECLARED: dict[str, Setting] = {}


def declare(name: str, default: Any, kind: Kind, doc: str, *, section: str = "daemon",
            live: bool = False, check: Callable[[Any], None] | None = None) -> Setting:
    """Declare a setting; a name may be declared only once."""
    if name in DECLARED:
        raise SettingsError(f"setting {name} is declared twice")
    setting = Setting(name, default, kind, doc, section, live, check)
    DECLARED[name] = setting
    return setting


def _check_service_list(value: list[str]) -> None:
    for entry in value:
        module, sep, cls = entry.partition("/")
        if not sep or not module or not cls:
            raise SettingsError(f"{entry!r} is not of the form 'module.path/ClassName'")
    names = [entry.rpartition("/")[2] for entry in value]
    if len(set(names)) != len(names):
        raise SettingsError("a service class is named twice")


def _check_backplane(value: str) -> None:
    if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("expected 'memory' or a redis:// URL")


def _check_database(value: str) -> None:
    if value != "journal" and not value.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("expected 'journal' or a redis:// URL")


def _check_filters(value: dict) -> None:
    from lexicons.daemon.filters import check_setting  # the stages are the filters module's to name
    check_setting(value)


def _check_metrics_path(value: str) -> None:
    if value and not value.startswith("/"):
        raise SettingsError("expected a path starting with '/', or '' for none")


def _check_stack_size(value: int) -> None:
    if value % 4096:
        raise SettingsError("expected a multiple of 4096 bytes")



def _check_trust(value: list[str]) -> None:
    from lexicons.daemon.trust import TrustList  # stdlib only (ipaddress)

    try:
        TrustList(value)
    except SettingsError as exc:  # the caller names the setting itself
        raise SettingsError(str(exc).removeprefix("TRUST: ")) from None


def _check_http_url(value: str) -> None:
    if value and not value.startswith(("http://", "https://")):
        raise SettingsError("expected an http:// or https:// URL (or empty: off)")


def _check_headers(value: dict) -> None:
    from lexicons.daemon.backend import (
        check_header_spec,  # the sources are the backend module's to name
    )

    for name, spec in value.items():
        if not isinstance(name, str):
            raise SettingsError(f"header {name!r}: names must be strings")
        check_header_spec(name, spec)


DEFAULT_SERVICES = [
    "services.control/ControlService",
    "services.backplane/BackplaneService",
    "services.cluster/ClusterService",
    "services.persister/PersisterService",
    "services.rooms/RoomsService",
    "services.router/RouterService",
    "services.gate/GateService",
    "services.scheduler/SchedulerService",
    "services.tasks/TasksService",
    "services.fws/FilteredWebSocketService",
    "services.hightemplar/HighTemplarService",
    "services.amqp/AmqpService",
    "services.listener/ListenerService",
]

# daemon
declare("SERVICE_LIST", DEFAULT_SERVICES, STR_LIST,
        "services to run, as 'module.path/ClassName', started in order and stopped in reverse",
        check=_check_service_list)
declare("APP", "", STR,
        "module path of the application whose Models, Signals, Channels, Headers and Tasks run")
declare("DATA_DIR", "data", PATH, "directory of the CSV tables and the journal")
declare("LOCK_FILE", "lexiconsd.pid", PATH,
        "lock file holding the daemon's pid; a second daemon on the same file is refused")
declare("CONTROL_SOCKET", "lexiconsd.sock", PATH,
        "UNIX socket of the control service (mode 0600, owner only)")
declare("LOG_LEVEL", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        "log level", live=True)
declare("LOG_PATH", "lexiconsd.log", PATH,
        "log file ('-' for standard error); reopened on SIGUSR1 for rotation")
declare("ON_FATAL", "stop", choice("stop", "degrade"),
        "when a service exhausts its restarts: stop the daemon, or keep running degraded",
        live=True)
declare("RESTART_LIMIT", 5, integer(0),
        "restarts allowed within RESTART_WINDOW before a service is FATAL", live=True)
declare("RESTART_WINDOW", 60.0, number(0), "seconds over which restarts are counted", live=True)
declare("RESTART_BACKOFF", 0.5, number(0), "first delay before restarting a failed service",
        live=True)
declare("RESTART_BACKOFF_MAX", 30.0, number(0), "longest delay between restarts", live=True)
declare("STOP_TIMEOUT", 10.0, number(0), "seconds to wait for each service to stop")
declare("START_TIMEOUT", 30.0, number(0),
        "seconds `lexiconsd start` waits for the daemon to report it is ready")

# network
declare("HOST", "127.0.0.1", STR, "address to listen on", section="network")
declare("PORT", 5000, integer(0, 65535), "TCP port to listen on (0: any free port)",
        section="network")
declare("TRUST", ["*"], STR_LIST,
        "client addresses or networks allowed to connect; '*' (or an empty list) allows any",
        section="network", live=True, check=_check_trust)
declare("TLS_CERT", "", PATH, "TLS certificate chain (PEM); TLS is on when set with TLS_KEY",
        section="network")
declare("TLS_KEY", "", PATH, "TLS private key (PEM)", section="network")
declare("MAX_CONNECTIONS", 10000, integer(1), "connections held at once; more are refused (503)",
        section="network")
declare("MAX_MESSAGE_SIZE", 1 << 20, integer(1),
        "largest message a client may send, in bytes (larger: close 1009)", section="network")
declare("OUTBOX_LIMIT", 1 << 20, integer(1024),
        "bytes queued for one connection before it is closed as a slow consumer",
        section="network")
declare("PING_INTERVAL", 25.0, number(0),
        "seconds between pings to each client; one unanswered closes it (0: off)",
        section="network")
declare("HANDSHAKE_TIMEOUT", 10.0, number(0.1),
        "seconds a client has to send a complete HTTP request", section="network")
declare("PERMESSAGE_DEFLATE", False, BOOL,
        "offer permessage-deflate (server_no_context_takeover, so one frame serves all)",
        section="network")
declare("MAX_HEADER_SIZE", 16384, integer(1024),
        "largest HTTP request head (request line and headers), in bytes (larger: 431)",
        section="network")
declare("HANDSHAKE_WORKERS", 4, integer(1),
        "threads running header checks and plain HTTP handlers, off the accepting thread",
        section="network")
declare("TICKET_TTL", 30.0, number(1),
        "seconds a connect ticket from POST /session stays good (it is good for one connect)",
        section="network")
declare("SESSION_TTL", 43200.0, number(1),
        "seconds a login session from POST /session lasts unused (held in memory)",
        section="network")
declare("CLOSE_TIMEOUT", 2.0, number(0.01),
        "seconds a closing connection has to answer the close frame before it is dropped",
        section="network")
declare("THREAD_STACK_SIZE", 512 * 1024, integer(65536),
        "stack size in bytes of each reader and connection thread (only touched pages use "
        "memory)",
        section="network", check=_check_stack_size)
declare("READER_PATIENCE", 0.01, number(0.001),
        "seconds every reader may be busy in handlers before another is started, so a "
        "call that blocks holds up only its own connection", section="network")
declare("SWITCH_INTERVAL", 0.1, number(0),
        "seconds a thread may hold Python's GIL while others wait (sys.setswitchinterval; "
        "0: Python's 0.005)", section="network")
declare("STATIC_DIR", "", PATH, "directory of static files served over plain HTTP",
        section="network")

# application
declare("WORKERS", 8, integer(1), "signals that may run at once (the worker pool)",
        section="application")
declare("TASK_WORKERS", 4, integer(1), "interval tasks that may run at once (their own threads)",
        section="application")
declare("TASK_TIMEOUT", 5.0, number(0.01),
        "seconds each shutdown task may run, and the stop waits for running interval tasks",
        section="application")

# data
declare("DB_FSYNC", "everysec", choice("always", "everysec", "no"),
        "journal flush policy: fsync before each answer, once a second, or leave it to the OS",
        section="data")
declare("SNAPSHOT_INTERVAL", 300.0, number(0),
        "seconds between CSV snapshots of changed tables (0: only at stop)", section="data")
declare("DATABASE", "journal", STR,
        "'journal' (this node's own data) or a redis:// URL: every node applies every write "
        "from one Redis Stream, so a cluster shares one data set", section="data",
        check=_check_database)
declare("DATABASE_STREAM", "lexicons:db", STR,
        "replicated database: the Redis Stream of the writes (one per deployment)",
        section="data")
declare("DATABASE_TIMEOUT", 10.0, number(0.1),
        "replicated database: seconds a recorded write may take to be applied here, and "
        "start-up waits to catch up with the stream", section="data")
declare("DATABASE_NODE_TIMEOUT", 300.0, number(1),
        "replicated database: seconds a silent node keeps the stream from being trimmed "
        "below its position (later, it restarts from the shared snapshot)", section="data")

# scale-out and integrations
declare("BACKPLANE", "memory", STR,
        "'memory' (one process) or a redis:// URL to share broadcasts between nodes",
        section="integration", check=_check_backplane)
declare("BACKPLANE_PREFIX", "lexicons", STR,
        "prefix of the Redis channel names, so several deployments can share one Redis",
        section="integration")
declare("BACKPLANE_QUEUE", 100000, integer(1),
        "broadcasts waiting to be sent to Redis; past that they are dropped for other nodes",
        section="integration")
declare("BACKPLANE_RETRY_MAX", 0.5, number(0.01),
        "longest delay between two attempts to reach Redis again", section="integration")
declare("HISTORY_MAX_SIZE", 10000, integer(1),
        "largest history_size a Channel class may declare (publications kept per channel)",
        section="integration")
declare("HISTORY_MAX_TTL", 7 * 86400.0, number(1),
        "longest history_ttl a Channel class may declare, in seconds", section="integration")
declare("HISTORY_MAX_CHANNELS", 10000, integer(1),
        "channels whose history one node keeps in memory (memory backplane); the least "
        "recently used is dropped first", section="integration")
declare("HISTORY_META_TTL", 86400.0, number(1),
        "seconds Redis keeps a channel's offset and epoch after its last publication "
        "(then it starts over with a new epoch)", section="integration")
declare("PRESENCE_TTL", 15.0, number(0.1),
        "seconds a node's presence entries live in Redis without its heartbeat (every third "
        "of it): a dead node's members are gone within 4/3 of this", section="integration")
declare("BOOTSTRAP_URL", "", STR,
        "high-templar endpoint: backend URL asked for each client's allowed rooms",
        section="integration", check=_check_http_url)
declare("BACKEND_TIMEOUT", 5.0, number(0.1), "seconds to wait for the backend's answer",
        section="integration")
declare("BACKEND_HEADERS", {}, DICT,
        "extra headers sent to the backend on bootstrap: a value, or {'param'|'header'|"
        "'cookie': name, 'format': 'Token {}'} taken from the client's request",
        section="integration", check=_check_headers)
declare("BOOTSTRAP_SOCKET", "", PATH,
        "UNIX socket to reach the backend through (BOOTSTRAP_URL still gives the path and "
        "Host); '' dials BOOTSTRAP_URL", section="integration")
declare("TRIGGER_TRUST", ["127.0.0.1", "::1", "10.0.0.0/8", "172.16.0.0/12",
                         "192.168.0.0/16", "fc00::/7"], STR_LIST,
        "high-templar endpoint: addresses or networks that may POST /trigger/ ('*': any)",
        section="integration", live=True, check=_check_trust)
declare("IDLE_TIMEOUT", 300.0, number(0),
        "high-templar endpoint: seconds of silence before a connection is closed (0: never)",
        section="integration")
declare("AMQP_URL", "", STR, "RabbitMQ URL to consume triggers from (empty: off)",
        section="integration")
declare("AMQP_EXCHANGE", "hightemplar", STR, "exchange the trigger consumer binds to",
        section="integration")
declare("FILTERS", {}, DICT,
        "filter pipelines: {stage: ['module.path/ClassName', ...]}; stages: connect, data, "
        "message, disconnect, backplane", section="integration", check=_check_filters)
declare("RATE_LIMIT", 20.0, number(0.001),
        "lexicons.daemon.filters/RateLimit: messages a second each connection may send",
        section="integration", live=True)
declare("RATE_LIMIT_BURST", 40, integer(1),
        "lexicons.daemon.filters/RateLimit: messages a connection may send at once after a pause",
        section="integration", live=True)
declare("RATE_LIMIT_CLOSE", 100, integer(0),
        "lexicons.daemon.filters/RateLimit: messages dropped within 10 s before the connection is "
        "closed (1008)", section="integration", live=True)
declare("METRICS_PATH", "/metrics", STR,
        "plain HTTP path of the Prometheus metrics ('': not served)", section="integration",
        check=_check_metrics_path)


# coming from zephserver and filtered_websocket


def _check_tasks_path(value: dict) -> None:
    for name, entry in value.items():
        module, sep, cls = entry.partition("/") if isinstance(entry, str) else ("", "", "")
        if not isinstance(name, str) or not sep or not module or not cls:
            raise SettingsError(f"task {name!r}: expected 'module.path/ClassName', got {entry!r}")


def _check_server_list(value: Any) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise _fail("a list of servers ({'hostname', 'address', 'port'} or 'host:port')", value)
    servers = list(value)
    from lexicons.wire.cluster import parse_servers  # the cluster module owns the entries' shape

    parse_servers(servers)
    return servers


def _parse_server_list(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            return _check_server_list(json.loads(text))
        except json.JSONDecodeError:
            raise _fail("a JSON list of servers", text) from None
    return _check_server_list([part.strip() for part in text.split(",") if part.strip()])


SERVER_LIST = Kind("a list of servers", _check_server_list, _parse_server_list)


def _check_storage(value: str) -> None:
    if value not in ("memory", "redis") and "/" not in value:
        raise SettingsError("expected 'memory', 'redis' or 'module.path/ClassName'")


declare("TASKS_PATH", {}, DICT,
        "zephserver tasks: {name: 'module.path/ClassName'}, started by a client message "
        "{\"task\": name, ...}", section="compat", check=_check_tasks_path)
declare("TASK_QUEUE", 1000, integer(1),
        "zephserver tasks waiting for a worker; past that a client is told the server is busy",
        section="compat")
declare("CLUSTER_SERVER_LIST", [], SERVER_LIST,
        "static cluster: every node's {'hostname', 'address', 'port'} (or 'host:port'); "
        "cluster events go to each directly (fewer than 2: no cluster)", section="compat")
declare("CLUSTER_SELF", "", STR,
        "static cluster: this node's entry, as its hostname or 'address:port' (default: the "
        "entry whose hostname is this machine's)", section="compat")
declare("FWS_FILTERS", [], STR_LIST,
        "filtered_websocket filter modules run on every native connection, in order "
        "(shipped: broadcast_messages, broadcast_messages_by_token, broadcast_pubsub, "
        "stdout_messages)", section="compat")
declare("FWS_STORAGE", "memory", STR,
        "filtered_websocket storage object: 'memory', 'redis' (FWS_REDIS, shared with other "
        "applications) or 'module.path/ClassName'", section="compat", check=_check_storage)
declare("FWS_REDIS", "redis://localhost:6379/0", STR,
        "filtered_websocket: Redis URL of the 'redis' storage object and of the pub/sub relay",
        section="compat")
declare("FWS_REDIS_KEY", "fws", STR,
        "filtered_websocket: prefix of the storage object's Redis keys", section="compat")
declare("FWS_REDIS_CHANNELS", [], STR_LIST,
        "filtered_websocket: Redis pub/sub channels broadcast_pubsub relays to clients and "
        "back (empty with broadcast_pubsub: ['global'])", section="compat")


# --- loaded settings ------------------------------------------------------------------


class Settings:
    """A validated, read-only set of setting values, read as attributes."""

    def __init__(self, values: Mapping[str, Any], *, source: str | None = None,
                 extra: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None, base_dir: str | None = None):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "extra", dict(extra or {}))
        # what load() was given besides the file, so that a reload reads the same sources
        object.__setattr__(self, "overrides", dict(overrides or {}))
        object.__setattr__(self, "base_dir", base_dir)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        extra = object.__getattribute__(self, "extra")
        if name in extra:
            return extra[name]
        raise AttributeError(f"no setting named {name}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only; use replace()")

    def get(self, name: str, default: Any = None) -> Any:
        """Return a setting (or an extra name from the settings file)."""
        try:
            return getattr(self, name)
        except AttributeError:
            return default

    def as_dict(self) -> dict[str, Any]:
        """Return the declared settings as a plain dict."""
        return dict(self._values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some settings changed, validated like any other source."""
        values = dict(self._values)
        for name, value in changes.items():
            values[name] = _validate(name, value, f"override {name}")
        return Settings(values, source=self.source, extra=self.extra,
                        overrides={**self.overrides, **changes}, base_dir=self.base_dir)


def _validate(name: str, value: Any, where: str) -> Any:
    setting = DECLARED.get(name)
    if setting is None:
        raise SettingsError(f"{where}: unknown setting {name}")
    try:
        value = setting.kind.check(value)
        if setting.check is not None:
            setting.check(value)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {name}: {exc}") from None
    return value


def _read_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SettingsError(f"settings file {path} does not exist")
    try:
        namespace = runpy.run_path(path, run_name="lexicons_settings")
    except Exception as exc:  # a settings file is user code: report any failure by name
        raise SettingsError(f"settings file {path} failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


def load(path: str | None = None, *, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None, base_dir: str | None = None) -> Settings:
    """Load settings: defaults, then the file at *path*, the environment, *overrides*.

    Raises SettingsError naming the setting (and where its value came from) when a
    value is of the wrong type or out of range, or an environment variable names no
    setting.
    """
    env = os.environ if env is None else env
    base_dir = os.path.abspath(base_dir or os.getcwd())
    values = {name: s.default for name, s in DECLARED.items()}
    extra: dict[str, Any] = {}
    # the directory each path setting's value is relative to (where it was written)
    relative_to = dict.fromkeys(DECLARED, base_dir)
    if path:
        path = os.path.abspath(path)
        relative_to = dict.fromkeys(DECLARED, os.path.dirname(path))
        for name, value in _read_file(path).items():
            if name in DECLARED:
                values[name] = _validate(name, value, path)
            else:
                extra[name] = value
    for key, text in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "SETTINGS":
            continue
        name = key[len(ENV_PREFIX):]
        if name not in DECLARED:
            raise SettingsError(f"environment: {key} names no setting")
        try:
            values[name] = DECLARED[name].kind.parse(text)
        except SettingsError as exc:
            raise SettingsError(f"environment: {key}: {exc}") from None
        values[name] = _validate(name, values[name], f"environment {key}")
        relative_to[name] = base_dir
    for name, value in (overrides or {}).items():
        values[name] = _validate(name, value, f"override {name}")
        relative_to[name] = base_dir
    for name, setting in DECLARED.items():
        if setting.kind is PATH and values[name] and values[name] != "-":
            values[name] = os.path.join(relative_to[name], os.path.expanduser(values[name]))
    return Settings(values, source=path, extra=extra, overrides=overrides, base_dir=base_dir)


def reference_table(section: str | None = None) -> str:
    """Return the settings reference as a Markdown table (for README and `lexiconsd settings`).

    With *section*, only the settings of that section (``daemon``, ``network``, ...).
    """
    lines = ["| setting | default | type | live | what it does |",
             "| --- | --- | --- | --- | --- |"]
    for s in DECLARED.values():
        if section is not None and s.section != section:
            continue
        default = json.dumps(s.default) if not isinstance(s.default, str) else repr(s.default)
        lines.append(f"| `{s.name}` | `{default}` | {s.kind.name} | "
                     f"{'yes' if s.live else ''} | {s.doc} |")
    return "\n".join(lines)
