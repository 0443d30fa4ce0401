"""Typed elements: put in order, read back in order, wrong type refused."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.rtm.elements import (
    MessageBuilder,
    MessageReader,
    Note,
    NoteAttribute,
    decode_elements,
    encode_elements,
)
from protocols.rtm.errors import ElementError, ElementTypeError


def test_elements_read_back_in_the_order_they_were_put() -> None:
    note = Note("agent", {"skills": NoteAttribute("s", ("sales", "support")),
                          "level": NoteAttribute("i", (5, 3)),
                          "since": NoteAttribute("t", (1764979200.5,))})
    built = MessageBuilder().put_string("jdoe").put_integer(-42).put_note(note).elements
    wire = msgpack.unpackb(msgpack.packb(encode_elements(built)), raw=False)
    reader = MessageReader(decode_elements(wire))
    assert reader.get_string() == "jdoe"
    assert reader.get_integer() == -42
    got = reader.get_note()
    assert got.name == "agent"
    assert got.strings("skills") == ("sales", "support")
    assert got.integers("level") == (5, 3)
    assert got.datetimes("since") == (1764979200.5,)
    assert reader.remaining == 0


def test_reading_the_wrong_type_is_an_error_and_does_not_consume() -> None:
    reader = MessageReader(MessageBuilder().put_string("x").put_integer(1).elements)
    with pytest.raises(ElementTypeError, match="element 0 is string, read as integer"):
        reader.get_integer()
    assert reader.get_string() == "x"
    assert reader.get_integer() == 1
    with pytest.raises(ElementTypeError, match="no element left"):
        reader.get_string()


def test_note_attribute_of_the_wrong_type_is_an_error() -> None:
    note = Note("n", {"a": NoteAttribute("i", (1,))})
    with pytest.raises(ElementTypeError):
        note.strings("a")
    with pytest.raises(ElementTypeError):
        note.integers("missing")


@pytest.mark.parametrize("raw", [
    "not a list",
    [["x", 1]],
    [["i", "5"]],
    [["i", True]],
    [["i", 2**63]],
    [["s", 5]],
    [["n", "note", {"a": ["i", ["x"]]}]],
    [["n", "note", {"a": ["q", [1]]}]],
    [["n", 5, {}]],
    [[]],
])
def test_bad_wire_elements_are_refused(raw: object) -> None:
    with pytest.raises(ElementError):
        decode_elements(raw)


def test_builder_refuses_values_of_the_wrong_type() -> None:
    with pytest.raises(ValueError):
        MessageBuilder().put_integer("5")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MessageBuilder().put_note(Note("n", {"a": NoteAttribute("i", ("x",))}))


@given(st.lists(st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                          st.text(max_size=20))))
def test_any_integers_and_strings_round_trip(values: list[int | str]) -> None:
    builder = MessageBuilder()
    for v in values:
        if isinstance(v, int):
            builder.put_integer(v)
        else:
            builder.put_string(v)
    wire = msgpack.unpackb(msgpack.packb(encode_elements(builder.elements)), raw=False)
    reader = MessageReader(decode_elements(wire))
    assert [reader.get_integer() if isinstance(v, int) else reader.get_string()
            for v in values] == values
