"""The chat's web page in a real browser (Debian's Chromium), served by the real daemon.

Screenshots of the pages are written to $CHAT_SCREENSHOTS (default: the test's
temporary directory) so a person can look at them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.examples.chat_daemon import ChatDaemon

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 20_000  # ms: the longest any step may take (the machine may be busy)
expect.set_options(timeout=WAIT)


@pytest.fixture
def daemon(tmp_path):
    chat = ChatDaemon(tmp_path).start()
    yield chat
    try:
        chat.stop()
    finally:
        chat.kill()


@pytest.fixture
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    directory = Path(os.environ.get("CHAT_SCREENSHOTS") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def new_page(browser, url: str) -> Page:
    """Open the chat in a browser context of its own (its own cookies and storage)."""
    page = browser.new_context(viewport={"width": 1100, "height": 680}).new_page()
    page.set_default_timeout(WAIT)
    page.goto(url)
    return page


def enter(page: Page, name: str, password: str, button: str = "#register") -> None:
    """Fill the login form and press Log in or Register."""
    page.fill("#name", name)
    page.fill("#password", password)
    page.click(button)


def say(page: Page, text: str) -> None:
    """Type a message and send it with Enter."""
    page.fill("#text", text)
    page.press("#text", "Enter")


def test_two_people_chat_live(daemon, browser, shots):
    """Two pages register, meet in the lobby, see each other online and each other's words."""
    alice = new_page(browser, daemon.url)
    expect(alice.locator("#login-form")).to_be_visible()
    alice.screenshot(path=str(shots / "login.png"))
    enter(alice, "alice", "wonderland")
    expect(alice.locator("#room-title")).to_have_text("#lobby")

    bob = new_page(browser, daemon.url)
    enter(bob, "bob", "builder1")
    expect(bob.locator("#room-title")).to_have_text("#lobby")
    expect(alice.locator("#messages")).to_contain_text("bob joined")
    expect(alice.locator("#online")).to_contain_text("bob")

    say(alice, "Hello Bob, welcome!")
    expect(bob.locator("#messages .message")).to_contain_text(["Hello Bob, welcome!"])
    say(bob, "Hi Alice :)")
    expect(alice.locator("#messages .message").last).to_contain_text("Hi Alice :)")
    expect(alice.locator("#messages .message.mine")).to_have_count(1)

    # A refused call shows the server's message on the page.
    alice.fill("#room-name", "no spaces!")
    alice.press("#room-name", "Enter")
    expect(alice.locator("#notice")).to_have_text(
        "a room name is 1 to 32 of a-z, 0-9, '_' or '-'")
    alice.screenshot(path=str(shots / "notice.png"))

    # A new room: created by Alice, seen by Bob without reloading, joined by him.
    alice.fill("#room-name", "garden")
    alice.press("#room-name", "Enter")
    expect(alice.locator("#room-title")).to_have_text("#garden")
    bob.locator("#rooms [data-room=garden]").click()
    expect(bob.locator("#room-title")).to_have_text("#garden")
    expect(alice.locator("#messages")).to_contain_text("bob joined")
    say(bob, "Nice garden")
    expect(alice.locator("#messages .message").last).to_contain_text("Nice garden")
    # Bob's lobby keeps running in the background: Alice's word there shows as unread.
    alice.locator("#rooms [data-room=lobby]").click()
    say(alice, "back in the lobby")
    expect(bob.locator("#rooms [data-room=lobby] .badge")).to_have_text("1")

    # A direct message: only Bob is told, in a conversation of its own.
    alice.locator("#online li", has_text="bob").click()
    expect(alice.locator("#room-title")).to_have_text("@bob")
    say(alice, "psst, a secret")
    expect(bob.locator("#dms")).to_contain_text("@alice")
    bob.locator("#dms li", has_text="alice").click()
    expect(bob.locator("#messages .message").last).to_contain_text("psst, a secret")

    bob.locator("#rooms [data-room=lobby]").click()
    expect(bob.locator("#messages")).to_contain_text("back in the lobby")
    bob.screenshot(path=str(shots / "chat.png"))
    alice.screenshot(path=str(shots / "direct.png"))


