"""filtered_websocket's command line: ``lexicons serve -p PORT -c config.json -f filter ...``.

The flags are filtered_websocket's (``fws_server``) and mean the same:

``-p/--port``            the listening port (``serve``: 9000 unless set elsewhere)
``-c/--config``          a JSON file of the same options (lines starting with ``#``
                         are comments); it may also hold any lexicons setting by name
``-f/--filters``         filter modules, in order (shipped ones by name:
                         ``broadcast_messages`` ...)
``-key``, ``-cert``      TLS key and certificate
``--redis_host``, ``--redis_port``, ``--redis_key``, ``--redis_channels``
                         the Redis of the storage object and of the pub/sub relay
``--storage``            the storage object (``memory``, ``redis``, ``module/Class``);
                         filtered_websocket read ``STORAGE_OBJECT_MODULE`` from the
                         environment, which works too

They become settings (``PORT``, ``FWS_FILTERS``, ``TLS_KEY`` ...) on top of the
settings file; options on the command line win over the config file. With no
filter and no application, ``broadcast_messages`` runs: every message goes to
every other client.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from lexicons.daemon import settings as settings_mod
from lexicons.errors import SettingsError

#: What ``serve`` listens on unless -p, the config file or the settings say otherwise.
DEFAULT_PORT = 9000
#: The config file's names that are not lexicons setting names.
CONFIG_NAMES = {"port": "PORT", "filters": "FWS_FILTERS", "key": "TLS_KEY", "cert": "TLS_CERT",
                "redis_key": "FWS_REDIS_KEY", "redis_channels": "FWS_REDIS_CHANNELS",
                "storage": "FWS_STORAGE"}
#: filtered_websocket's storage modules (STORAGE_OBJECT_MODULE) and their lexicons names.
STORAGE_MODULES = {"filtered_websocket.storage_objects.default": "memory",
                   "filtered_websocket.storage_objects.redis": "redis"}
SERVICE = "services.fws/FilteredWebSocketService"
FLAGS = ("port", "config", "filters", "key", "cert", "redis_host", "redis_port", "redis_key",
         "redis_channels", "storage")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add filtered_websocket's flags to *parser*."""
    group = parser.add_argument_group("filtered_websocket options")
    group.add_argument("-p", "--port", type=int, help="the listening port")
    group.add_argument("-c", "--config", metavar="FILE", help="a JSON config file")
    group.add_argument("-f", "--filters", nargs="*", metavar="MODULE",
                       help="filter modules to run, in order")
    group.add_argument("-key", dest="key", metavar="FILE", help="a key file (TLS)")
    group.add_argument("-cert", dest="cert", metavar="FILE", help="a certificate file (TLS)")
    group.add_argument("--redis_host", help="Redis host (storage object, pub/sub)")
    group.add_argument("--redis_port", type=int, help="Redis port")
    group.add_argument("--redis_key", help="prefix of the storage object's Redis keys")
    group.add_argument("--redis_channels", nargs="*", metavar="CHANNEL",
                       help="pub/sub channels to relay")
    group.add_argument("--storage", help="storage object: memory, redis or module.path/Class")


def given(args: argparse.Namespace) -> bool:
    """Tell whether any filtered_websocket flag was given."""
    return any(getattr(args, name, None) is not None for name in FLAGS)


def read_config(path: str) -> dict[str, Any]:
    """Return the options of a JSON config file as {flag name: value}; SettingsError if bad."""
    try:
        with open(path, encoding="utf-8") as config_file:
            text = "".join(line for line in config_file if not line.startswith("#"))
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"config file {path}: not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise SettingsError(f"config file {path}: expected a JSON object of options")
    return config


def _setting_name(key: str, path: str) -> str:
    name = CONFIG_NAMES.get(key) or key.upper()
    if name not in settings_mod.DECLARED:
        raise SettingsError(f"config file {path}: unknown option {key!r}")
    return name


def overrides(args: argparse.Namespace, base: settings_mod.Settings,
              serve: bool) -> dict[str, Any]:
    """Return the settings the flags (and their config file) set, on top of *base*."""
    options: dict[str, Any] = {}
    values: dict[str, Any] = {}
    if args.config:
        for key, value in read_config(args.config).items():
            if key == "flags":  # filtered_websocket's list of boolean flags
                for flag in value if isinstance(value, list) else [value]:
                    values[_setting_name(str(flag), args.config)] = True
            elif key in ("redis_host", "redis_port"):
                options[key] = value
            else:
                values[_setting_name(key, args.config)] = value
    for flag in ("port", "filters", "key", "cert", "redis_key", "redis_channels", "storage"):
        value = getattr(args, flag, None)
        if value is not None:
            values[CONFIG_NAMES[flag]] = value
    for flag in ("redis_host", "redis_port"):
        if getattr(args, flag, None) is not None:
            options[flag] = getattr(args, flag)
    if options:
        values["FWS_REDIS"] = (f"redis://{options.get('redis_host', 'localhost')}:"
                               f"{options.get('redis_port', 6379)}/0")
    module = os.environ.get("STORAGE_OBJECT_MODULE")
    if module and "FWS_STORAGE" not in values:
        values["FWS_STORAGE"] = STORAGE_MODULES.get(module, f"{module}/StorageObject")
    filters = values.get("FWS_FILTERS", base.FWS_FILTERS)
    if not filters and not values.get("APP", base.APP):
        values["FWS_FILTERS"] = ["broadcast_messages"]  # filtered_websocket's default server
    services = list(values.get("SERVICE_LIST", base.SERVICE_LIST))
    if SERVICE not in services:
        at = next((i for i, s in enumerate(services) if s.endswith("/ListenerService")),
                  len(services))
        values["SERVICE_LIST"] = services[:at] + [SERVICE] + services[at:]
    if serve:
        default = settings_mod.DECLARED
        if "PORT" not in values and base.PORT == default["PORT"].default:
            values["PORT"] = DEFAULT_PORT
        if "LOG_PATH" not in values and base.source is None:
            values["LOG_PATH"] = "-"  # a server in the foreground logs to the terminal
    return values


def apply(args: argparse.Namespace, settings: settings_mod.Settings,
          serve: bool = False) -> settings_mod.Settings:
    """Return *settings* with the flags applied (unchanged when none was given)."""
    if not serve and not given(args):
        return settings
    changes = overrides(args, settings, serve)
    base_dir = settings.base_dir or os.getcwd()
    for name, value in changes.items():  # relative paths: from where the command runs
        declared = settings_mod.DECLARED.get(name)
        if (declared is not None and declared.kind is settings_mod.PATH
                and isinstance(value, str) and value not in ("", "-")):
            changes[name] = os.path.join(base_dir, os.path.expanduser(value))
    return settings.replace(**changes)
