"""Tests of Model: fields from annotations, defaults, checks, computed fields."""
from __future__ import annotations

import pytest

from lexicons import Model, hash_password, verify_password
from lexicons.errors import ValidationError


class Owner(Model):
    name: str


class Everything(Model):
    s: str
    i: int
    f: float
    b: bool
    lst: list
    st: set
    d: dict
    ints: list[int]
    words: set[str]
    scores: dict[str, float]
    maybe: int | None
    owner: Owner
    named: int = 7
    tags: list = ["x"]


class Account(Model):
    login: str
    password_hash: str

    @property
    def password(self) -> str:
        return self.password_hash

    @password.setter
    def password(self, value: str) -> None:
        self.password_hash = hash_password(value)


def test_fields_come_from_annotations_in_order():
    """Annotated attributes become fields, in declaration order, with their kinds."""
    schema = Everything._schema()
    assert schema.names == ("s", "i", "f", "b", "lst", "st", "d", "ints", "words", "scores",
                            "maybe", "owner", "named", "tags")
    kinds = {n: f.kind for n, f in schema.fields.items()}
    assert kinds["owner"] == "ref" and kinds["ints"] == "list" and kinds["maybe"] == "int"
    assert schema.fields["ints"].item == "int" and schema.fields["maybe"].nullable
    assert schema.fields["owner"].ref is Owner


def test_defaults_per_type_and_from_class_attribute():
    """Missing fields take the class attribute value, else the per-type default."""
    row = Everything()
    assert (row.s, row.i, row.f, row.b) == ("", 0, 0.0, False)
    assert (row.lst, row.st, row.d, row.maybe, row.owner) == ([], set(), {}, None, None)
    assert row.named == 7 and row.tags == ["x"]


def test_mutable_defaults_are_not_shared():
    """Each row gets its own copy of a container default."""
    a, b = Everything(), Everything()
    a.tags.append("y")
    assert b.tags == ["x"] and Everything.tags == ["x"]


def test_pk_is_generated_unique_or_taken_as_given():
    """A pk is made up when absent (unique strings), or kept when passed."""
    pks = {Owner().pk for _ in range(2000)}
    assert len(pks) == 2000 and all(isinstance(p, str) and len(p) == 16 for p in pks)
    assert Owner(pk="me").pk == "me"
    with pytest.raises(ValidationError, match="pk"):
        Owner(pk=3)
    with pytest.raises(ValidationError, match="non-empty"):
        Owner(pk="")


@pytest.mark.parametrize("field,value,expected,given", [
    ("i", True, "int", "bool"),
    ("i", "3", "int", "str"),
    ("i", 3.0, "int", "float"),
    ("i", 1 << 63, "signed 64-bit", "int"),
    ("f", "1.5", "float", "str"),
    ("f", True, "float", "bool"),
    ("f", (1 << 60) + 1, "no exact float", "int"),
    ("b", 1, "bool", "int"),
    ("s", None, "str", "NoneType"),
    ("s", b"x", "str", "bytes"),
    ("lst", ("a",), "list", "tuple"),
    ("st", ["a"], "set", "list"),
    ("d", [], "dict", "list"),
    ("ints", [1, "2"], "int items", "str"),
    ("ints", [True], "int items", "bool"),
    ("scores", {"a": "x"}, "float items", "str"),
    ("owner", 5, "Owner", "int"),
])
def test_wrong_types_are_refused_naming_model_field_and_types(field, value, expected, given):
    """A wrong type raises ValidationError naming model, field, expected and given type."""
    with pytest.raises(ValidationError) as caught:
        Everything(**{field: value})
    text = str(caught.value)
    assert f"Everything.{field}" in text and expected in text and given in text


def test_accepted_values_are_not_coerced_beyond_lossless():
    """An int into a float field is fine; numpy scalars are taken as Python values."""
    import numpy as np
    row = Everything(f=3, i=np.int64(4), b=np.bool_(True), maybe=None, ints=[1, 2])
    assert row.f == 3.0 and type(row.f) is float
    assert type(row.i) is int and row.b is True and row.maybe is None


