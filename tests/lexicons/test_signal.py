"""Signals' Response and channel names (no network)."""
from lexicons.channel import Channel
from lexicons.signal import NOTHING, Response, Signal, channel_names


class Room(Channel):
    name = "room:{name}"


def test_response_normalises_its_channels():
    """Channels may be one name, one Channel or a mix; duplicates are dropped."""
    assert Response(1, "a").channels == ("a",)
    assert Response(1, Room(name="x")).channels == ("room:x",)
    assert Response(1, ["a", Room(name="x"), "a"]).channels == ("a", "room:x")
    assert Response(1).channels == () and Response(1).reply is NOTHING


def test_channel_names_accepts_none_and_iterables():
    """None means no channel; any iterable of names or channels works."""
    assert channel_names(None) == ()
    assert channel_names(iter(["a", "b"])) == ("a", "b")


def test_signal_name_defaults_to_the_class_name():
    """A signal is called by its class name unless it sets name."""
    class Plain(Signal):
        def execute(self):
            pass

    class Renamed(Signal):
        name = "other"

        def execute(self):
            pass
    assert Plain.signal_name() == "Plain" and Renamed.signal_name() == "other"


def test_nothing_is_falsy_and_distinct_from_none():
    """NOTHING marks the absence of a reply; None is a payload."""
    assert not NOTHING and NOTHING is not None and repr(NOTHING) == "NOTHING"
