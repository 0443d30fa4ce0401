"""The drill's comparison of a proxy's binding dump with what the phones registered."""

from __future__ import annotations

from daemons.lab.drill import Registered, compare_bindings

NOW = 1_000_000.0
PHONE = "sip:1001@127.0.186.201:15060"


def binding(contact: str, expires: int, aor: str = "1001@lab.example") -> dict[str, object]:
    return {"aor": aor, "contact": contact, "expires": expires}


def test_the_last_registration_held_is_neither_lost_nor_stale() -> None:
    # the last 200 came 10 s ago and granted 60 s: 50 s are left
    registered = {"1001": Registered(PHONE, NOW - 10, 60)}
    assert compare_bindings(registered, [binding(PHONE, 49)], NOW) == ([], [])
    # the contact's parameters do not matter
    assert compare_bindings(registered, [binding(PHONE + ";transport=udp", 50)], NOW) == ([], [])


def test_a_missing_binding_is_lost() -> None:
    registered = {"1001": Registered(PHONE, NOW - 10, 60),
                  "1002": Registered("sip:1002@127.0.186.201:15061", NOW - 5, 60)}
    lost, stale = compare_bindings(registered, [binding(PHONE, 50)], NOW)
    assert lost == ["1002"] and stale == []


def test_an_earlier_registration_kept_is_stale() -> None:
    # the proxy still holds the binding of a REGISTER 30 s before the last one
    registered = {"1001": Registered(PHONE, NOW - 10, 60)}
    lost, stale = compare_bindings(registered, [binding(PHONE, 20)], NOW)
    assert lost == [] and len(stale) == 1 and "30 s early" in stale[0]


def test_a_contact_the_phone_never_registered_is_stale() -> None:
    registered = {"1001": Registered(PHONE, NOW - 10, 60)}
    other = "sip:1001@127.0.186.99:5060"
    lost, stale = compare_bindings(registered, [binding(PHONE, 50), binding(other, 50)], NOW)
    assert lost == [] and stale == [f"1001 {other} (not registered by the phone)"]
    # so is it when it is all the proxy holds, and the registered one is lost
    lost, stale = compare_bindings(registered, [binding(other, 50)], NOW)
    assert lost == ["1001"] and len(stale) == 1


def test_accounts_the_drill_did_not_register_are_not_judged() -> None:
    registered = {"1001": Registered(PHONE, NOW - 10, 60)}
    someone = binding("sip:2002@127.0.0.5:5060", 5, aor="2002@lab.example")
    assert compare_bindings(registered, [binding(PHONE, 50), someone], NOW) == ([], [])


def test_without_a_granted_expiry_only_the_contact_is_compared() -> None:
    registered = {"1001": Registered(PHONE, NOW - 10, 0)}
    assert compare_bindings(registered, [binding(PHONE, 1)], NOW) == ([], [])


def test_a_registration_that_has_expired_is_not_lost() -> None:
    # the phone stopped 70 s ago with 60 s granted: no proxy should hold it any more
    registered = {"1001": Registered(PHONE, NOW - 70, 60)}
    assert compare_bindings(registered, [], NOW) == ([], [])
    # one that is still running is lost when missing
    registered = {"1001": Registered(PHONE, NOW - 50, 60)}
    assert compare_bindings(registered, [], NOW) == (["1001"], [])
