"""Channel names, parameters, permission patterns (no network)."""
import pytest

from lexicons.channel import Channel, ChannelSet, matches
from lexicons.errors import CallError, NotPermitted


class Public(Channel):
    name = "public"


class Room(Channel):
    name = "room:{name}"


class Team(Channel):
    name = "team:{org}:{team}"

    def permit(self, ws, org, team):
        return org == ws.auth.get("org")


class Conn:
    def __init__(self, **auth):
        self.auth = auth


CHANNELS = ChannelSet([Public, Room, Team])


def test_instances_render_their_names():
    """Room(name='x') is the channel 'room:x'; a plain channel is its name."""
    assert str(Room(name="x")) == "room:x" and str(Public()) == "public"


def test_missing_parameter_is_a_clear_error():
    """A parameterised channel without its parameter says which one is missing."""
    with pytest.raises(CallError, match="needs parameter 'name'"):
        str(Room())


def test_names_resolve_to_their_class_with_parameters():
    """A name resolves to its class, parameters taken from the name."""
    channel = CHANNELS.resolve("team:acme:ops")
    assert isinstance(channel, Team) and channel.params == {"org": "acme", "team": "ops"}
    assert isinstance(CHANNELS.resolve("public"), Public)


def test_unknown_names_are_refused():
    """A name matching no channel is an unknown channel."""
    for name in ("nope", "room:", "room:a:b"):
        with pytest.raises(CallError, match="unknown channel"):
            CHANNELS.resolve(name)


def test_permit_hook_decides():
    """A channel's permit hook gets the parameters and may refuse."""
    assert isinstance(CHANNELS.check(Conn(org="acme"), "team:acme:ops"), Team)
    with pytest.raises(NotPermitted, match="not permitted to subscribe to 'team:evil:ops'"):
        CHANNELS.check(Conn(org="acme"), "team:evil:ops")


def test_granted_patterns_limit_the_default_permit():
    """ws.auth['channels'] patterns with '*' limit what the default permit allows."""
    conn = Conn(channels=["room:team-*", "public"])
    CHANNELS.check(conn, "room:team-a")
    CHANNELS.check(conn, "public")
    with pytest.raises(NotPermitted):
        CHANNELS.check(conn, "room:other")
    CHANNELS.check(Conn(), "room:anything")  # no grants: anyone may join


def test_star_matches_any_run_of_characters():
    """'*' matches anything (even ':'), other characters match themselves."""
    assert matches("*", "x:y") and matches("room:*", "room:") and matches("a*c", "abbc")
    assert not matches("room:*", "rooms:x") and not matches("a.c", "abc")


def test_the_default_permit_takes_an_auth_of_any_value():
    """ws.auth may be a pk string (or anything): the default permit lets it in."""
    class Pk:
        auth = "8e0ca4cfb144f1fc"

    class Nothing:
        auth = None

    for ws in (Pk(), Nothing()):
        assert CHANNELS.check(ws, "public").params == {}
        assert CHANNELS.check(ws, "room:a").params == {"name": "a"}
