"""The chat page in Chromium shows the messages sent while its connection was down."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.examples.chat_daemon import ChatClient
from tests.examples.test_chat_browser import browser, daemon, enter, new_page, say, shots

__all__ = ["browser", "daemon", "shots"]  # the fixtures this module uses


def test_page_shows_messages_sent_while_it_was_offline(daemon, browser, shots):
    """Connection cut, three messages sent, connection back: they show once, in order."""
    offline = False
    routes = []

    def route(ws):
        if offline:
            ws.close()  # the network is down: the page's connect fails
            return
        routes.append((ws, ws.connect_to_server()))

    alice = new_page(browser, daemon.url)
    alice.route_web_socket(re.compile(r"^wss?://"), route)
    enter(alice, "alice", "wonderland")
    expect(alice.locator("#room-title")).to_have_text("#lobby")
    say(alice, "before the cut")
    expect(alice.locator("#messages .message")).to_have_count(1)

    offline = True
    for page_side, server_side in routes:  # cut every connection under the page
        page_side.close()
        server_side.close()
    expect(alice.locator("#status")).not_to_have_text("online")

    bob = ChatClient(daemon, "Register", name="bob", password="builder1")
    try:
        bob.call("Join", room="lobby")
        for n in range(3):
            bob.call("Send", room="lobby", text=f"while you were away {n}")
    finally:
        bob.close()

    offline = False
    expect(alice.locator("#status")).to_have_text("online")
    expect(alice.locator("#messages .message .text")).to_have_text(
        ["before the cut"] + [f"while you were away {n}" for n in range(3)])
    expect(alice.locator("#messages .system")).to_have_text(["bob joined"])
    # missed: bob's arrival and his three messages
    expect(alice.locator("#notice")).to_have_text(
        "caught up: 4 updates sent while you were offline")
    alice.screenshot(path=str(shots / "recovered.png"))