def test_wrong_password_shows_the_refusal(daemon, browser, shots):
    """A wrong password keeps the login form up and shows the server's reason."""
    page = new_page(browser, daemon.url)
    enter(page, "carol", "secret99")
    expect(page.locator("#room-title")).to_have_text("#lobby")
    page.click("#logout")

    enter(page, "carol", "not-her-password", button="#login")
    expect(page.locator("#login-error")).to_have_text("Login: wrong name or password")
    expect(page.locator("#chat-view")).to_be_hidden()
    page.screenshot(path=str(shots / "refused.png"))

    enter(page, "carol", "secret99")   # registering a taken name
    expect(page.locator("#login-error")).to_have_text("Register: the name 'carol' is taken")

    enter(page, "carol", "secret99", button="#login")
    expect(page.locator("#room-title")).to_have_text("#lobby")


def test_page_reconnects_after_a_restart(daemon, browser):
    """After the daemon restarts, the page logs in again, re-enters its room and chats on."""
    alice = new_page(browser, daemon.url)
    enter(alice, "dora", "explorer")
    expect(alice.locator("#room-title")).to_have_text("#lobby")
    say(alice, "before the restart")
    expect(alice.locator("#messages .message")).to_have_count(1)

    daemon.stop()
    expect(alice.locator("#status")).not_to_have_text("online")
    daemon.start(port=daemon.port)

    expect(alice.locator("#status")).to_have_text("online", timeout=2 * WAIT)
    bob = new_page(browser, daemon.url)
    enter(bob, "eve", "listener")
    expect(bob.locator("#messages")).to_contain_text("before the restart")
    say(bob, "after the restart")
    expect(alice.locator("#messages .message").last).to_contain_text("after the restart")


def test_no_password_in_any_url_reload_keeps_the_session_logout_ends_it(daemon, browser):
    """Logging in sends the password in a POST body only; a reload stays in; logout ends it."""
    page = new_page(browser, daemon.url)
    urls: list[str] = []
    console: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.on("console", lambda message: console.append(message.text))

    enter(page, "grace", "not-her-password", button="#login")   # a failed login first
    expect(page.locator("#login-error")).to_have_text("Login: wrong name or password")
    enter(page, "grace", "hopper42")
    expect(page.locator("#room-title")).to_have_text("#lobby")
    sockets = [url for url in urls if url.startswith("ws")]
    assert sockets and all("?ticket=" in url for url in sockets)

    page.reload()
    expect(page.locator("#room-title")).to_have_text("#lobby")
    expect(page.locator("#me")).to_have_text("grace")
    expect(page.locator("#status")).to_have_text("online")
    say(page, "still here after a reload")
    expect(page.locator("#messages .message").last).to_contain_text("still here")
    token = page.evaluate("JSON.parse(sessionStorage.getItem('lexicons.session')).token")

    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#status")).to_have_text("offline")
    page.reload()
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#chat-view")).to_be_hidden()
    ended = page.evaluate("""async (token) => (await fetch("/session", {method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({session: token})})).status""", token)
    assert ended == 401   # the server has ended the session, not only the page

    for secret in ("hopper42", "not-her-password"):
        assert not [url for url in urls if secret in url], urls
        assert not [line for line in console if secret in line], console
    assert not [url for url in urls if "Login=" in url or "Register=" in url]


CLIENT_SCRIPT = """async () => {
  const { Client } = await import("/lexicons.js");
  const out = {};
  try {
    await new Client({ headers: { Login: { name: "nobody", password: "nope" } } }).connect();
  } catch (e) { out.refused = [e.name, e.status, e.reason]; }
  const c = new Client({ headers: { Register: { name: "scripted", password: "pass1234" } } });
  await c.connect();
  try { await c.call("Send", { room: "lobby", text: "too early" }); }
  catch (e) { out.callError = [e.name, e.messages]; }
  try { await c.subscribe("user:someone-else"); } catch (e) { out.notPermitted = e.messages; }
  const got = [];
  c.on("Message", (message) => got.push(message.text));
  await c.call("Join", { room: "lobby" });
  out.sent = await c.call("Send", { room: "lobby", text: "hello from lexicons.js" });
  await new Promise((resolve) => setTimeout(resolve, 300));
  out.got = got;
  out.subscribed = await c.subscribe("public");
  out.channels = [...c.channels];
  await c.unsubscribe("public");
  out.after = [...c.channels];
  c.close();
  try { await c.call("Rooms"); } catch (e) { out.closed = [e.name, e.message]; }
  return out;
}"""


