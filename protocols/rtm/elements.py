"""Typed message elements: integer, string and note (IpNote), read back in the
order they were put (guide: "Multi-Site Tools": Put/Get Integer, String,
Note; "IpNotes Tools").

Wire form (docs/rtm.md, "Elements"): a list, one entry per element::

    ["i", 42]                       integer (signed 64-bit)
    ["s", "text"]                   string (UTF-8)
    ["n", "name", {"attr": ["i", [1, 2]], "when": ["t", [1764979200.0]]}]
                                    note: a name and attributes, each a list of
                                    one type: i (integer), s (string), t (date/time,
                                    Unix seconds)

:class:`MessageBuilder` puts elements, :class:`MessageReader` gets them in
order and raises :class:`ElementTypeError` when the next element is not of the
type asked for. :func:`decode_elements` checks a received list and raises
:class:`ElementError` (code ``bad-element``) for anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from protocols.rtm.errors import ElementError, ElementTypeError

__all__ = [
    "MAX_ELEMENTS",
    "Element",
    "ElementKind",
    "MessageBuilder",
    "MessageReader",
    "Note",
    "NoteAttribute",
    "decode_elements",
    "encode_elements",
]

MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**63 - 1
#: Most elements one message may carry.
MAX_ELEMENTS: Final = 4096

ElementKind = Literal["integer", "string", "note"]
AttributeType = Literal["i", "s", "t"]


@dataclass(frozen=True)
class NoteAttribute:
    """One attribute of a note: a list of values of one type (i, s or t)."""

    type: AttributeType
    values: tuple[int | str | float, ...]


@dataclass(frozen=True)
class Note:
    """An IpNote: a named entity with named attributes (guide: "IpNotes Tools")."""

    name: str
    attributes: Mapping[str, NoteAttribute] = field(
        default_factory=lambda: MappingProxyType({}))

    def integers(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self._attribute(name, "i").values)

    def strings(self, name: str) -> tuple[str, ...]:
        return tuple(str(v) for v in self._attribute(name, "s").values)

    def datetimes(self, name: str) -> tuple[float, ...]:
        return tuple(float(v) for v in self._attribute(name, "t").values)

    def _attribute(self, name: str, type_: AttributeType) -> NoteAttribute:
        attribute = self.attributes.get(name)
        if attribute is None:
            raise ElementTypeError(f"note {self.name!r} has no attribute {name!r}")
        if attribute.type != type_:
            raise ElementTypeError(
                f"attribute {name!r} of note {self.name!r} is of type {attribute.type}, "
                f"not {type_}")
        return attribute


@dataclass(frozen=True)
class Element:
    """One element of a message."""

    kind: ElementKind
    value: int | str | Note


_WIRE_KIND: Final[dict[str, ElementKind]] = {"i": "integer", "s": "string", "n": "note"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and MIN_INT <= value <= MAX_INT


def _check_value(type_: str, value: object) -> bool:
    if type_ == "i":
        return _is_int(value)
    if type_ == "s":
        return isinstance(value, str)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decode_note(item: list[Any]) -> Note:
    if len(item) != 3 or not isinstance(item[1], str) or not isinstance(item[2], dict):
        raise ElementError("a note is [\"n\", name, {attribute: [type, [values]]}]")
    attributes: dict[str, NoteAttribute] = {}
    for name, attr in item[2].items():
        if (not isinstance(name, str) or not isinstance(attr, list) or len(attr) != 2
                or attr[0] not in ("i", "s", "t") or not isinstance(attr[1], list)):
            raise ElementError(f"note {item[1]!r}: attribute {name!r} is not [type, [values]]")
        type_: AttributeType = attr[0]
        if not all(_check_value(type_, v) for v in attr[1]):
            raise ElementError(f"note {item[1]!r}: attribute {name!r} holds a value "
                               f"that is not of type {type_}")
        attributes[name] = NoteAttribute(type_, tuple(attr[1]))
    return Note(item[1], MappingProxyType(attributes))


def decode_elements(raw: object) -> tuple[Element, ...]:
    """Check a received element list and return its elements (``bad-element`` if not one)."""
    if not isinstance(raw, list):
        raise ElementError("elements must be a list")
    if len(raw) > MAX_ELEMENTS:
        raise ElementError(f"{len(raw)} elements, at most {MAX_ELEMENTS}")
    out: list[Element] = []
    for index, item in enumerate(raw):
        if not isinstance(item, list) or not item or item[0] not in _WIRE_KIND:
            raise ElementError(f"element {index} is not [\"i\"|\"s\"|\"n\", ...]")
        tag = item[0]
        if tag == "n":
            out.append(Element("note", _decode_note(item)))
            continue
        if len(item) != 2 or not _check_value(tag, item[1]):
            raise ElementError(f"element {index} is tagged {tag!r} and holds "
                               f"{type(item[1] if len(item) > 1 else None).__name__}")
        out.append(Element(_WIRE_KIND[tag], item[1]))
    return tuple(out)


def _encode_one(element: Element) -> list[Any]:
    if element.kind == "integer":
        return ["i", element.value]
    if element.kind == "string":
        return ["s", element.value]
    note = element.value
    assert isinstance(note, Note)
    return ["n", note.name,
            {name: [a.type, list(a.values)] for name, a in note.attributes.items()}]


def encode_elements(elements: Iterable[Element]) -> list[list[Any]]:
    """The wire form of ``elements``."""
    return [_encode_one(e) for e in elements]


class MessageBuilder:
    """Builds a message's elements in order (guide: "Multi-Site Create Message",
    "Put Integer", "Put String", "Put Note")."""

    def __init__(self) -> None:
        self._elements: list[Element] = []

    def put_integer(self, value: int) -> MessageBuilder:
        if not _is_int(value):
            raise ValueError(f"not a signed 64-bit integer: {value!r}")
        self._elements.append(Element("integer", value))
        return self

    def put_string(self, value: str) -> MessageBuilder:
        if not isinstance(value, str):
            raise ValueError(f"not a string: {value!r}")
        self._elements.append(Element("string", value))
        return self

    def put_note(self, note: Note) -> MessageBuilder:
        for name, attr in note.attributes.items():
            if not all(_check_value(attr.type, v) for v in attr.values):
                raise ValueError(f"note attribute {name!r}: values not of type {attr.type}")
        self._elements.append(Element("note", note))
        return self

    @property
    def elements(self) -> tuple[Element, ...]:
        return tuple(self._elements)


class MessageReader:
    """Reads a message's elements in the order they were put; the wrong type is
    :class:`ElementTypeError` (guide: "Multi-Site Get Integer/String/Note")."""

    def __init__(self, elements: Sequence[Element]) -> None:
        self._elements = elements
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self._elements) - self._next

    def _take(self, kind: ElementKind) -> int | str | Note:
        if self._next >= len(self._elements):
            raise ElementTypeError(f"no element left to read as {kind}")
        element = self._elements[self._next]
        if element.kind != kind:
            raise ElementTypeError(
                f"element {self._next} is {element.kind}, read as {kind}")
        self._next += 1
        return element.value

    def get_integer(self) -> int:
        value = self._take("integer")
        assert isinstance(value, int)
        return value

    def get_string(self) -> str:
        value = self._take("string")
        assert isinstance(value, str)
        return value

    def get_note(self) -> Note:
        value = self._take("note")
        assert isinstance(value, Note)
        return value
