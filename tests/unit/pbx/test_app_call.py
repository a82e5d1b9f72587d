"""SIP INFO key presses (application/dtmf-relay, application/dtmf) for applications."""

from __future__ import annotations

from node.pbx.app_call import _info_digit
from node.sip.message import Request


def _info(ctype: str, body: bytes) -> Request:
    return Request("INFO", "sip:800@pbx.example", [("Content-Type", ctype)], body)


def test_dtmf_relay_and_dtmf_bodies():
    assert _info_digit(_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")) == "5"
    assert _info_digit(_info("application/dtmf-relay", b"Signal= #\r\n")) == "#"
    assert _info_digit(_info("Application/DTMF-Relay", b"signal=a\r\n")) == "A"
    assert _info_digit(_info("application/dtmf", b"7")) == "7"


def test_other_infos_are_not_digits():
    assert _info_digit(_info("application/dtmf-relay", b"Signal=11\r\n")) is None
    assert _info_digit(_info("application/dtmf-relay", b"Duration=160\r\n")) is None
    assert _info_digit(_info("application/media_control+xml", b"<x/>")) is None
    assert _info_digit(_info("application/dtmf", b"\xff\xfe")) is None