def test_lexicons_js_calls_subscribes_and_reports_errors(daemon, browser):
    """lexicons.js: refusals, call errors and broadcasts as the server sent them."""
    page = new_page(browser, daemon.url)
    out = page.evaluate(CLIENT_SCRIPT)
    assert out["refused"][:2] == ["RefusedError", 401]
    assert out["refused"][2].startswith("Login: wrong name or password")
    assert out["callError"] == ["CallError", ["join room 'lobby' before sending to it"]]
    assert out["notPermitted"] == ["not permitted to subscribe to 'user:someone-else'"]
    assert out["sent"] is None and out["got"] == ["hello from lexicons.js"]
    assert out["subscribed"] == "public" and out["channels"] == ["public"]
    assert out["after"] == []
    assert out["closed"] == ["ConnectionError", "not connected"]



FITS = """() => {
  // Controls and names a person must see whole: none may stick out of the window or be
  // cut off by a scrolling or clipping box around it, and no name may end in an ellipsis.
  const width = window.innerWidth;
  const name = (node) => node.id || node.textContent.trim() || node.placeholder;
  const shown = [...document.querySelectorAll(
    "#chat-view button, #chat-view input, .item, .bar button")]
    .filter((node) => node.offsetParent !== null);
  const clipped = [];
  for (const node of shown) {
    const box = node.getBoundingClientRect();
    if (box.left < 0 || box.right > width + 0.5) { clipped.push(name(node)); continue; }
    for (let up = node.parentElement; up; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (style.overflowX === "visible" && style.overflow === "visible") continue;
      const outer = up.getBoundingClientRect();
      if (box.left < outer.left - 0.5 || box.right > outer.right + 0.5) {
        clipped.push(name(node));
        break;
      }
    }
  }
  const cut = [...document.querySelectorAll(".item .name")]
    .filter((node) => node.scrollWidth > node.clientWidth + 1).map(name);
  return {scroll: document.scrollingElement.scrollWidth, width, clipped, cut};
}"""


@pytest.mark.parametrize("width", [375, 420])
def test_chat_is_usable_at_phone_width(daemon, browser, shots, width):
    """On a phone-sized window nothing is clipped: rooms, people and the composer fit, work."""
    page = browser.new_context(viewport={"width": width, "height": 740},
                               device_scale_factor=2).new_page()
    page.set_default_timeout(WAIT)
    page.goto(daemon.url)
    expect(page.locator("#login-form")).to_be_in_viewport()
    page.screenshot(path=str(shots / f"phone-{width}-login.png"))
    enter(page, "henry", "phone1234")
    expect(page.locator("#room-title")).to_have_text("#lobby")
    for room in ("garden", "kitchen", "library-of-alexandria"):
        page.fill("#room-name", room)
        page.press("#room-name", "Enter")
        expect(page.locator("#room-title")).to_have_text(f"#{room}")
    page.locator("#rooms [data-room=lobby]").click()
    expect(page.locator("#room-title")).to_have_text("#lobby")
    say(page, "typed on a phone")
    expect(page.locator("#messages .message").last).to_contain_text("typed on a phone")
    fits = page.evaluate(FITS)
    assert fits["scroll"] <= fits["width"], fits
    assert fits["clipped"] == [] and fits["cut"] == [], fits
    for selector in ("#rooms [data-room=library-of-alexandria]", "#online li", "#text",
                     "#composer button", "#logout", "#room-name"):
        expect(page.locator(selector)).to_be_in_viewport()
    page.screenshot(path=str(shots / f"phone-{width}-chat.png"))
