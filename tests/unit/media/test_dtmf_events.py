"""RFC 4733 telephone-event payloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.media.dtmf import DTMF_EVENTS, TelephoneEvent, parse_telephone_event
from node.media.errors import TelephoneEventError


def test_parse_end_of_digit_5() -> None:
    # event 5, E=1 R=0 volume 10, duration 1600 (200 ms at 8 kHz)
    ev = parse_telephone_event(bytes.fromhex("05 8a 0640"))
    assert ev == TelephoneEvent(5, end=True, volume=10, duration=1600)
    assert ev.digit == "5"


def test_reserved_bit_and_trailing_bytes_are_ignored() -> None:
    ev = parse_telephone_event(memoryview(bytes.fromhex("0b 4a 00a0 ffff")))
    assert ev == TelephoneEvent(11, end=False, volume=10, duration=160)
    assert ev.digit == "#"


def test_build() -> None:
    assert TelephoneEvent.for_digit("*", end=True, volume=7, duration=800).to_bytes() == bytes.fromhex("0a 87 0320")
    assert TelephoneEvent.for_digit("d").event == 15
    assert TelephoneEvent(16).digit is None  # flash is not a digit


def test_pack_into_offset() -> None:
    buf = bytearray(16)
    assert TelephoneEvent(1, duration=0xFFFF).pack_into(buf, 12) == 4
    assert bytes(buf[12:]) == bytes.fromhex("01 0a ffff")


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_short_payload_is_an_error(payload: bytes) -> None:
    with pytest.raises(TelephoneEventError):
        parse_telephone_event(payload)


@pytest.mark.parametrize("ev", [TelephoneEvent(256), TelephoneEvent(1, volume=64), TelephoneEvent(1, duration=70000)])
def test_out_of_range_refuses_to_build(ev: TelephoneEvent) -> None:
    with pytest.raises(TelephoneEventError):
        ev.to_bytes()


def test_unknown_digit() -> None:
    with pytest.raises(TelephoneEventError):
        TelephoneEvent.for_digit("x")


def test_digit_table_is_rfc4733() -> None:
    assert [DTMF_EVENTS[d] for d in "0123456789*#ABCD"] == list(range(16))


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_round_trip(event: int, end: bool, volume: int, duration: int) -> None:
    ev = TelephoneEvent(event, end, volume, duration)
    assert parse_telephone_event(ev.to_bytes()) == ev
