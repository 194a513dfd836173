"""Speak the lexicons native wire format for the benchmark peers (pure: text in, text out).

The peers implement only what the benchmark app (bench/app.py) offers, with the same
frames lexicons sends, so one load generator drives lexicons and the peers alike:

- a call is ``{"SignalName": {kwargs}}`` (or a list of them, run in order);
- ``Echo(data)`` replies to the caller alone: ``[{"Echo": data}]``;
- ``Publish(channel, data)`` broadcasts ``[{"Publish": data}]`` on the channel;
- the built-in ``subscribe(channel)`` / ``unsubscribe(channel)`` reply to the caller;
- errors go to the caller: ``[{"Errors": ["message", ...]}]``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True)
class Reply:
    """Send ``text`` to the caller alone."""

    text: str


@dataclass(frozen=True)
class Broadcast:
    """Send ``text`` to every connection in ``channel``."""

    channel: str
    text: str


@dataclass(frozen=True)
class Join:
    """Add the caller to ``channel``."""

    channel: str


@dataclass(frozen=True)
class Leave:
    """Remove the caller from ``channel``."""

    channel: str


Action = Reply | Broadcast | Join | Leave


def _error(message: str) -> Reply:
    return Reply(json.dumps([{"Errors": [message]}]))


def _run(name: str, kwargs: object) -> list[Action]:
    if not isinstance(kwargs, dict):
        return [_error(f"{name}: arguments must be a JSON object")]
    try:
        if name == "Echo":
            return [Reply(json.dumps([{"Echo": kwargs["data"]}]))]
        if name == "Publish":
            channel = kwargs["channel"]
            return [Broadcast(channel, json.dumps([{"Publish": kwargs["data"]}]))]
        if name in (SUBSCRIBE, UNSUBSCRIBE):
            channel = kwargs["channel"]
            action = Join(channel) if name == SUBSCRIBE else Leave(channel)
            return [action, Reply(json.dumps([{name: {"channel": channel}}]))]
    except KeyError as exc:
        return [_error(f"{name}: missing argument {exc.args[0]!r}")]
    return [_error(f"unknown signal {name!r}")]


def handle(text: str | bytes) -> list[Action]:
    """Decode one client message and return the actions it asks for, in order."""
    try:
        message = json.loads(text)
    except ValueError:
        return [_error("invalid JSON")]
    calls = message if isinstance(message, list) else [message]
    actions: list[Action] = []
    for call in calls:
        if not isinstance(call, dict) or not call:
            actions.append(_error("a call must be a JSON object {\"SignalName\": {...}}"))
            continue
        for name, kwargs in call.items():
            actions.extend(_run(name, kwargs))
    return actions
