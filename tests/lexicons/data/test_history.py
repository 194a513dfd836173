"""Channel history without a network: positions, the recovery rule, the memory store."""
import json

import pytest

from lexicons.data import history as hist
from lexicons.data.presence import MemoryPresence
from lexicons.errors import CallError, StorageError
from lexicons.wire.events import Position


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_a_stamped_broadcast_is_json_with_its_position_after_the_payload():
    """head() + stamp() make the broadcast with "@": {channel, epoch, offset}."""
    message = hist.stamp(hist.head("Post", {"n": 1, "offset": 9}, 'room:"a"'), 42, "abcd0123")
    assert json.loads(message) == [{"Post": {"n": 1, "offset": 9},
                                    "@": {"channel": 'room:"a"', "epoch": "abcd0123",
                                          "offset": 42}}]
    assert hist.position_of(message) == Position(42, "abcd0123")
    assert hist.position_of(b'[{"Post":{"x":{"offset":5}}}]') is None


@pytest.mark.parametrize("value, complaint", [
    ([1], "recover must be an object"),
    ({"offset": -1, "epoch": "e"}, "recover.offset must be a whole number >= 0"),
    ({"offset": "3", "epoch": "e"}, "recover.offset must be a whole number >= 0"),
    ({"offset": True, "epoch": "e"}, "recover.offset must be a whole number >= 0"),
    ({"offset": 3}, "recover.epoch must be the epoch string"),
    ({"offset": 3, "epoch": ""}, "recover.epoch must be the epoch string"),
    ({"offset": 3, "epoch": "e", "since": 1}, "unknown key 'since'"),
])
def test_a_malformed_recover_argument_is_refused_saying_why(value, complaint):
    """parse_since names what is wrong with the client's position."""
    with pytest.raises(CallError, match=complaint):
        hist.parse_since(value)


def test_recovery_gives_every_missed_publication_or_says_it_cannot():
    """Same epoch and no gap: recovered; gap or other epoch: not; future offset: an error."""
    entries = [(4, b"d"), (5, b"e"), (6, b"f")]
    done = hist.recover(Position(3, "E"), 6, "E", entries)
    assert done.recovered and done.publications == (b"d", b"e", b"f")
    assert done.position == Position(6, "E")
    assert hist.recover(Position(6, "E"), 6, "E", entries).publications == ()
    short = hist.recover(Position(2, "E"), 6, "E", entries)
    assert not short.recovered and short.publications == ()
    assert "no longer reaches back to offset 2" in short.reason
    lost = hist.recover(Position(5, "OLD"), 6, "E", entries)
    assert not lost.recovered and "another epoch" in lost.reason
    with pytest.raises(CallError, match="offset 7 is in the future: the channel is at offset 6"):
        hist.recover(Position(7, "E"), 6, "E", entries)


def test_memory_history_trims_by_size_and_by_age():
    """At most size publications are kept, none older than ttl."""
    clock = Clock()
    store = hist.MemoryHistory(10, clock)
    for n in range(10):
        store.publish("c", hist.head("P", n, "c"), 4, 60)
    position, kept = store.read("c", 100, 4, 60)
    assert position.offset == 10 and [json.loads(m)[0]["P"] for m in kept] == [6, 7, 8, 9]
    assert store.recover("c", Position(6, position.epoch), 4, 60).recovered
    assert not store.recover("c", Position(5, position.epoch), 4, 60).recovered
    clock.now += 61
    position, kept = store.read("c", 100, 4, 60)
    assert position.offset == 10 and kept == []
    assert store.recover("c", Position(10, position.epoch), 4, 60).recovered
    assert not store.recover("c", Position(9, position.epoch), 4, 60).recovered


def test_memory_history_holds_at_most_its_channel_limit():
    """With more channels than the limit, the least recently used go (memory stays bounded)."""
    store = hist.MemoryHistory(10_000)
    head = hist.head("P", "x" * 50, "c")
    for n in range(25_000):
        store.publish(f"room:{n}", head, 10, 60)
    assert len(store) == 10_000
    kept = store.position("room:24999")
    assert kept.offset == 1
    assert store.position("room:0").offset == 0  # evicted: it starts over
    assert store.position("room:0").epoch != kept.epoch


def test_a_saved_history_loads_with_its_epoch_and_the_file_is_then_removed(tmp_path):
    """save/load keep offsets and epoch; the file is gone after loading (a crash: new epoch)."""
    store = hist.MemoryHistory(100)
    for n in range(3):
        store.publish("kept:a", hist.head("P", n, "kept:a"), 10, 600)
        store.publish("other", hist.head("P", n, "other"), 10, 600)
    path = tmp_path / "data" / "history.json"
    assert store.save(str(path), lambda channel: channel.startswith("kept:")) == 1
    again = hist.MemoryHistory(100)
    assert again.load(str(path)) == 1
    assert not path.exists()
    assert again.position("kept:a") == store.position("kept:a")
    missed = again.recover("kept:a", Position(1, store.position("kept:a").epoch), 10, 600)
    assert missed.recovered and [json.loads(m)[0]["P"] for m in missed.publications] == [1, 2]
    assert again.load(str(path)) == 0
    path.write_text("not json")
    with pytest.raises(StorageError, match="cannot read the channel history"):
        again.load(str(path))


def test_memory_presence_records_joins_and_leaves_once():
    """add/remove report whether they changed anything; count follows."""
    presence = MemoryPresence()
    assert presence.add("c", "n-1", {"client": "n-1", "user": "a"})
    assert not presence.add("c", "n-1", {"client": "n-1", "user": "a"})
    presence.add("c", "n-2", {"client": "n-2", "user": "b"})
    assert presence.count("c") == 2
    assert presence.remove("c", "n-1") == {"client": "n-1", "user": "a"}
    assert presence.remove("c", "n-1") is None
    assert presence.members("c") == [{"client": "n-2", "user": "b"}]
