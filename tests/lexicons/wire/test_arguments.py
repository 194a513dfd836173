"""Checking a call's keyword arguments against execute's signature (no network)."""
from typing import Any, Literal

import pytest

from lexicons.errors import SettingsError
from lexicons.wire.arguments import Arguments


def check(func, **kwargs):
    return Arguments(func, "S").check(kwargs)


def test_injected_names_are_found_and_not_required():
    """db, ws and sv are injected when execute names them, never asked of the client."""
    def execute(self, a, db, ws):
        pass
    arguments = Arguments(execute, "S")
    assert arguments.inject == ("db", "ws") and arguments.required == ["a"]


def test_var_keyword_accepts_anything_and_gets_everything_injected():
    """execute(**kwargs) accepts any argument and receives db, ws and sv."""
    def execute(self, **kwargs):
        pass
    arguments = Arguments(execute, "S")
    assert arguments.inject == ("db", "ws", "sv")
    assert arguments.check({"anything": 1}) == ({"anything": 1}, [])


@pytest.mark.parametrize("annotation, good, bad", [
    (int, [0, -5], [1.5, True, "1", None]),
    (float, [1, 1.5], [True, "1"]),
    (bool, [True, False], [0, 1, "true"]),
    (str, ["", "x"], [1, None]),
    (list, [[], [1, "a"]], [{}, "ab"]),
    (dict, [{}, {"a": 1}], [[], 1]),
    (int | None, [1, None], ["1"]),
    (Literal["a", "b"], ["a"], ["c", 1]),
    (Any, [1, None, "x", []], []),
    (dict[str, int], [{"a": 1}], [{"a": "1"}]),
    (tuple[int, ...], [[1, 2]], [["a"]]),
])
def test_annotations_are_checked(annotation, good, bad):
    """Values matching the annotation pass; others are reported with both types named."""
    def execute(self, x):
        pass
    execute.__annotations__ = {"x": annotation}
    for value in good:
        assert check(execute, x=value)[1] == [], value
    for value in bad:
        assert check(execute, x=value)[1], value


def test_sets_and_tuples_come_from_json_lists():
    """A JSON list is converted for a set or tuple annotation."""
    def execute(self, s: set[int], t: tuple):
        pass
    assert check(execute, s=[1, 1, 2], t=[1]) == ({"s": {1, 2}, "t": (1,)}, [])


def test_positional_only_arguments_are_refused_at_load():
    """execute with a positional-only argument cannot be called by name: a load-time error."""
    def execute(self, a, /):
        pass
    with pytest.raises(SettingsError, match="positional-only"):
        Arguments(execute, "S")


def test_unresolvable_annotations_are_not_checked():
    """An annotation that does not resolve leaves that argument unchecked."""
    def execute(self, x: "NoSuchType"):  # noqa: F821
        pass
    assert check(execute, x=object())[1] == []
