"""The native protocol (path ``/``): text in, calls out; replies, errors and broadcasts out.

Pure: no socket, thread or clock. The router service drives it.

Wire format (text frames carrying JSON)
---------------------------------------
A call names one signal and its keyword arguments; a list of calls runs in
order, each answered on its own (an error in one does not stop the next)::

    {"Echo": {"data": "hi"}}
    [{"Subscribe": {"channel": "room:a"}}, {"Echo": {"data": "hi"}}]

A call may carry an id under the key ``"#"`` (a string or a number; it cannot
collide with a signal name, which is a class name). The answer to that call
carries the same id, and a call with an id always gets exactly one answer::

    {"Echo": {"data": "hi"}, "#": 7}     ->  [{"Echo": "hi", "#": 7}]

Broadcasts carry no id: ``[{"SignalName": payload}]``. Errors go to the
caller only, naming the problem, never a traceback::

    [{"Errors": ["unknown signal 'Ecco' (did you mean 'Echo'?)"], "#": 7}]
"""
from __future__ import annotations

import datetime
import difflib
import json
import json.encoder
import json.scanner
import re
import sys
from collections.abc import Mapping
from typing import Any

from lexicons.wire.arguments import Arguments, json_type
from lexicons.wire.events import Call, Rejected

#: The key of a call's correlation id.
ID = "#"
#: The name of the error answer.
ERRORS = "Errors"


def _default(value: Any) -> Any:
    """Turn values json cannot encode into ones it can (DataFrames, sets, dates, numpy)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict(orient="records")  # a pandas DataFrame
        except TypeError:
            return to_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)  # numpy arrays, pandas Series
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


# allow_nan=False: NaN and Infinity are not JSON; a browser's JSON.parse throws on them
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default,
                            allow_nan=False)
# The C encoder and scanner called directly skip about a microsecond of Python
# set-up per message each (json.dumps builds a new C encoder on every call).
# No circular-reference markers: a cyclic payload ends in RecursionError.
_c_encode = (json.encoder.c_make_encoder(None, _default, json.encoder.c_encode_basestring,
                                         None, ":", ",", False, False, False)
             if json.encoder.c_make_encoder is not None else None)
_scan = json.scanner.make_scanner(json.JSONDecoder())
_INFINITIES = (float("inf"), float("-inf"))


def encode_json(value: Any) -> str:
    """Return compact JSON text for *value* (TypeError if it cannot be sent as JSON)."""
    if _c_encode is None:
        return _encoder.encode(value)
    return "".join(_c_encode(value, 0))


def parse_json(text: str) -> Any:
    """Parse JSON text; raise json.JSONDecodeError (or RecursionError) if it is not.

    An integer longer than Python converts (``sys.get_int_max_str_digits()``, 4300
    digits by default) is a JSONDecodeError "number too long" too, not a ValueError.
    """
    try:
        try:
            value, end = _scan(text, 0)
        except StopIteration:
            return json.loads(text)  # leading whitespace, or an error to describe
        if end != len(text) and text[end:].strip():
            return json.loads(text)  # raises "Extra data"
        return value
    except json.JSONDecodeError:
        raise
    except ValueError:
        raise _too_long(text) from None


def _too_long(text: str) -> json.JSONDecodeError:
    """Return the error for a JSON integer with more digits than int() accepts."""
    limit = sys.get_int_max_str_digits()
    match = re.search(rf"\d{{{limit + 1}}}", text) if limit else None
    return json.JSONDecodeError(f"number too long (more than {limit} digits)", text,
                                match.start() if match else 0)


def reply(name: str, payload: Any, call_id: Any = None) -> str:
    """Return the text of an answer to one caller (raises TypeError if not JSON-able)."""
    if call_id is None:
        return encode_json([{name: payload}])
    return encode_json([{name: payload, ID: call_id}])


def broadcast(name: str, payload: Any) -> str:
    """Return the text of a broadcast: ``[{"name": payload}]``."""
    return encode_json([{name: payload}])


def errors(messages: list[str] | tuple[str, ...], call_id: Any = None) -> str:
    """Return the text of an error answer: ``[{"Errors": [...]}]``."""
    if call_id is None:
        return encode_json([{ERRORS: list(messages)}])
    return encode_json([{ERRORS: list(messages), ID: call_id}])


class Protocol:
    """Decode a client's messages against the table of signals it may call."""

    def __init__(self, signals: Mapping[str, Arguments]):
        self.signals = dict(signals)

    def decode(self, text: str) -> list[Call | Rejected]:
        """Return the calls in one text message, each checked; problems as Rejected."""
        try:
            message = parse_json(text)
        except json.JSONDecodeError as exc:
            return [Rejected((f"invalid JSON: {exc.msg} at character {exc.pos}",))]
        except RecursionError:
            return [Rejected(("invalid JSON: nested too deeply",))]
        if type(message) is dict:  # json gives exact dicts and lists
            return [self._call(message, None)]
        if type(message) is list:
            if not message:
                return [Rejected(("empty list: send a call {\"Signal\": {arguments}} "
                                  "or a list of calls",))]
            return [self._call(item, index) for index, item in enumerate(message)]
        return [Rejected((f"a message must be a JSON object {{\"Signal\": {{arguments}}}} "
                          f"or a list of them, not {json_type(message)}",))]

    def _call(self, item: Any, index: int | None) -> Call | Rejected:
        where = "" if index is None else f"call {index}: "
        if type(item) is not dict:
            return Rejected((f"{where}a call must be a JSON object "
                             f"{{\"Signal\": {{arguments}}}}, not {json_type(item)}",))
        if len(item) == 1:  # the common case: no id
            call_id = None
            (name,) = item
        else:
            call_id = item.get(ID)
            if call_id is not None and (type(call_id) not in (str, int, float)
                                        or call_id != call_id or call_id in _INFINITIES):
                what = json_type(call_id) if call_id == call_id else "NaN"
                return Rejected((f"{where}the call id {ID!r} must be a string or a number, "
                                 f"not {what}",))
            names = [key for key in item if key != ID]
            if len(names) != 1:
                found = ", ".join(repr(n) for n in names[:5]) or "none"
                return Rejected((f"{where}a call names exactly one signal (found: {found})",),
                                call_id)
            name = names[0]
        spec = self.signals.get(name)
        if spec is None:
            return Rejected((where + self.unknown(name),), call_id)
        kwargs = item[name]
        if kwargs is None:
            kwargs = {}
        elif type(kwargs) is not dict:
            return Rejected((f"{where}arguments of {name} must be a JSON object, "
                             f"not {json_type(kwargs)}",), call_id)
        kwargs, problems = spec.check(kwargs)
        if problems:
            return Rejected(tuple(where + p for p in problems), call_id)
        return Call(name, kwargs, call_id)

    def unknown(self, name: str) -> str:
        """Return the error naming an unknown signal, with a suggestion if one is close."""
        close = difflib.get_close_matches(name, list(self.signals), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown signal {name[:64]!r}{hint}"
