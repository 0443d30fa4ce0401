"""message-summary bodies (RFC 3842) and the notifier's subscription state (RFC 6665)."""

import pytest

from protocols.sip.mwi import MessageSummary, MwiError, Subscription, parse_message_summary


def test_summary_roundtrip() -> None:
    summary = MessageSummary(2, 8, 0, 0, "sip:1002@cluster.lab")
    body = summary.serialize()
    assert body == (b"Messages-Waiting: yes\r\nMessage-Account: sip:1002@cluster.lab\r\n"
                    b"Voice-Message: 2/8 (0/0)\r\n")
    assert parse_message_summary(body) == summary


def test_rfc3842_example_parses() -> None:
    body = (b"Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\n"
            b"Voice-Message: 4/8 (1/2)\r\n\r\nFax-Message: 1/0\r\n")
    assert parse_message_summary(body) == MessageSummary(4, 8, 1, 2,
                                                         "sip:alice@vmail.example.com")
    assert not parse_message_summary(b"Messages-Waiting: no\r\n").waiting


@pytest.mark.parametrize("body", [b"", b"Voice-Message: 1/0\r\n", b"Messages-Waiting: maybe",
                                  b"Messages-Waiting: yes\r\nVoice-Message: x\r\n", b"junk"])
def test_bad_summaries(body: bytes) -> None:
    with pytest.raises(MwiError):
        parse_message_summary(body)


def test_subscription_expires_by_the_clock() -> None:
    sub = Subscription(600, now=100.0)
    assert sub.state_header(100.0) == "active;expires=600"
    assert sub.next_timer() == 700.0
    sub.handle_timer(699.0)
    assert sub.active
    sub.handle_timer(700.0)
    assert not sub.active and sub.state_header(700.0) == "terminated;reason=timeout"
    assert sub.next_timer() is None


def test_refresh_clamps_and_unsubscribe() -> None:
    sub = Subscription(100000, now=0.0, max_expires=3600)
    assert sub.expires_at == 3600.0
    sub.refresh(120, now=50.0)
    assert sub.state_header(50.0) == "active;expires=120"
    sub.refresh(0, now=60.0)
    assert not sub.active
    with pytest.raises(MwiError) as info:
        sub.refresh(60, now=70.0)
    assert info.value.status == 481


def test_too_short_interval_is_423() -> None:
    with pytest.raises(MwiError) as info:
        Subscription(10, now=0.0, min_expires=60)
    assert info.value.status == 423
