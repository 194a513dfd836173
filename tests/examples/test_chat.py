"""The chat's headers, channels, signals and tasks: through the Python client, and in-process."""
from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from examples.chat.models import ChatMessage, Room, User
from examples.chat.tasks import CreateLobby, PruneMessages
from lexicons.client import Client
from lexicons.data.database import Database
from lexicons.errors import CallError, Refused
from tests.examples.chat_daemon import TIMEOUT, ChatClient, ChatDaemon

_names = itertools.count(1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    chat = ChatDaemon(tmp_path_factory.mktemp("chat")).start()
    yield chat
    try:
        chat.stop()
    finally:
        chat.kill()


@pytest.fixture
def people(daemon):
    """Return a function registering a fresh user and connecting as them."""
    opened: list[ChatClient] = []

    def register(prefix: str = "user") -> tuple[str, ChatClient]:
        name = f"{prefix}{next(_names)}"
        client = ChatClient(daemon, "Register", name=name, password="password1")
        opened.append(client)
        return name, client

    yield register
    for client in opened:
        client.close()


# --- headers --------------------------------------------------------------------------


def test_register_then_login(daemon, people):
    """A registered user logs in again with the same password."""
    name, _ = people("reg")
    with ChatClient(daemon, "Login", name=name, password="password1") as again:
        again.call("Subscribe", channel="public")
        assert name in again.call("Online")


def test_wrong_password_is_refused_with_the_reason(daemon, people):
    """A wrong password gets 401 saying so, without admitting the client."""
    name, _ = people("pw")
    with pytest.raises(Refused) as refused:
        ChatClient(daemon, "Login", name=name, password="not-it")
    assert refused.value.status == 401
    assert "Login: wrong name or password" in refused.value.reason


def test_unknown_user_is_refused_like_a_wrong_password(daemon):
    """An unknown name gets the same answer as a wrong password (names are not revealed)."""
    with pytest.raises(Refused) as refused:
        ChatClient(daemon, "Login", name="nobody-here", password="whatever")
    assert "Login: wrong name or password" in refused.value.reason


def test_register_refuses_a_taken_name_a_bad_name_and_a_short_password(daemon, people):
    """Register says why it refuses: the name is taken, malformed, or the password too short."""
    name, _ = people("taken")
    cases = [({"name": name, "password": "password1"}, f"the name {name!r} is taken"),
             ({"name": "no spaces", "password": "password1"}, "a name is 1 to 24"),
             ({"name": "shorty", "password": "abc"}, "at least 4 characters")]
    for credentials, reason in cases:
        with pytest.raises(Refused) as refused:
            ChatClient(daemon, "Register", **credentials)
        assert refused.value.status == 401
        assert reason in refused.value.reason


def test_a_client_without_credentials_is_refused(daemon):
    """Neither Login nor Register given: refused, naming both."""
    with pytest.raises(Refused) as refused:
        ChatClient(daemon, "Hello", name="x")
    assert "Login: not given" in refused.value.reason
    assert "Register: not given" in refused.value.reason


def test_header_arguments_are_checked(daemon):
    """A header missing an argument is refused naming the argument."""
    with pytest.raises(Refused) as refused:
        ChatClient(daemon, "Login", name="alice")
    assert "password" in refused.value.reason


# --- channels -------------------------------------------------------------------------


def test_channel_permissions_follow_the_granted_patterns(people):
    """A user may join public, any room:* and their own inbox, but not another's inbox."""
    name, client = people("perm")
    other, _ = people("other")
    assert client.call("Subscribe", channel="public") == "public"
    # rooms and inboxes keep history: the answer is the channel's position
    assert client.call("Subscribe", channel="room:anything")["channel"] == "room:anything"
    assert client.call("Subscribe", channel=f"user:{name}")["channel"] == f"user:{name}"
    with pytest.raises(CallError, match="not permitted"):
        client.call("Subscribe", channel=f"user:{other}")
    with pytest.raises(CallError, match="unknown channel"):
        client.call("Subscribe", channel="backstage")


# --- signals --------------------------------------------------------------------------


def test_the_lobby_exists_from_the_start(people):
    """The startup task made the lobby."""
    _, client = people()
    assert "lobby" in [room["name"] for room in client.call("Rooms")]


def test_messages_reach_everyone_in_the_room(people):
    """A message is broadcast to the room's members, the sender included, and nobody else."""
    alice, a = people("alice")
    bob, b = people("bob")
    _, outsider = people("out")
    room = f"r{next(_names)}"
    a.call("CreateRoom", name=room, topic="tests")
    a.call("Join", room=room)
    answer = b.call("Join", room=room)
    assert answer["members"] == sorted([alice, bob])
    assert a.expect("Join") == {"room": room, "user": alice}   # hers, then his
    assert a.expect("Join") == {"room": room, "user": bob}

    a.call("Send", room=room, text="  hello there  ")
    for client in (a, b):
        message = client.expect("Message")
        assert (message["room"], message["author"], message["text"]) == (room, alice,
                                                                         "hello there")
    assert outsider.quiet("Message")


def test_join_answers_the_recent_messages(people):
    """Joining a room answers its recent messages, oldest first."""
    _, a = people()
    _, b = people()
    room = f"r{next(_names)}"
    a.call("CreateRoom", name=room)
    a.call("Join", room=room)
    for text in ("one", "two", "three"):
        a.call("Send", room=room, text=text)
    answer = b.call("Join", room=room)
    assert [m["text"] for m in answer["messages"]] == ["one", "two", "three"]


def test_history_pages_backwards(people):
    """History gives the messages before a time, at most `limit`, oldest first."""
    _, a = people()
    room = f"r{next(_names)}"
    a.call("CreateRoom", name=room)
    a.call("Join", room=room)
    for n in range(5):
        a.call("Send", room=room, text=f"m{n}")
    last_two = a.call("History", room=room, limit=2)
    assert [m["text"] for m in last_two] == ["m3", "m4"]
    earlier = a.call("History", room=room, before=last_two[0]["time"], limit=10)
    assert [m["text"] for m in earlier] == ["m0", "m1", "m2"]
    with pytest.raises(CallError, match="limit is from 1 to 500"):
        a.call("History", room=room, limit=0)


def test_send_needs_a_joined_room_and_some_text(people):
    """Sending outside a joined room, or nothing, is an error naming the problem."""
    _, a = people()
    with pytest.raises(CallError, match="join room 'lobby' before sending to it"):
        a.call("Send", room="lobby", text="hi")
    a.call("Join", room="lobby")
    with pytest.raises(CallError, match="the text is empty"):
        a.call("Send", room="lobby", text="   ")
    with pytest.raises(CallError, match="at most 2000 characters"):
        a.call("Send", room="lobby", text="x" * 2001)


def test_signal_arguments_are_checked(people):
    """A missing or mistyped argument is an error naming it; the connection stays usable."""
    _, a = people()
    with pytest.raises(CallError, match="room"):
        a.call("Send", text="hi")
    with pytest.raises(CallError, match="limit"):
        a.call("History", room="lobby", limit="ten")
    assert a.call("Rooms")


def test_create_room_is_announced_on_public(people):
    """A new room is broadcast on public; a second room of the same name is refused."""
    _, a = people()
    _, b = people()
    b.call("Subscribe", channel="public")
    room = f"r{next(_names)}"
    created = a.call("CreateRoom", name=room.upper(), topic="Loud")
    assert created == {"name": room, "topic": "Loud", "members": []}
    assert b.expect("CreateRoom") == created
    with pytest.raises(CallError, match="exists already"):
        a.call("CreateRoom", name=room)
    with pytest.raises(CallError, match="a room name is"):
        a.call("CreateRoom", name="no spaces please")


def test_leave_tells_the_room(people):
    """Leaving tells those still in the room and stops the leaver's messages."""
    _, a = people()
    bob, b = people()
    room = f"r{next(_names)}"
    a.call("CreateRoom", name=room)
    a.call("Join", room=room)
    b.call("Join", room=room)
    b.call("Leave", room=room)
    assert a.expect("Leave") == {"room": room, "user": bob}
    a.call("Send", room=room, text="still here?")
    assert b.quiet("Message")
    with pytest.raises(CallError, match="you are not in room"):
        b.call("Leave", room=room)


def test_direct_messages_reach_only_the_two_users(people):
    """A dm: message goes to both inboxes; a third user can neither read nor write it."""
    alice, a = people("dmA")
    bob, b = people("dmB")
    _, c = people("dmC")
    for name, client in ((alice, a), (bob, b)):
        client.call("Subscribe", channel=f"user:{name}")
    room = f"dm:{min(alice, bob)}+{max(alice, bob)}"
    a.call("Send", room=room, text="just us")
    assert b.expect("Message")["text"] == "just us"
    assert a.expect("Message")["room"] == room
    assert [m["text"] for m in b.call("History", room=room)] == ["just us"]
    with pytest.raises(CallError, match="not permitted"):
        c.call("History", room=room)
    with pytest.raises(CallError, match="not permitted"):
        c.call("Send", room=room, text="me too")
    with pytest.raises(CallError, match="no user named 'ghost'"):
        a.call("Send", room=f"dm:{alice}+ghost", text="boo")


def test_presence_is_broadcast_when_it_changes(daemon, people):
    """Online lists the users in public; the Presence task broadcasts changes there."""
    _, watcher = people()
    watcher.call("Subscribe", channel="public")
    name, newcomer = people("new")
    newcomer.call("Subscribe", channel="public")
    assert name in watcher.call("Online")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if name in watcher.expect("Online")["users"]:
            break
    else:
        raise AssertionError("no Online broadcast with the newcomer")
    newcomer.close()
    while time.monotonic() < deadline + 10:
        if name not in watcher.expect("Online")["users"]:
            break
    else:
        raise AssertionError("no Online broadcast without the newcomer")


# --- models and tasks, in-process -----------------------------------------------------


def test_password_is_stored_hashed():
    """The password setter stores a salted hash, never the password; check_password verifies."""
    db = Database([User])
    user = db.create(User, name="zoe", password="s3cret!")
    stored = db.get(User, user.pk)
    assert "s3cret!" not in stored.password_hash
    assert stored.password_hash.startswith("scrypt$")
    assert stored.check_password("s3cret!")
    assert not stored.check_password("S3cret!")
    again = db.create(User, name="zed", password="s3cret!")
    assert again.password_hash != stored.password_hash   # a salt of its own


def test_prune_drops_only_old_messages():
    """The interval task deletes messages older than it keeps, and no others."""
    db = Database([User, Room, ChatMessage])
    user = db.create(User, name="old", password="xxxx")
    now = time.time()
    db.create(ChatMessage, author=user, room="lobby", text="ancient",
              time=now - PruneMessages.keep - 10)
    db.create(ChatMessage, author=user, room="lobby", text="fresh", time=now - 10)
    PruneMessages().run(db=db, sv=None)
    assert [m.text for m in db.query(ChatMessage)] == ["fresh"]


def test_create_lobby_runs_twice_without_a_second_lobby():
    """The startup task creates the lobby once, however often the daemon starts."""
    db = Database([User, Room, ChatMessage])
    CreateLobby().run(db=db, sv=None)
    CreateLobby().run(db=db, sv=None)
    assert db.count(Room, name="lobby") == 1


def test_gate_check_endpoint_tells_why(daemon, people):
    """GET /gate with the connect's query answers 200, or the refusal's status and reason."""
    name, _ = people("gate")

    def check(header: str, **credentials: str) -> tuple[int, dict]:
        query = urllib.parse.urlencode({header: json.dumps(credentials)})
        try:
            with urllib.request.urlopen(f"{daemon.url}gate?{query}", timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    assert check("Login", name=name, password="password1") == (200, {"admitted": True})
    status, body = check("Login", name=name, password="wrong")
    assert status == 401
    assert body["reason"].startswith("Login: wrong name or password")


def test_the_page_is_served_by_lexicons(daemon):
    """GET / is the chat's index.html, scripts are JavaScript, unchanged files answer 304."""
    def get(path: str, **headers: str) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(daemon.url + path.lstrip("/"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    status, headers, body = get("/")
    assert status == 200 and b"<title>lexicons chat</title>" in body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    status, headers, body = get("/lexicons.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert get("/lexicons.js", **{"If-None-Match": headers["ETag"]})[0] == 304
    assert get("/../__init__.py")[0] == 404
    assert get("/nothing.html")[0] == 404


def test_readme_python_client_example_works_as_written(daemon):
    """The README's Python-client example runs on the chat: it registers, then logs in."""
    import re
    import subprocess
    import sys

    from tests.support.daemon import ROOT

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(from lexicons\.client import Client\n.*?)```", readme,
                      re.DOTALL)
    assert block, "the README has no Python-client example"
    code = block.group(1).replace("ws://127.0.0.1:5000/", daemon.ws_url)
    for _ in range(2):  # alice does not exist the first time, and does the second
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("[{"), done.stdout


@pytest.mark.parametrize("ending", ["stop", "kill -9"])
def test_browser_sessions_outlive_a_restart(tmp_path, ending):
    """A session from POST /session still gives tickets after a stop or a crash and a
    start; no token on disk."""
    import http.client

    def post(port: int, body: dict) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            conn.request("POST", "/session", body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    chat = ChatDaemon(tmp_path).start()
    try:
        status, answer = post(chat.port, {"headers": {"Register": {"name": "ida",
                                                                   "password": "pass1234"}}})
        assert status == 200, answer
        if ending == "stop":
            chat.stop()
        else:
            chat.kill()
            chat.wait_gone()
        kept = tmp_path / "data" / "sessions.json"
        assert kept.stat().st_mode & 0o777 == 0o600
        assert answer["session"] not in kept.read_text()
        chat.start(port=chat.port)
        status, renewed = post(chat.port, {"session": answer["session"]})
        assert status == 200, renewed
        with Client(f"{chat.ws_url}?ticket={renewed['ticket']}", timeout=TIMEOUT) as client:
            client.call("Subscribe", channel="user:ida")  # the login's grants came back too
    finally:
        try:
            chat.stop()
        finally:
            chat.kill()
