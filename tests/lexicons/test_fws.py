"""filtered_websocket's command line, filter loading and storage objects."""
import json

import pytest

from lexicons import fws
from lexicons.cli import build_parser
from lexicons.daemon import settings as settings_mod
from lexicons.errors import ServiceError, SettingsError
from lexicons.fws import cli, storage


def served(tmp_path, *argv):
    """Return the settings `lexicons serve ARGV` would run with."""
    args = build_parser().parse_args(["serve", *argv])
    base = settings_mod.load(None, env={}, base_dir=str(tmp_path))
    return cli.apply(args, base, serve=True)


def test_flags_become_settings(tmp_path):
    """-p, -f, --redis_* and --storage set the settings they stand for."""
    s = served(tmp_path, "-p", "9100", "-f", "broadcast_pubsub", "stdout_messages",
               "--redis_host", "cache", "--redis_port", "6380", "--redis_key", "k",
               "--redis_channels", "news", "chat", "--storage", "redis")
    assert s.PORT == 9100
    assert s.FWS_FILTERS == ["broadcast_pubsub", "stdout_messages"]
    assert s.FWS_REDIS == "redis://cache:6380/0"
    assert (s.FWS_REDIS_KEY, s.FWS_REDIS_CHANNELS, s.FWS_STORAGE) == ("k", ["news", "chat"],
                                                                      "redis")
    assert "services.fws/FilteredWebSocketService" in s.SERVICE_LIST


def test_serve_defaults_to_port_9000_and_the_broadcast_server(tmp_path):
    """Without flags, serve is filtered_websocket's default: port 9000, broadcast_messages."""
    s = served(tmp_path)
    assert s.PORT == 9000
    assert s.FWS_FILTERS == ["broadcast_messages"]
    assert s.LOG_PATH == "-"


def test_the_config_file_holds_options_and_settings_and_flags_win(tmp_path):
    """The JSON config holds filtered_websocket's options and lexicons settings (any case);
    '#' lines are comments; the command line wins over the file."""
    config = tmp_path / "config.json"
    config.write_text("# a comment\n" + json.dumps({
        "port": 9200, "filters": ["stdout_messages"], "redis_host": "cache",
        "log_level": "DEBUG", "MAX_CONNECTIONS": 50, "flags": ["permessage_deflate"]}))
    s = served(tmp_path, "-c", str(config), "-p", "9300")
    assert s.PORT == 9300
    assert s.FWS_FILTERS == ["stdout_messages"]
    assert s.FWS_REDIS == "redis://cache:6379/0"
    assert (s.LOG_LEVEL, s.MAX_CONNECTIONS, s.PERMESSAGE_DEFLATE) == ("DEBUG", 50, True)


@pytest.mark.parametrize("text, words", [
    ('{"colour": "blue"}', "unknown option 'colour'"),
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"port": "high"}', "PORT"),
])
def test_a_bad_config_file_is_named(tmp_path, text, words):
    """A config file that is not JSON, not an object, or names an unknown option fails
    with a message naming the problem."""
    config = tmp_path / "config.json"
    config.write_text(text)
    with pytest.raises(SettingsError) as info:
        served(tmp_path, "-c", str(config))
    assert words in str(info.value)


def test_storage_object_module_from_the_environment(tmp_path, monkeypatch):
    """filtered_websocket's STORAGE_OBJECT_MODULE environment variable names the storage."""
    monkeypatch.setenv("STORAGE_OBJECT_MODULE", "filtered_websocket.storage_objects.redis")
    assert served(tmp_path).FWS_STORAGE == "redis"
    monkeypatch.setenv("STORAGE_OBJECT_MODULE", "myapp.storage")
    assert served(tmp_path).FWS_STORAGE == "myapp.storage/StorageObject"


def test_start_without_filtered_websocket_flags_is_unchanged(tmp_path):
    """`lexiconsd start` with none of the flags runs the settings as they are."""
    args = build_parser().parse_args(["start"])
    base = settings_mod.load(None, env={}, base_dir=str(tmp_path))
    assert cli.apply(args, base) is base


def test_shipped_filters_load_by_their_names_and_kinds():
    """Shipped filters load by short or filtered_websocket name, each class on its kind."""
    chains = fws.load_filters(["filtered_websocket.filters.broadcast_messages_by_token",
                               "broadcast_pubsub"])
    assert [c.__name__ for c in chains[fws.WebSocketMessageFilter]] == [
        "TokenMessageFilter", "PublishMessageFilter"]
    assert [c.__name__ for c in chains[fws.WebSocketDisconnectFilter]] == [
        "TokenDisconnectFilter"]
    assert [c.__name__ for c in chains[fws.WebSocketConsumerFilter]] == [
        "BroadcastMessageFilter"]


@pytest.mark.parametrize("name, words", [
    ("no_such_module_here", "cannot import 'no_such_module_here'"),
    ("json", "module 'json' defines no filter"),
])
def test_a_filter_module_that_does_not_load_is_named(name, words):
    """A -f module that cannot be imported, or has no filter in it, is named."""
    with pytest.raises(ServiceError) as info:
        fws.load_filters([name])
    assert words in str(info.value)


def test_filtered_websocket_module_names_import_the_lexicons_classes():
    """With the aliases installed, filtered_websocket's module names give lexicons' ones."""
    fws.load_filters(["broadcast_messages"])  # installs the aliases
    from filtered_websocket.filters.base import WebSocketConsumerFilter, WebSocketMessageFilter
    from filtered_websocket.storage_objects.base import BaseStorageObject

    assert WebSocketMessageFilter is fws.WebSocketMessageFilter
    assert WebSocketConsumerFilter is fws.WebSocketConsumerFilter
    assert BaseStorageObject is storage.BaseStorageObject


def test_the_memory_storage_object_keeps_sets_of_strings():
    """The default storage object: add, get (also by item), remove; empty keys vanish."""
    store = storage.build(settings_mod.load(None, env={}))
    store.add("red", 1)
    store.add("red", "2")
    assert store["red"] == {"1", "2"}
    store.remove("red", "1")
    store.remove("red", "2")
    assert store.get("red") == set()
    assert store.storage == {}


def test_users_iterate_over_a_snapshot():
    """Sockets may come and go while a filter loops over users."""
    users = fws.Users(a=1, b=2)
    for key in users:
        users.pop(key)
    assert users == {}
    users.update(c=3)
    for key, _ in users.items():
        users[key + "x"] = 4
    assert set(users) == {"c", "cx"}
