"""Signals' Response and channel names (no network)."""
from lexicons.channel import Channel
from lexicons.errors import CallError
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


class Public(Channel):
    pass


def test_a_channel_class_without_parameters_names_its_channel():
    """[Public] (the class itself) is the channel Public; a class needing parameters says so."""
    assert channel_names([Public, "a"]) == ("Public", "a")
    assert channel_names(Public) == ("Public",)
    try:
        channel_names([Room])
    except CallError as exc:
        assert "needs parameter 'name'" in str(exc)
    else:
        raise AssertionError("a parameterised channel class was accepted")


def test_response_broadcasts_on_its_channels_and_is_nothing_without():
    """self.response(payload, channels) is a broadcast; with no channels, nothing at all."""
    class Shout(Signal):
        def execute(self):
            pass

    shout = Shout()
    response = shout.response({"text": "hi"}, [Public])
    assert isinstance(response, Response)
    assert response.payload == {"text": "hi"} and response.channels == ("Public",)
    assert shout.response({"text": "hi"}, []) is NOTHING
    assert shout.response({"text": "hi"}) is NOTHING
