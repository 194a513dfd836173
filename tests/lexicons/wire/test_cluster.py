"""The static cluster's server list and event lines."""
import pytest

from lexicons.daemon import settings as settings_mod
from lexicons.errors import SettingsError
from lexicons.wire import cluster


def test_server_entries_as_zephserver_wrote_them_or_as_address_port():
    """Entries are zephserver's dicts or 'address:port' strings."""
    nodes = cluster.parse_servers([{"hostname": "a", "address": "10.0.0.1", "port": 8001},
                                   "10.0.0.2:8002"])
    assert nodes == [cluster.Node("a", "10.0.0.1", 8001), cluster.Node("", "10.0.0.2", 8002)]


@pytest.mark.parametrize("entry, words", [
    ({"address": "10.0.0.1"}, "'port'"),
    ({"port": 80}, "'address'"),
    ("10.0.0.1", "address:port"),
    (42, "expected"),
])
def test_a_bad_server_entry_is_named(entry, words):
    """A bad CLUSTER_SERVER_LIST entry stops the start with the setting and entry named."""
    with pytest.raises(SettingsError) as info:
        settings_mod.load(None, env={}, overrides={"CLUSTER_SERVER_LIST": [entry]})
    assert "CLUSTER_SERVER_LIST" in str(info.value) and words in str(info.value)


def test_this_node_is_found_by_hostname_or_cluster_self():
    """This node's entry: CLUSTER_SELF (hostname or address:port), else this host's name."""
    nodes = cluster.parse_servers([{"hostname": "a", "address": "h1", "port": 1},
                                   {"hostname": "b", "address": "h2", "port": 2}])
    assert cluster.find_self(nodes, "", hostname="b") == nodes[1]
    assert cluster.find_self(nodes, "h1:1") == nodes[0]
    with pytest.raises(SettingsError, match="CLUSTER_SELF"):
        cluster.find_self(nodes, "h3:3")
    with pytest.raises(SettingsError, match="no entry has this machine's hostname 'c'"):
        cluster.find_self(nodes, "", hostname="c")


def test_event_lines_round_trip_and_garbage_is_not_an_event():
    """An event is one JSON line; anything else decodes to None."""
    line = cluster.encode("prices", "h1:1", {"eur": 1.5})
    assert line.endswith(b"\n")
    assert cluster.decode(line.strip()) == ("prices", "h1:1", {"eur": 1.5})
    assert cluster.decode(b"not json") is None
    assert cluster.decode(b'{"no": "event"}') is None
    with pytest.raises(ValueError):
        cluster.encode("x", "", float("nan"))
