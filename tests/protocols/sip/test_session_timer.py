"""RFC 4028 session timers: Session-Expires / Min-SE, the UAS's answer (§9: 422,
interval, refresher), the UAC's reading of the 2xx (§7.2), and the refresh and
expiry clock (§10) driven by a fake ``now``."""

from __future__ import annotations

import pytest

from protocols.sip.errors import ParseError
from protocols.sip.headers import Headers
from protocols.sip.session_timer import (
    SessionExpires,
    SessionTimer,
    TimerAction,
    UasAnswer,
    answer_request,
    parse_min_se,
    parse_session_expires,
    read_response,
)


def headers(*items: tuple[str, str]) -> Headers:
    return Headers(list(items))


def test_parse_session_expires_and_min_se() -> None:
    assert parse_session_expires("1800") == SessionExpires(1800)
    assert parse_session_expires(" 90 ; Refresher=UAS;x=1") == SessionExpires(90, "uas")
    assert str(SessionExpires(120, "uac")) == "120;refresher=uac" and str(SessionExpires(9)) == "9"
    assert parse_min_se("90;x") == 90
    for bad in ("", "0", "abc", "90;refresher=proxy", str(2**32)):
        with pytest.raises(ParseError):
            parse_session_expires(bad)
    with pytest.raises(ParseError):
        parse_min_se("-5")


def test_too_small_interval_gets_422_with_our_min_se() -> None:
    answer = answer_request(headers(("Supported", "timer"), ("Session-Expires", "60")),
                            interval=1800, min_se=90)
    assert answer == UasAnswer(reject_min_se=90)
    answer = answer_request(headers(("x", "100")), interval=1800, min_se=120)
    assert answer.reject_min_se == 120


def test_uac_with_timer_refreshes_unless_it_asks_the_uas() -> None:
    answer = answer_request(headers(("Supported", "timer"), ("Session-Expires", "120")),
                            interval=1800, min_se=90)
    assert answer == UasAnswer(session=SessionExpires(120, "uac"), require=True,
                               we_refresh=False)
    answer = answer_request(
        headers(("k", "timer"), ("Session-Expires", "300;refresher=uas")),
        interval=1800, min_se=90)
    assert answer.session == SessionExpires(300, "uas") and answer.we_refresh


def test_uas_shortens_but_never_below_either_min_se() -> None:
    asked = headers(("Supported", "timer"), ("Session-Expires", "7200"), ("Min-SE", "600"))
    assert answer_request(asked, interval=1800, min_se=90).session == SessionExpires(1800, "uac")
    assert answer_request(asked, interval=300, min_se=90).session == SessionExpires(600, "uac")


def test_uac_without_timer() -> None:
    # nothing asked: no session timer
    assert answer_request(headers(), interval=1800, min_se=90) == UasAnswer()
    # a proxy asked for one: the UAS refreshes and does not Require timer
    answer = answer_request(headers(("Session-Expires", "1000")), interval=1800, min_se=90)
    assert answer == UasAnswer(session=SessionExpires(1000, "uas"), require=False,
                               we_refresh=True)
    # a UAC that supports timers without asking gets the UAS's own interval
    answer = answer_request(headers(("Supported", "timer")), interval=1800, min_se=90)
    assert answer.session == SessionExpires(1800, "uac") and answer.require
    assert answer_request(headers(("Supported", "timer")), interval=0, min_se=90) == UasAnswer()


def test_read_response_for_the_uac() -> None:
    assert read_response(headers()) is None
    assert read_response(headers(("Session-Expires", "900;refresher=uas"))) == \
        SessionExpires(900, "uas")
    assert read_response(headers(("x", "900"))) == SessionExpires(900, "uac")


def test_the_other_side_refreshes_or_the_session_expires() -> None:
    timer = SessionTimer(120, we_refresh=False, now=1000.0)
    # BYE at interval - min(32, interval/3) = 120 - 32 = 88 s without a refresh
    assert timer.next_timer() == 1088.0
    assert timer.handle_timer(1087.9) is None
    timer.refreshed(1050.0)  # a re-INVITE / UPDATE got its 2xx
    assert timer.next_timer() == 1138.0
    assert timer.handle_timer(1138.0) is TimerAction.EXPIRE
    assert timer.handle_timer(2000.0) is None  # expires once


def test_we_refresh_at_half_the_interval() -> None:
    timer = SessionTimer(90, we_refresh=True, now=0.0)
    assert timer.next_timer() == 45.0
    assert timer.handle_timer(45.0) is TimerAction.REFRESH
    # the refresh is sent once; if it never succeeds the session still expires
    assert timer.next_timer() == 60.0  # 90 - min(32, 30)
    assert timer.handle_timer(59.0) is None
    timer.refreshed(50.0, SessionExpires(1800, "uas"), we_refresh=False)
    assert timer.interval == 1800 and timer.next_timer() == 50.0 + 1800 - 32
    assert timer.handle_timer(1000.0) is None
