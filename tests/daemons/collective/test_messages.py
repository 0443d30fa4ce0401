"""The collective's messages and its directory, sans-I/O: users and statuses
to elements and back, the wrong form refused, duplicates, statuses, where a
call goes."""

from __future__ import annotations

import pytest

from daemons.collective.directory import Directory
from daemons.collective.messages import (
    SpanningUser,
    UserStatus,
    decode_deleted,
    decode_statuses,
    decode_users,
    encode_deleted,
    encode_statuses,
    encode_users,
)
from protocols.rtm.elements import (
    MessageBuilder,
    Note,
    NoteAttribute,
    decode_elements,
    encode_elements,
)
from protocols.rtm.errors import ElementTypeError

ANN = SpanningUser("ann", "Ann Lee", "18001", ("Multisite_RTM1", "Sales"), 1, 3)


def wire(elements):  # type: ignore[no-untyped-def]
    """Through the wire form and back, as the hub carries them."""
    return decode_elements(encode_elements(elements))


def test_users_round_trip_with_their_home_from_the_origin() -> None:
    _, users = decode_users(wire(encode_users([ANN])), 1)
    assert users == [ANN]
    generation, users = decode_users(wire(encode_users([ANN], generation=42)), 1,
                                     with_generation=True)
    assert generation == 42 and users == [ANN]
    # the home site is the sender's: a site cannot speak for another's users
    assert decode_users(wire(encode_users([ANN])), 2)[1][0].home_site == 2
    assert decode_deleted(wire(encode_deleted([("ann", 4)]))) == [("ann", 4)]


def test_statuses_round_trip() -> None:
    status = UserStatus(1, "ann", "Available", "Manual In", True, True, "SIPS_Boca", 2, 10.5)
    assert decode_statuses(wire(encode_statuses([status])), 2) == [status]


def test_the_wrong_form_is_refused() -> None:
    with pytest.raises(ElementTypeError):
        decode_users(MessageBuilder().put_string("ann").elements, 1)
    with pytest.raises(ElementTypeError):  # a note without the extension attribute
        decode_users(MessageBuilder().put_note(Note("users", {
            "id": NoteAttribute("s", ("ann",))})).elements, 1)
    with pytest.raises(ValueError, match="different lengths"):
        decode_deleted(MessageBuilder().put_note(Note("users", {
            "id": NoteAttribute("s", ("a", "b")), "version": NoteAttribute("i", (1,))}
        )).elements)


def test_duplicates_are_spanning_users_of_different_sites() -> None:
    d = Directory(home_site=1)
    d.put(ANN, True)
    d.put(SpanningUser("bob", "Bob", "18001", ("Sales",), 1), False)
    assert d.duplicates() == []
    d.put(SpanningUser("dave", "Dave", "18001", ("Multisite_RTM1",), 2), True)
    [dup] = d.duplicates()
    assert dup.users == ((1, "ann"), (2, "dave"))
    d.remove(2, "dave")
    assert d.duplicates() == []


def test_a_log_off_from_a_site_the_user_left_is_ignored() -> None:
    d = Directory(home_site=3)
    d.put(ANN, True)
    on_at_2 = UserStatus(1, "ann", "Available", "", False, True, "SIPS_Indy", 2, 1.0)
    off_at_1 = UserStatus(1, "ann", "", "", False, False, "", 1, 2.0)
    assert d.apply_status(on_at_2)
    assert not d.apply_status(off_at_1)
    [where] = d.locate("18001")
    assert (where.site, where.source) == (2, "logged-on")
    assert d.apply_status(UserStatus(1, "ann", "", "", False, False, "", 2, 3.0))
    [where] = d.locate("18001")
    assert (where.site, where.source) == (1, "home")
    assert not d.apply_status(UserStatus(9, "zed", "", "", False, True, "x", 2, 1.0))
