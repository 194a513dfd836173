"""Speak the lexicons native wire format for the benchmark peers (pure: text in, text out).

The peers implement only what the benchmark app (bench/app.py) offers, with the same
frames lexicons sends, so one load generator drives lexicons and the peers alike:

- a call is ``{"SignalName": {kwargs}}`` (or a list of them, run in order), with an
  optional correlation id under ``"#"`` that the answer carries back;
- ``Echo(data)`` replies to the caller alone: ``[{"Echo": data}]``;
- ``Publish(channel, data)`` broadcasts ``[{"Publish": data}]`` on the channel;
- the built-in ``Subscribe(channel)`` / ``Unsubscribe(channel)`` answer the channel name;
- errors go to the caller: ``[{"Errors": ["message", ...]}]``;
- JSON is written compactly (no spaces), as lexicons writes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

SUBSCRIBE = "Subscribe"
UNSUBSCRIBE = "Unsubscribe"
ID = "#"

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def answer(name: str, payload: object, call_id: object = None) -> str:
    """Return the text of an answer to the caller, carrying the call's id if any."""
    if call_id is None:
        return _encode([{name: payload}])
    return _encode([{name: payload, ID: call_id}])


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


def _error(message: str, call_id: object = None) -> Reply:
    return Reply(answer("Errors", [message], call_id))


def _run(name: str, kwargs: object, call_id: object) -> list[Action]:
    if not isinstance(kwargs, dict):
        return [_error(f"arguments of {name} must be a JSON object", call_id)]
    try:
        if name == "Echo":
            return [Reply(answer("Echo", kwargs["data"], call_id))]
        if name == "Publish":
            channel = kwargs["channel"]
            actions: list[Action] = [Broadcast(channel, answer("Publish", kwargs["data"]))]
            if call_id is not None:
                actions.append(Reply(answer("Publish", None, call_id)))
            return actions
        if name in (SUBSCRIBE, UNSUBSCRIBE):
            channel = kwargs["channel"]
            action = Join(channel) if name == SUBSCRIBE else Leave(channel)
            return [action, Reply(answer(name, channel, call_id))]
    except KeyError as exc:
        return [_error(f"{name}: missing argument {exc.args[0]!r}", call_id)]
    return [_error(f"unknown signal {name[:64]!r}", call_id)]


def handle(text: str | bytes) -> list[Action]:
    """Decode one client message and return the actions it asks for, in order."""
    try:
        message = json.loads(text)
    except ValueError:
        return [_error("invalid JSON")]
    calls = message if isinstance(message, list) else [message]
    actions: list[Action] = []
    for call in calls:
        if not isinstance(call, dict):
            actions.append(_error("a call must be a JSON object {\"SignalName\": {...}}"))
            continue
        call_id = call.get(ID)
        names = [key for key in call if key != ID]
        if len(names) != 1:
            actions.append(_error("a call names exactly one signal", call_id))
            continue
        actions.extend(_run(names[0], call[names[0]], call_id))
    return actions
