"""Dial-plan patterns and the trie that matches them (docs/feature-server.md,
"Notation"; guide: "Configuring dial-plan in Feature Server").

A pattern is read one character at a time:

* a digit, ``*``, ``#``, ``+`` or any other character but the ones below: itself;
* ``X``: any digit, ``Z``: 1-9, ``N``: 2-9;
* ``[...]``: one character of a set, ranges allowed (``[1-357]``);
* ``.`` (last only): one or more characters of any kind;
* ``!`` (last only): zero or more characters.

:class:`PatternTrie` holds every pattern of a dial plan (a hash table of
leading character runs, a small tree under each), so the cost of a look-up
depends on the length of the dialled number and on how many *kinds* of
element branch from one position, never on the number of rules.
Matches come out most specific first: at the first position where two
patterns differ, a character beats a set, a narrower set beats a wider one
(``N`` before ``X``), and a completed pattern beats a ``.`` or ``!`` tail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from protocols.dialplan.errors import DialPlanError

__all__ = ["DIGITS", "Element", "Pattern", "PatternTrie", "parse_pattern"]

DIGITS = frozenset("0123456789")
_CLASSES = {"X": DIGITS, "Z": frozenset("123456789"), "N": frozenset("23456789")}
#: longest pattern accepted (a dialled number is far shorter)
MAX_PATTERN = 64

V = TypeVar("V")
R = TypeVar("R")


@dataclass(frozen=True, slots=True, eq=False)
class Element:
    """One position of a pattern: a character, a set, or a tail (``.`` / ``!``)."""

    char: str | None = None
    chars: frozenset[str] | None = None
    tail: str | None = None  # "." one or more, "!" zero or more


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    elements: tuple[Element, ...]


_LITERALS: dict[str, Element] = {}
_SETS = {c: Element(chars=chars) for c, chars in _CLASSES.items()}
_TAILS = {c: Element(tail=c) for c in ".!"}
_SIMPLE = {**{c: Element(char=c) for c in "0123456789*#+"}, **_SETS, **_TAILS}


def _literal(c: str) -> Element:
    element = _LITERALS.get(c) or _SIMPLE.get(c)
    if element is None:
        element = _LITERALS[c] = Element(char=c)
    return element


def parse_pattern(text: str) -> Pattern:
    """Read a pattern; :class:`DialPlanError` says what is wrong with it."""
    if "[" not in text and len(text) <= MAX_PATTERN:
        # the common case, quickly: every character is an element of its own
        simple = tuple(map(_SIMPLE.get, text))
        body = text[:-1]
        if None not in simple and "." not in body and "!" not in body:
            return Pattern(text, simple)  # type: ignore[arg-type]
    if not text:
        raise DialPlanError("empty pattern")
    if len(text) > MAX_PATTERN:
        raise DialPlanError(f"pattern longer than {MAX_PATTERN} characters")
    elements: list[Element] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in ".!":
            if i != len(text) - 1:
                raise DialPlanError(f"{c!r} must end the pattern {text!r}")
            elements.append(_TAILS[c])
        elif c in _SETS:
            elements.append(_SETS[c])
        elif c == "[":
            end = text.find("]", i)
            if end < 0:
                raise DialPlanError(f"unclosed '[' in pattern {text!r}")
            elements.append(Element(chars=_parse_set(text[i + 1:end], text)))
            i = end
        elif c == "]" or c.isspace() or c == "=":
            raise DialPlanError(f"unexpected {c!r} in pattern {text!r}")
        else:
            elements.append(_literal(c))
        i += 1
    return Pattern(text, tuple(elements))


def _parse_set(body: str, text: str) -> frozenset[str]:
    chars: set[str] = set()
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if not (lo.isdigit() and hi.isdigit()) or lo > hi:
                raise DialPlanError(f"bad range {body[i:i + 3]!r} in pattern {text!r}")
            chars.update(chr(c) for c in range(ord(lo), ord(hi) + 1))
            i += 3
        else:
            if body[i] in "[-":
                raise DialPlanError(f"unexpected {body[i]!r} in set of pattern {text!r}")
            chars.add(body[i])
            i += 1
    if not chars:
        raise DialPlanError(f"empty set '[]' in pattern {text!r}")
    return frozenset(chars)


# A node is a list, the cheapest object to make (a plan of 100,000 rules has
# hundreds of thousands): [children by character, (set, child) pairs narrowest
# set first, values ending here, values of a "." tail, values of a "!" tail];
# what a node does not use is None.
_EXACT, _CLASSES_AT, _END, _ONE, _ZERO = range(5)
def _new_node() -> list[Any]:
    return [None, None, None, None, None]


class PatternTrie(Generic[V]):
    """Every pattern of a plan, each carrying values (rules).

    A pattern's leading run of characters is a key of one hash table; what
    follows the run (sets, tails, later characters) is a small tree under that
    key. A look-up tries the prefixes of the number from the longest down --
    the longer run is the more specific at the first position where two
    patterns differ -- and walks the tree of each prefix found. So it costs a
    table probe per length of run in use and a walk as long as the number,
    whatever the number of rules; and building takes a few objects per rule,
    not one per character.
    """

    def __init__(self) -> None:
        self._runs: dict[str, list[Any]] = {}
        self._lengths: set[int] = set()
        self._longest_first: tuple[int, ...] = ()
        self.size = 0

    def insert(self, pattern: Pattern, value: V) -> None:
        elements = pattern.elements
        run = 0
        for element in elements:
            if element.char is None:
                break
            run += 1
        key = pattern.text[:run]  # the run's characters are the text's first ones
        node = self._runs.get(key)
        if node is None:
            node = self._runs[key] = _new_node()
            if run not in self._lengths:
                self._lengths.add(run)
                self._longest_first = tuple(sorted(self._lengths, reverse=True))
        for element in elements[run:]:
            char = element.char
            if char is not None:
                children = node[_EXACT]
                if children is None:
                    children = node[_EXACT] = {}
                child = children.get(char)
                if child is None:
                    child = children[char] = [None, None, None, None, None]
            elif element.tail is not None:
                slot = _ONE if element.tail == "." else _ZERO
                node[slot] = [*(node[slot] or ()), value]
                break
            else:
                chars = element.chars
                assert chars is not None
                pairs = node[_CLASSES_AT]
                if pairs is None:
                    child = _new_node()
                    node[_CLASSES_AT] = [(chars, child)]
                else:
                    child = next((n for s, n in pairs if s == chars), None)
                    if child is None:
                        child = _new_node()
                        node[_CLASSES_AT] = sorted(
                            [*pairs, (chars, child)],
                            key=lambda item: (len(item[0]), sorted(item[0])))
            node = child
        else:
            node[_END] = [*(node[_END] or ()), value]
        self.size += 1

    def first(self, digits: str, accept: Callable[[list[V]], R | None]) -> R | None:
        """The first non-None ``accept(values)`` over the patterns matching
        ``digits``, most specific first (see the module doc)."""
        n = len(digits)
        runs = self._runs
        for run in self._longest_first:
            if run > n:
                continue
            node = runs.get(digits[:run])
            if node is not None:
                found = _walk(node, digits, run, n, accept)
                if found is not None:
                    return found
        return None


def _walk(node: list[Any], digits: str, i: int, n: int,
          accept: Callable[[list[V]], R | None]) -> R | None:
    if i == n:
        if node[_END]:
            found = accept(node[_END])
            if found is not None:
                return found
    else:
        c = digits[i]
        children = node[_EXACT]
        if children is not None:
            child = children.get(c)
            if child is not None:
                found = _walk(child, digits, i + 1, n, accept)
                if found is not None:
                    return found
        if node[_CLASSES_AT] is not None:
            for chars, child in node[_CLASSES_AT]:
                if c in chars:
                    found = _walk(child, digits, i + 1, n, accept)
                    if found is not None:
                        return found
        if node[_ONE]:
            found = accept(node[_ONE])
            if found is not None:
                return found
    if node[_ZERO]:
        return accept(node[_ZERO])
    return None
