"""The native protocol: text in, calls or errors out; replies out as text (no network)."""
import datetime
import json
import sys

import pytest

from lexicons.signal import Signal
from lexicons.wire import protocol
from lexicons.wire.events import Call, Rejected
from lexicons.wire.protocol import Protocol


class Echo(Signal):
    def execute(self, data):
        return data


class Add(Signal):
    def execute(self, a: int, b: float = 0.0, tags: list[str] | None = None, ws=None):
        return a + b


P = Protocol({"Echo": Echo.arguments(), "Add": Add.arguments()})


def errors(text):
    [item] = P.decode(text)
    assert isinstance(item, Rejected), item
    return item.errors


def test_a_call():
    """An object naming one signal is a call with its arguments."""
    assert P.decode('{"Echo": {"data": [1, 2]}}') == [Call("Echo", {"data": [1, 2]})]


def test_a_list_of_calls_in_order():
    """A list of calls gives the calls in order, a bad one rejected in its place."""
    items = P.decode('[{"Echo": {"data": 1}}, {"Nope": {}}, {"Add": {"a": 2}}]')
    assert items[0] == Call("Echo", {"data": 1})
    assert isinstance(items[1], Rejected) and items[1].errors[0].startswith("call 1: ")
    assert items[2] == Call("Add", {"a": 2})


def test_call_id_is_carried():
    """A call's "#" id is kept on the call and on its rejection."""
    assert P.decode('{"Echo": {"data": 1}, "#": "x7"}') == [Call("Echo", {"data": 1}, "x7")]
    [rejected] = P.decode('{"Nope": {}, "#": 3}')
    assert rejected.id == 3


def test_null_arguments_mean_none():
    """{"Signal": null} calls without arguments."""
    assert errors('{"Add": null}') == ("Add: missing argument 'a'",)


@pytest.mark.parametrize("text, message", [
    ("{", "invalid JSON: Expecting property name enclosed in double quotes at character 1"),
    ('{"Echo": {"data": 1}} x', "invalid JSON: Extra data at character 22"),
    ("42", 'a message must be a JSON object {"Signal": {arguments}} or a list of them, not int'),
    ('"hi"', 'a message must be a JSON object {"Signal": {arguments}} or a list of them, '
             'not str'),
    ("[]", 'empty list: send a call {"Signal": {arguments}} or a list of calls'),
    ("[3]", 'call 0: a call must be a JSON object {"Signal": {arguments}}, not int'),
    ("{}", "a call names exactly one signal (found: none)"),
    ('{"Echo": {}, "Add": {}}', "a call names exactly one signal (found: 'Echo', 'Add')"),
    ('{"Eco": {}}', "unknown signal 'Eco' (did you mean 'Echo'?)"),
    ('{"Zzz": {}}', "unknown signal 'Zzz'"),
    ('{"Echo": [1]}', "arguments of Echo must be a JSON object, not list"),
    ('{"Echo": {}}', "Echo: missing argument 'data'"),
    ('{"Echo": {"data": 1, "x": 2}}', "Echo: unexpected argument 'x'"),
    ('{"Add": {"a": "1"}}', "Add: argument 'a' must be int, got str"),
    ('{"Add": {"a": true}}', "Add: argument 'a' must be int, got bool"),
    ('{"Add": {"a": 1, "b": null}}', "Add: argument 'b' must be float, got null"),
    ('{"Add": {"a": 1, "tags": [1]}}', "Add: argument 'tags' must be list[str] | None, got list"),
    ('{"Add": {"a": 1, "ws": 1}}', "Add: argument 'ws' is reserved for the server"),
    ('{"Echo": {"data": 1}, "#": [1]}', "the call id '#' must be a string or a number, not list"),
])
def test_bad_input_gets_an_error_naming_the_problem(text, message):
    """Each kind of bad message is rejected with a message saying what is wrong."""
    assert errors(text)[0] == message


def test_deep_nesting_is_an_error_not_a_crash():
    """JSON nested beyond the parser's limit is reported as invalid JSON."""
    assert errors("[" * 100000 + "]" * 100000) == ("invalid JSON: nested too deeply",)


def test_a_number_too_long_is_an_error_naming_it():
    """An integer of more digits than Python converts is invalid JSON, said so with where."""
    limit = sys.get_int_max_str_digits()
    assert errors('{"Add": {"a": ' + "7" * 100000 + "}}") == (
        f"invalid JSON: number too long (more than {limit} digits) at character 14",)
    assert errors("[1, -" + "9" * (limit + 1) + "]")[0].startswith(
        "invalid JSON: number too long")
    # the longest number Python converts is still a number
    assert errors('{"Nope": ' + "7" * limit + "}") == ("unknown signal 'Nope'",)


def test_arguments_are_converted_to_their_annotation():
    """An int is accepted for a float and passed on as a float."""
    [call] = P.decode('{"Add": {"a": 1, "b": 2, "tags": ["x"]}}')
    assert call.kwargs == {"a": 1, "b": 2.0, "tags": ["x"]} and type(call.kwargs["b"]) is float


def test_replies_errors_and_broadcasts_are_compact_json():
    """Answers are JSON lists of one object, carrying the id when there is one."""
    assert protocol.reply("Echo", "é", 7) == '[{"Echo":"é","#":7}]'
    assert protocol.reply("Echo", None) == '[{"Echo":null}]'
    assert protocol.errors(["bad"], "a") == '[{"Errors":["bad"],"#":"a"}]'
    assert protocol.broadcast("Chat", {"t": 1}) == '[{"Chat":{"t":1}}]'


def test_values_json_lacks_are_converted():
    """Sets, tuples, dates and objects with to_dict() are sent as JSON."""
    class Frame:
        def to_dict(self, orient):
            return [{"orient": orient}]

    text = protocol.reply("X", {"s": {1}, "t": (1, 2), "d": datetime.date(2024, 1, 2),
                                "f": Frame()})
    assert json.loads(text) == [{"X": {"s": [1], "t": [1, 2], "d": "2024-01-02",
                                       "f": [{"orient": "records"}]}}]


def test_a_value_that_cannot_be_sent_raises_type_error():
    """An object JSON cannot carry is a TypeError naming its type."""
    with pytest.raises(TypeError, match="object cannot be sent as JSON"):
        protocol.reply("X", object())


def test_non_finite_call_id_and_payload_are_refused():
    """NaN/Infinity are not JSON: refused as call ids and never written to a client."""
    import pytest as _pytest

    from lexicons.wire import protocol as proto
    decoded = proto.Protocol({}).decode('{"Echo": {}, "#": NaN}')
    assert decoded[0].errors == ("the call id '#' must be a string or a number, not NaN",)
    assert decoded[0].id is None
    with _pytest.raises(ValueError):
        proto.reply("Echo", float("nan"), 1)
