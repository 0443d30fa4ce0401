"""The dial-plan notation: patterns, the trie's order, targets, partitions'
windows, calling profiles, compile errors (docs/feature-server.md, "Notation")."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.dialplan import (
    Action,
    DialPlanError,
    PatternTrie,
    compile_plan,
    parse_pattern,
    parse_rule,
)

# Sunday 2026-12-06 03:00 UTC
NOW = dt.datetime(2026, 12, 6, 3, 0, tzinfo=dt.UTC).timestamp()


def plan(rules: list[str], **options: object):  # type: ignore[no-untyped-def]
    return compile_plan({"P": {"rules": rules, **options}}, {}, {})


def test_guide_basic_and_voicemail_partitions() -> None:
    p = compile_plan(
        {"Basic": {"rules": [".=>${DIGITS}"]}, "Voicemail": {"rules": "5555=>gcti::voicemail"}},
        {"System": {"partitions": ["Basic", "Voicemail"]}},
        {"switch": {"internal": "System", "external": "System"}})
    d = p.lookup("1002", p.profile_for({"extension": "1001"}), NOW)
    assert (d.action, d.number, d.partition) == (Action.ROUTE, "1002", "Basic")
    d = p.lookup("5555", "System", NOW)
    assert (d.action, d.partition, d.rule) == (Action.VOICEMAIL, "Voicemail",
                                               "5555=>gcti::voicemail")


def test_trunk_rule_strips_the_access_digit() -> None:
    p = plan(["9XXXXXXX=>${DIGITS:1}@trunk", "9.=>+1${DIGITS:1:3}@Trunk_SBC_dc2"])
    d = p.lookup("95551234", None, NOW)
    assert (d.action, d.number, d.via) == (Action.ROUTE, "5551234", "trunk")
    d = p.lookup("9123456789", None, NOW)  # too long for the X rule: the wildcard one
    assert (d.number, d.via) == ("+1123", "Trunk_SBC_dc2")


def test_most_specific_pattern_wins_whatever_the_order() -> None:
    rules = ["X.=>any", "1.=>one-dot", "1XXX=>one-x", "1[0-4]XX=>one-set", "1234=>exact",
             "!=>zero"]
    for ordering in (rules, list(reversed(rules))):
        p = plan(ordering)
        assert p.lookup("1234", None, NOW).number == "exact"
        assert p.lookup("1235", None, NOW).number == "one-set"
        assert p.lookup("1535", None, NOW).number == "one-x"
        assert p.lookup("15351", None, NOW).number == "one-dot"
        assert p.lookup("25351", None, NOW).number == "any"
        assert p.lookup("", None, NOW).number == "zero"


def test_classes_n_z_x() -> None:
    p = plan(["N=>n", "Z=>z", "X=>x"])
    assert [p.lookup(d, None, NOW).number for d in "210"] == ["n", "z", "x"]


def test_regex_is_a_fallback_with_groups() -> None:
    p = plan(["~00(\\d{2})(\\d+)=>+${1}${2}@trunk", "001.=>trie"])
    assert p.lookup("0012345", None, NOW).number == "trie"  # the trie first
    d = p.lookup("0044123", None, NOW)
    assert (d.number, d.via) == ("+44123", "trunk")


def test_reject_codes_and_no_match() -> None:
    p = plan(["666=>gcti::reject", "667=>gcti::reject=486"])
    assert (p.lookup("666", None, NOW).code, p.lookup("667", None, NOW).code) == (404, 486)
    assert p.lookup("1", None, NOW).action is Action.NONE


def test_blocked_partition_refuses_with_403() -> None:
    p = compile_plan({"Premium": {"rules": ["1900.=>${DIGITS}@trunk"], "block": True},
                      "Basic": {"rules": [".=>${DIGITS}"]}}, {}, {})
    d = p.lookup("1900555", None, NOW)
    assert (d.action, d.code, d.partition) == (Action.REJECT, 403, "Premium")


def test_inactive_partition_and_windows() -> None:
    p = compile_plan({
        "Off": {"rules": ["1=>off"], "active": False},
        "Weekdays": {"rules": ["2=>weekday"], "days": ["mon", "tue", "wed", "thu", "fri"]},
        "Sunday": {"rules": ["3=>sunday"], "days": "sun"},
        "Night": {"rules": ["4=>night"], "time-start": "22:00", "time-end": "06:00"},
        "Day": {"rules": ["5=>day"], "time-start": "08:00", "time-end": "18:00"},
        # 03:00 UTC is 22:00 the day before in New York: inside the night window
        "NYNight": {"rules": ["6=>ny"], "time-zone": "America/New_York",
                    "time-start": "21:00", "time-end": "23:00"},
        "Future": {"rules": ["7=>future"], "start-date": "2027-01-01"},
        "Past": {"rules": ["8=>past"], "end-date": "2026-12-05"},
    }, {}, {})
    found = {d: p.lookup(d, None, NOW).number for d in "12345678"}
    assert found == {"1": None, "2": None, "3": "sunday", "4": "night", "5": None,
                     "6": "ny", "7": None, "8": None}
    monday_noon = NOW + 33 * 3600
    assert p.lookup("2", None, monday_noon).number == "weekday"
    assert p.lookup("5", None, monday_noon).number == "day"
    assert p.lookup("3", None, monday_noon).action is Action.NONE


def test_profile_order_decides_between_equal_patterns_and_precedence() -> None:
    p = compile_plan(
        {"A": {"rules": ["1XXX=>a"]}, "B": {"rules": ["1XXX=>b"]}, "C": {"rules": ["2.=>c"]}},
        {"AB": {"partitions": ["A", "B"]}, "BA": {"partitions": ["B", "A"]},
         "Conly": {"partitions": ["C"], "forward-busy": "gcti::voicemail",
                   "forward-no-answer": "5000"}},
        {"switch": {"internal": "AB", "external": "Conly"}, "extension": {"1001": "BA"},
         "user": {"alice": "Conly"}, "trunk": {"Trunk_SBC_dc1": "BA"}})
    assert p.lookup("1234", p.profile_for({"extension": "1002"}), NOW).number == "a"
    assert p.lookup("1234", p.profile_for({"extension": "1001"}), NOW).number == "b"
    prof = p.profile_for({"extension": "1001", "user": "alice"})
    assert prof == "Conly"
    assert p.lookup("1234", prof, NOW).action is Action.NONE  # not in the profile
    assert p.profile_for({}, external=True) == "Conly"
    assert p.profile_for({"trunk": "Trunk_SBC_dc1"}, external=True) == "BA"
    assert p.forward("1002", "busy", "Conly").action is Action.VOICEMAIL
    fwd = p.forward("1002", "no-answer", "Conly")
    assert (fwd.action, fwd.number) == (Action.ROUTE, "5000")
    assert p.forward("1002", "busy", "AB").action is Action.NONE


@pytest.mark.parametrize(("partitions", "profiles", "assignments", "reason"), [
    ({"P": {"rules": ["12=>"]}}, {}, {}, "empty target"),
    ({"P": {"rules": ["1.2=>x"]}}, {}, {}, "must end the pattern"),
    ({"P": {"rules": ["[9-1]=>x"]}}, {}, {}, "bad range"),
    ({"P": {"rules": ["[12=>x"]}}, {}, {}, "unclosed"),
    ({"P": {"rules": ["12 x"]}}, {}, {}, "PATTERN=>TARGET"),
    ({"P": {"rules": ["1=>${FOO}"]}}, {}, {}, "unknown variable"),
    ({"P": {"rules": ["1=>gcti::reject=200"]}}, {}, {}, "400-699"),
    ({"P": {"rules": ["1=>gcti::ivr"]}}, {}, {}, "unknown service"),
    ({"P": {"rules": ["~(=>x"]}}, {}, {}, "regular expression"),
    ({"P": {"rules": ["~1=>${2}"]}}, {}, {}, "group"),
    ({"P": {"rules": ["1=>x"], "time-zone": "Mars/Base"}}, {}, {}, "time-zone"),
    ({"P": {"rules": ["1=>x"], "time-start": "25:00"}}, {}, {}, "HH:MM"),
    ({"P": {"rules": ["1=>x"], "days": ["funday"]}}, {}, {}, "mon..sun"),
    ({"P": {"rules": ["1=>x"], "colour": "red"}}, {}, {}, "unknown option"),
    ({"P": {"rules": ["1=>x"]}}, {"S": {"partitions": ["Q"]}}, {}, "no partition"),
    ({"P": {"rules": ["1=>x"]}}, {}, {"user": {"a": "S"}}, "no calling profile"),
    ({"P": {"rules": ["1=>x"]}}, {}, {"phone": {"a": "S"}}, "unknown kind"),
    ({"bad name": {"rules": ["1=>x"]}}, {}, {}, "name must be"),
])
def test_broken_plans_are_refused_with_the_reason(partitions, profiles, assignments,
                                                  reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DialPlanError, match=re.escape(reason)):
        compile_plan(partitions, profiles, assignments)


def test_error_names_partition_and_rule() -> None:
    with pytest.raises(DialPlanError) as info:
        plan(["1=>x", "2=>y", "3=>gcti::nope"])
    assert info.value.where is not None
    assert info.value.where.startswith("partition P, rule 3")


# --- the trie against a straightforward reference: every pattern tried in turn

_ELEMENT = st.sampled_from(["1", "2", "3", "X", "Z", "N", "[1-2]"])


@st.composite
def _pattern(draw: st.DrawFn) -> str:
    body = "".join(draw(st.lists(_ELEMENT, min_size=0, max_size=4)))
    tail = draw(st.sampled_from(["", "", ".", "!"]))
    return (body + tail) or "1"


def _reference_matches(text: str, digits: str) -> bool:
    regex = ""
    for e in parse_pattern(text).elements:
        if e.char is not None:
            regex += re.escape(e.char)
        elif e.chars is not None:
            regex += "[" + "".join(sorted(e.chars)) + "]"
        else:
            regex += ".+" if e.tail == "." else ".*"
    return re.fullmatch(regex, digits) is not None


@given(st.lists(_pattern(), min_size=1, max_size=12, unique=True),
       st.text(alphabet="0123", max_size=5))
def test_trie_finds_exactly_the_matching_patterns(patterns: list[str], digits: str) -> None:
    trie: PatternTrie[str] = PatternTrie()
    for text in patterns:
        trie.insert(parse_pattern(text), text)
    seen: list[str] = []

    def collect(values: list[str]) -> None:
        seen.extend(values)

    trie.first(digits, collect)
    assert sorted(seen) == sorted(t for t in patterns if _reference_matches(t, digits))


def test_parse_rule_keeps_the_text() -> None:
    rule = parse_rule("  9.=>${DIGITS:1}@trunk ")
    assert rule.text == "9.=>${DIGITS:1}@trunk"


def _specificity(text: str) -> tuple[tuple[int, ...], ...]:
    """The documented order, written out: position by position a character, then
    a narrower set, then '.', then '!'; a pattern that ends beats one that goes on."""
    key: list[tuple[int, ...]] = []
    for e in parse_pattern(text).elements:
        if e.char is not None:
            key.append((0,))
        elif e.chars is not None:
            key.append((1, len(e.chars), *sorted(int(c) for c in e.chars)))
        else:
            key.append((2,) if e.tail == "." else (3,))
    return (*key, (-1,))


@given(st.lists(_pattern(), min_size=1, max_size=12, unique=True),
       st.text(alphabet="0123", max_size=5))
def test_trie_gives_matches_most_specific_first(patterns: list[str], digits: str) -> None:
    trie: PatternTrie[str] = PatternTrie()
    for text in patterns:
        trie.insert(parse_pattern(text), text)
    order: list[str] = []

    def collect(values: list[str]) -> None:
        order.extend(values)

    trie.first(digits, collect)
    expected = sorted((t for t in patterns if _reference_matches(t, digits)), key=_specificity)
    assert order == expected
