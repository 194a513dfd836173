"""The chat page in Chromium shows the messages sent while its connection was down."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.examples.chat_daemon import ChatClient
from tests.examples.test_chat_browser import browser, daemon, enter, new_page, say, shots

__all__ = ["browser", "daemon", "shots"]  # the fixtures this module uses


class Network:
    """The page's websocket traffic, routed through the test so it can be cut."""

    def __init__(self, page):
        self.offline = False
        self.routes = []
        page.route_web_socket(re.compile(r"^wss?://"), self.route)

    def route(self, ws):
        if self.offline:
            ws.close()  # the network is down: the page's connect fails
            return
        self.routes.append((ws, ws.connect_to_server()))

    def cut(self):
        """Drop every connection of the page and refuse new ones."""
        self.offline = True
        for page_side, server_side in self.routes:
            page_side.close()
            server_side.close()
        self.routes.clear()


def bob_says(daemon, texts, header="Register"):
    """Bob joins the lobby and sends *texts* (from Python, while the page is away)."""
    bob = ChatClient(daemon, header, name="bob", password="builder1")
    try:
        bob.call("Join", room="lobby")
        for text in texts:
            bob.call("Send", room="lobby", text=text)
    finally:
        bob.close()


def test_page_shows_messages_sent_while_it_was_offline(daemon, browser, shots):
    """Connection cut, three messages sent, connection back: they show once, in order."""
    alice = new_page(browser, daemon.url)
    network = Network(alice)
    enter(alice, "alice", "wonderland")
    expect(alice.locator("#room-title")).to_have_text("#lobby")
    say(alice, "before the cut")
    expect(alice.locator("#messages .message")).to_have_count(1)

    network.cut()
    expect(alice.locator("#status")).not_to_have_text("online")
    bob_says(daemon, [f"while you were away {n}" for n in range(3)])
    network.offline = False
    expect(alice.locator("#status")).to_have_text("online")
    expect(alice.locator("#messages .message .text")).to_have_text(
        ["before the cut"] + [f"while you were away {n}" for n in range(3)])
    expect(alice.locator("#messages .system")).to_have_text(["bob joined"])
    # missed: bob's arrival and his three messages
    expect(alice.locator("#notice")).to_have_text(
        "caught up: 4 updates sent while you were offline")
    alice.screenshot(path=str(shots / "recovered.png"))


def test_page_reloads_a_room_whose_history_was_lost(daemon, browser):
    """kill -9 (no history saved): recovery says no, and the page loads the room again."""
    alice = new_page(browser, daemon.url)
    network = Network(alice)
    enter(alice, "alice", "wonderland")
    expect(alice.locator("#room-title")).to_have_text("#lobby")
    say(alice, "before the crash")
    expect(alice.locator("#messages .message")).to_have_count(1)

    network.cut()
    daemon.kill()
    daemon.wait_gone()
    daemon.start(port=daemon.port)
    bob_says(daemon, ["after the crash"])
    network.offline = False
    expect(alice.locator("#status")).to_have_text("online")
    expect(alice.locator("#messages .message .text")).to_have_text(
        ["before the crash", "after the crash"])
