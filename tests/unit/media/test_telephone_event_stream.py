"""RFC 4733 streams: one digit per key press whatever is lost, repeated or reordered."""

from __future__ import annotations

import pytest

from node.media.dtmf import TelephoneEventReceiver, parse_telephone_event, telephone_event_payloads
from node.media.errors import TelephoneEventError


def _press(digit: str, ms: int = 100) -> list:
    return [parse_telephone_event(p) for p, _ in telephone_event_payloads(digit, ms)]


def test_sender_shape() -> None:
    pkts = telephone_event_payloads("7", 100)
    evs = [parse_telephone_event(p) for p, _ in pkts]
    assert [m for _, m in pkts] == [True, False, False, False, False, False, False]
    assert [e.duration for e in evs] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in evs] == [False] * 4 + [True] * 3
    assert all(e.digit == "7" for e in evs)
    with pytest.raises(TelephoneEventError):
        telephone_event_payloads("7", 30)
    with pytest.raises(TelephoneEventError):
        telephone_event_payloads("x", 100)


def test_one_digit_per_press_despite_end_repeats() -> None:
    rx = TelephoneEventReceiver()
    got = [rx.feed(1000, e) for e in _press("1")] + [rx.feed(2600, e) for e in _press("1")]
    assert [d for d in got if d] == ["1", "1"]
    assert rx.events == 2 and rx.duplicates == 12


def test_lost_start_packets_still_give_the_digit() -> None:
    rx = TelephoneEventReceiver()
    evs = _press("#")
    assert [rx.feed(5, e) for e in evs[-3:]] == ["#", None, None]


def test_late_end_retransmission_after_next_press_is_not_a_new_digit() -> None:
    rx = TelephoneEventReceiver()
    a, b = _press("2"), _press("3")
    out = [rx.feed(100, e) for e in a[:-1]] + [rx.feed(900, e) for e in b[:2]] + [rx.feed(100, a[-1])]
    assert [d for d in out if d] == ["2", "3"]


def test_flash_event_is_not_a_digit() -> None:
    from node.media.dtmf import TelephoneEvent

    rx = TelephoneEventReceiver()
    assert rx.feed(1, TelephoneEvent(16)) is None and rx.events == 1