def test_falsy_values_are_values():
    """0, '', False and empty containers given explicitly are kept, not defaulted."""
    row = Everything(named=0, tags=[], s="", b=False)
    assert row.named == 0 and row.tags == [] and row.s == ""


def test_containers_hold_json_values_only():
    """Untyped containers refuse non-JSON values and non-str dict keys."""
    with pytest.raises(ValidationError, match="dict keys must be str"):
        Everything(d={1: "a"})
    with pytest.raises(ValidationError, match="JSON"):
        Everything(lst=[object()])
    with pytest.raises(ValidationError, match="set items"):
        Everything(st={("a", 1)})
    row = Everything(lst=[1, "a", None, [2.5], {"k": True}])
    assert row.lst == [1, "a", None, [2.5], {"k": True}]


def test_containers_are_copied_on_the_way_in():
    """Changing a list after passing it does not change the row."""
    source = [1, [2]]
    row = Everything(lst=source)
    source[1].append(3)
    assert row.lst == [1, [2]]


def test_reference_accepts_instance_or_pk():
    """A reference field stores the pk of an instance, or a pk string as given."""
    owner = Owner(name="ann")
    assert Everything(owner=owner).owner == owner.pk
    assert Everything(owner="abc").owner == "abc"
    with pytest.raises(ValidationError, match="Everything.owner"):
        Everything(owner=Account())


def test_assignment_is_checked():
    """Setting a field on an instance runs the same check as a write."""
    row = Everything()
    row.i = 5
    with pytest.raises(ValidationError, match="Everything.i"):
        row.i = "5"


def test_unknown_field_is_refused():
    """A keyword that is no field nor computed field is an error naming it."""
    with pytest.raises(ValidationError, match="no field 'nope'"):
        Owner(nope=1)


def test_property_setter_is_a_computed_field():
    """A property with a setter transforms its value into stored fields."""
    account = Account(login="ann", password="s3cret")
    assert account.password_hash.startswith("scrypt$")
    assert verify_password("s3cret", account.password_hash)
    assert "password" not in Account._schema().fields
    assert "password" in Account._schema().setters


def test_to_dict_is_json_ready_and_a_copy():
    """_to_dict gives pk and fields, sets as sorted lists, as copies."""
    row = Everything(words={"b", "a"}, lst=[[1]])
    data = row._to_dict()
    assert data["pk"] == row.pk and data["words"] == ["a", "b"]
    data["lst"][0].append(2)
    assert row.lst == [[1]]


def test_equality_compares_values_nan_included():
    """Rows are equal when pk and every field are equal (NaN equal to NaN)."""
    a = Everything(pk="p", f=float("nan"))
    b = Everything(pk="p", f=float("nan"))
    assert a == b and a != Everything(pk="q", f=float("nan"))


def test_forward_reference_by_name_resolves():
    """A reference may name a model declared later (or itself) as a string."""
    class Node(Model):
        parent: Node
        leaf: Leaf

    class Leaf(Model):
        value: int

    fields = Node._schema().fields
    assert fields["parent"].ref is Node and fields["leaf"].ref is Leaf


def test_unsupported_annotation_is_a_clear_error():
    """An annotation that is no field type fails naming model and field."""
    class Bad(Model):
        when: complex

    with pytest.raises(TypeError, match="Bad.when"):
        Bad._schema()


def test_passwords_are_salted_and_verified():
    """hash_password salts each value; verify_password checks and never raises."""
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second
    assert verify_password("pw", first) and verify_password("pw", second)
    assert not verify_password("PW", first)
    for junk in ("", "scrypt$x", "scrypt$16384$8$1$zz$00", "md5$a$b$c$d$e", None):
        assert not verify_password("pw", junk)
