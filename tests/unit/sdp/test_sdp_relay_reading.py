"""``read_for_relay`` (node/sdp/anchoring.py) answers from the memo of a body's shape: for
every body it must give what the full path gives (``parse`` + ``media_address`` +
``rewrite_for_relay``), refuse what ``parse`` refuses, and never let one body's address or
port leak into another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.sdp import LocalOrigin, SdpError, media_address, parse, rewrite_for_relay
from node.sdp import anchoring
from node.sdp.anchoring import read_for_relay

SAMPLES = Path(__file__).parent / "samples"
RELAY = "203.0.113.1"


def _sdp(host: str, port: int, *, version: str = "1", extra: str = "", mline: str = "") -> bytes:
    ip = "IP6" if ":" in host else "IP4"
    return (
        f"v=0\r\no=- 1 {version} IN {ip} {host}\r\ns=-\r\nc=IN {ip} {host}\r\nt=0 0\r\n"
        f"{mline or f'm=audio {port} RTP/AVP 0 8 101'}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n{extra}a=sendrecv\r\n"
    ).encode()


BODIES = [
    _sdp("10.0.0.1", 4000),
    _sdp("10.0.0.2", 4002),  # same shape, other address and port
    _sdp("10.0.0.2", 4002, version="2"),
    _sdp("0.0.0.0", 4004),  # hold: another shape
    _sdp("2001:db8::5", 6000),
    _sdp("10.0.0.3", 0),  # rejected stream: no relayed stream
    _sdp("10.0.0.3", 5000, mline="m=audio 5000/2 RTP/AVP 0"),
    _sdp("10.0.0.3", 5000, extra="a=rtcp:5009 IN IP4 10.0.0.9\r\n"),  # a=rtcp: not memoised
    _sdp("10.0.0.3", 5000, extra="a=candidate:1 1 UDP 2130706431 10.0.0.3 5000 typ host\r\n"),
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.4\r\ns=-\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\nc=IN IP4 10.0.0.4\r\n"
    b"m=video 7002 RTP/AVP 96\r\nc=IN IP4 10.0.0.5\r\na=rtpmap:96 H264/90000\r\n",
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.4\r\ns=-\r\nt=0 0\r\nm=video 7002 RTP/AVP 96\r\nc=IN IP4 10.0.0.5\r\n"
    b"m=audio 7000 RTP/AVP 0\r\nc=IN IP4 10.0.0.6\r\n",
    b"v=0\no=- 1 1 IN IP4 10.0.0.7\ns=-\nc=IN IP4 10.0.0.7\nt=0 0\nm=audio 7000 RTP/AVP 0\n",  # bare LF
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0",  # no c=, no final CRLF
] + [p.read_bytes() for p in sorted(SAMPLES.glob("*.sdp"))]


def _full(body: bytes, port: int) -> tuple:
    sd = parse(body)
    return media_address(sd), LocalOrigin(sess_id=7).stamp_bytes(rewrite_for_relay(sd, RELAY, port), RELAY)


def _fast(body: bytes, port: int) -> tuple:
    r = read_for_relay(body)
    return r.address, LocalOrigin(sess_id=7).stamp_lines(*r.render(RELAY, port), RELAY)


@pytest.mark.parametrize("round_", [1, 2], ids=["first-seen", "memoised"])
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_the_reading_is_what_the_full_path_gives(body: bytes, round_: int) -> None:
    assert _fast(body, 30000 + 2 * round_) == _full(body, 30000 + 2 * round_)


def test_bodies_of_one_shape_share_the_memo_but_not_their_addresses() -> None:
    a, b = read_for_relay(_sdp("10.1.0.1", 4100)), read_for_relay(_sdp("10.1.0.2", 4102))
    assert a.shape is not None and a.shape is b.shape
    assert (a.address.host, a.address.port, a.address.rtcp_port) == ("10.1.0.1", 4100, 4101)
    assert (b.address.host, b.address.port, b.address.rtcp_port) == ("10.1.0.2", 4102, 4103)
    assert read_for_relay(_sdp("0.0.0.0", 4100)).shape is not a.shape  # hold is another shape
    held = read_for_relay(_sdp("0.0.0.0", 4100))
    assert held.address.host == "0.0.0.0"
    assert b"c=IN IP4 0.0.0.0" in LocalOrigin().stamp_lines(*held.render(RELAY, 30000), RELAY)


def test_per_call_lines_are_not_memoised() -> None:
    r = read_for_relay(_sdp("10.0.0.3", 5000, extra="a=rtcp:5009\r\n"))
    assert r.shape is None and r.address.rtcp_port == 5009


@pytest.mark.parametrize(
    "bad",
    [
        _sdp("10.0.0.1", 4000).replace(b"o=- 1 1 IN", b"o=- x 1 IN"),  # non-numeric session id
        _sdp("10.0.0.1", 4000).replace(b"o=- 1 1 IN IP4 10.0.0.1", b"o=- 1 1 IN IP4"),  # 5 fields
        _sdp("10.0.0.1", 4000).replace(b"c=IN IP4 10.0.0.1", b"c=IN IP4 10.0.0.1 extra"),
        _sdp("10.0.0.1", 4000).replace(b"c=IN IP4 10.0.0.1", b"c=IN IP4"),
        _sdp("10.0.0.1", 99999),
        _sdp("10.0.0.1", 4000).replace(b"m=audio 4000", b"m=audio 4x00"),
        _sdp("10.0.0.1", 4000).replace(b"c=IN", b"cXIN"),
        _sdp("10.0.0.1", 4000).replace(b"m=audio", b"mXaudio"),
        _sdp("10.0.0.1", 4000).replace(b"o=-", b"oX-"),
        _sdp("10.0.0.1", 4000).replace(b"c=IN IP4", b"c=XX IP4"),
        b"",
    ],
)
def test_what_parse_refuses_is_refused_even_when_its_shape_is_known(bad: bytes) -> None:
    read_for_relay(_sdp("10.0.0.1", 4000))  # the good shape is known
    with pytest.raises(SdpError):
        parse(bad)
    with pytest.raises(SdpError):
        read_for_relay(bad)


def test_the_memo_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(anchoring, "SHAPES_MAX", 4)
    monkeypatch.setattr(anchoring, "_shapes", {})
    for i in range(20):
        read_for_relay(_sdp("10.0.0.1", 4000, extra=f"a=x-unique:{i}\r\n"))
        assert len(anchoring._shapes) <= 4
