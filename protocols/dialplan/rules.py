"""Dial-plan rules ``PATTERN=>TARGET`` and what they decide (docs/feature-server.md,
"Notation"; guide: "Sample basic dial-plan configuration").

Targets:

* ``${DIGITS}``, ``${DIGITS:1}``, ``${DIGITS:1:4}`` and literal characters
  around them (``+1${DIGITS:1}``): the number the call goes to; with
  ``@trunk`` it leaves through a trunk chosen by the node (geo-location,
  priority, service state), with ``@NAME`` through that Trunk or Trunk Group DN;
* ``gcti::voicemail``: the voicemail of the caller (access number) or of the
  forwarding DN (busy / no-answer forwarding);
* ``gcti::reject`` (404) or ``gcti::reject=CODE`` (400-699): the call is refused.

A pattern that starts with ``~`` is a regular expression (Python syntax,
matched against the whole number): the fallback for what the pattern notation
cannot say; its groups are ``${1}``, ``${2}`` ... in the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

from protocols.dialplan.errors import DialPlanError
from protocols.dialplan.pattern import Pattern, parse_pattern

__all__ = ["Action", "Decision", "Rule", "Target", "parse_rule", "parse_target", "split_rules"]

VOICEMAIL = "gcti::voicemail"
REJECT = "gcti::reject"
#: ``@trunk``: any trunk, the node chooses
ANY_TRUNK = "trunk"
_EXPR = re.compile(r"\$\{([A-Za-z]+|\d+)(?::(-?\d+))?(?::(\d+))?\}")
_VIA = re.compile(r"^[A-Za-z0-9_.\-]+$")
#: characters a produced number may hold (a SIP user part, RFC 3261 §25.1, narrowed)
_NUMBER = re.compile(r"^[A-Za-z0-9+*#_.\-]*$")
MAX_RULE = 512


class Action(StrEnum):
    ROUTE = "route"
    VOICEMAIL = "voicemail"
    REJECT = "reject"
    NONE = "none"  # no rule matched


@dataclass(frozen=True, slots=True)
class Decision:
    """What the dial plan says about one dialled number."""

    action: Action
    number: str | None = None
    via: str | None = None  # "trunk" or a Trunk / Trunk Group DN
    code: int | None = None
    partition: str | None = None
    rule: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.action.value}
        for key in ("number", "via", "code", "partition", "rule"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class Target:
    """The right-hand side of a rule, parsed once."""

    action: Action
    #: literal text and (variable, offset, length) pieces of the number
    pieces: tuple[str | tuple[str, int, int | None], ...] = ()
    via: str | None = None
    code: int | None = None

    def number(self, digits: str, groups: tuple[str, ...] = ()) -> str:
        out: list[str] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            name, offset, length = piece
            value = digits if name == "DIGITS" else _group(groups, name)
            value = value[offset:]
            out.append(value if length is None else value[:length])
        return "".join(out)


def _group(groups: tuple[str, ...], name: str) -> str:
    index = int(name) - 1
    return groups[index] if 0 <= index < len(groups) else ""


def parse_target(text: str, *, groups: int = 0) -> Target:
    """Read a target; ``groups`` is how many ``${N}`` the pattern provides."""
    return _parse_target(text.strip(), groups)


@lru_cache(maxsize=4096)
def _parse_target(text: str, groups: int) -> Target:
    # targets repeat across rules (``${DIGITS}@trunk``): each distinct one is read once
    if not text:
        raise DialPlanError("empty target")
    if text == VOICEMAIL:
        return Target(Action.VOICEMAIL)
    if text == REJECT or text.startswith(REJECT + "="):
        code = 404
        if text != REJECT:
            raw = text[len(REJECT) + 1:]
            if not raw.isdigit() or not 400 <= int(raw) <= 699:
                raise DialPlanError(f"reject code must be 400-699, got {raw!r}")
            code = int(raw)
        return Target(Action.REJECT, code=code)
    if text.startswith("gcti::"):
        raise DialPlanError(f"unknown service {text!r} (gcti::voicemail, gcti::reject[=CODE])")
    number, at, via = text.partition("@")
    if at and not _VIA.match(via):
        raise DialPlanError(f"bad trunk name {via!r} after '@'")
    pieces: list[str | tuple[str, int, int | None]] = []
    pos = 0
    for m in _EXPR.finditer(number):
        if m.start() > pos:
            pieces.append(number[pos:m.start()])
        name = m.group(1)
        if name != "DIGITS" and not name.isdigit():
            raise DialPlanError(f"unknown variable ${{{name}}} (DIGITS, or 1.. for regex groups)")
        if name.isdigit() and not 1 <= int(name) <= groups:
            raise DialPlanError(f"${{{name}}}: the pattern has {groups} group(s)")
        offset = int(m.group(2) or 0)
        length = int(m.group(3)) if m.group(3) is not None else None
        pieces.append((name, offset, length))
        pos = m.end()
    if pos < len(number):
        pieces.append(number[pos:])
    for piece in pieces:
        if isinstance(piece, str) and ("$" in piece or not _NUMBER.match(piece)):
            raise DialPlanError(f"bad characters in target {text!r}")
    if not pieces:
        raise DialPlanError(f"target {text!r} produces no number")
    return Target(Action.ROUTE, tuple(pieces), via or None)


class Rule(NamedTuple):
    """``PATTERN=>TARGET``; ``regex`` is set for a ``~`` (fallback) pattern.

    A named tuple: immutable and the cheapest to build, which counts when a plan
    of 100,000 rules is reloaded."""

    text: str
    pattern: Pattern | None
    regex: re.Pattern[str] | None
    target: Target

    def decide(self, digits: str, partition: str,
               groups: tuple[str, ...] = ()) -> Decision:
        t = self.target
        if t.action is Action.ROUTE:
            return Decision(Action.ROUTE, t.number(digits, groups), t.via, None, partition,
                            self.text)
        return Decision(t.action, None, None, t.code, partition, self.text)


def parse_rule(text: str) -> Rule:
    text = text.strip()
    if len(text) > MAX_RULE:
        raise DialPlanError(f"rule longer than {MAX_RULE} characters")
    left, arrow, right = text.rpartition("=>")
    if not arrow:
        raise DialPlanError(f"expected PATTERN=>TARGET, got {text!r}")
    left = left.strip()
    if left.startswith("~"):
        try:
            regex = re.compile(left[1:])
        except re.error as exc:
            raise DialPlanError(f"bad regular expression {left[1:]!r}: {exc}") from None
        return Rule(text, None, regex, parse_target(right, groups=regex.groups))
    return Rule(text, parse_pattern(left), None, parse_target(right))


def split_rules(rules: str | list[str] | tuple[str, ...]) -> list[str]:
    """Rules given as a list, or as one text separated by ``;`` or new lines."""
    if isinstance(rules, str):
        items = re.split(r"[;\n]", rules)
    else:
        items = []
        for item in rules:
            if not isinstance(item, str):
                raise DialPlanError(f"a rule must be text, got {item!r}")
            items.append(item)
    return [item.strip() for item in items if item.strip() and not item.strip().startswith("#")]
