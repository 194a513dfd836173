"""Login sessions and their single-use connect tickets (pure, with a test clock)."""
from __future__ import annotations

import json

from lexicons.data.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, **kwargs) -> SessionStore:
    return SessionStore(ticket_ttl=30.0, session_ttl=3600.0, clock=clock, **kwargs)


def test_a_ticket_redeems_a_copy_of_the_state_once():
    """A ticket gives the session's state once; the state cannot be changed through it."""
    clock = Clock()
    sessions = store(clock)
    token, ticket = sessions.create({"auth": {"user": "ann"}})
    state = sessions.redeem(ticket)
    assert state == {"auth": {"user": "ann"}}
    state["auth"]["user"] = "mallory"
    assert sessions.redeem(ticket) is None
    assert sessions.redeem(sessions.ticket(token)) == {"auth": {"user": "ann"}}


def test_tickets_expire_and_sessions_end_when_idle():
    """A ticket lasts ticket_ttl; a session unused for session_ttl ends."""
    clock = Clock()
    sessions = store(clock)
    token, ticket = sessions.create({})
    clock.now += 31
    assert not sessions.valid(ticket) and sessions.redeem(ticket) is None
    clock.now += 3000
    assert sessions.ticket(token) is not None    # used: idle time starts again
    clock.now += 3599
    assert sessions.ticket(token) is not None
    clock.now += 3601
    assert sessions.ticket(token) is None and len(sessions) == 0


def test_end_drops_the_session_and_its_tickets():
    """Ending a session leaves none of its tickets good."""
    sessions = store(Clock())
    token, ticket = sessions.create({})
    second = sessions.ticket(token)
    assert sessions.end(token) is True
    assert sessions.redeem(ticket) is None and sessions.redeem(second) is None
    assert sessions.end(token) is False


def test_the_least_recently_used_session_goes_first_when_full():
    """Past max_sessions, the session unused longest ends."""
    clock = Clock()
    sessions = store(clock, max_sessions=2)
    first, _ = sessions.create({"n": 1})
    second, _ = sessions.create({"n": 2})
    clock.now += 1
    sessions.ticket(first)              # first is now the more recently used
    sessions.create({"n": 3})
    assert sessions.ticket(second) is None and sessions.ticket(first) is not None


def test_export_keeps_no_token_and_restores_sessions():
    """Exported sessions carry hashed tokens only; restored, the old token works again."""
    clock = Clock()
    sessions = store(clock)
    token, _ = sessions.create({"auth": {"user": "ann"}})
    sessions.create({"thing": object()})          # not JSON: not carried over
    clock.now += 100
    exported = json.loads(json.dumps(sessions.export()))
    assert len(exported) == 1 and token not in json.dumps(exported)
    restarted = store(Clock())
    assert restarted.restore(exported) == 1
    assert restarted.redeem(restarted.ticket(token)) == {"auth": {"user": "ann"}}


def test_restore_leaves_out_sessions_idle_too_long():
    """A session that was idle past session_ttl at the restart does not come back."""
    sessions = store(Clock())
    assert sessions.restore([{"key": "k", "idle": 3601.0, "state": {}}]) == 0
