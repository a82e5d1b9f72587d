"""The cheaper paths of the SDP core must give exactly what the general ones give."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from node.sdp import LocalOrigin, SdpError, parse, rewrite_for_relay
from node.sdp.model import is_unspecified

SAMPLES = Path(__file__).parent / "samples"
RELAY = "203.0.113.1"


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.sdp")))
def test_stamp_bytes_is_stamp_then_to_bytes(name: str) -> None:
    body = (SAMPLES / name).read_bytes()
    sd = rewrite_for_relay(body, RELAY, 30000)
    a, b = LocalOrigin(sess_id=7, version=1), LocalOrigin(sess_id=7, version=1)
    for _ in range(2):  # the second round is a repeat: neither bumps the version
        assert a.stamp_bytes(sd, RELAY) == b.stamp(sd, RELAY).to_bytes()
        assert a.version == b.version == 1


def test_stamp_bytes_bumps_the_version_only_when_the_content_changes() -> None:
    leg = LocalOrigin(sess_id=99, version=1)
    offer = rewrite_for_relay((SAMPLES / "sipp_default_offer.sdp").read_bytes(), RELAY, 30000)
    first = parse(leg.stamp_bytes(offer, RELAY))
    assert (first.origin.sess_id, first.origin.sess_version, first.origin.address) == ("99", 1, RELAY)
    assert parse(leg.stamp_bytes(offer, RELAY)).origin.sess_version == 1
    moved = rewrite_for_relay(offer, RELAY, 30002)
    assert parse(leg.stamp_bytes(moved, RELAY)).origin.sess_version == 2
    # stamp and stamp_bytes share the state of the leg
    assert leg.stamp(moved, RELAY).origin.sess_version == 2
    assert leg.stamp(offer, RELAY).origin.sess_version == 3


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "0::0", "::0", "0:0:0:0:0:0:0:0", "::%eth0", "1.2.3.4", "::1", "::ffff:0.0.0.0",
     "0.0.0.1", "10.0.0.0", "example.com", "00.0.0.0", "", "....", "0", "::ffff:0:0", "fe80::1%eth0"],
)
def test_is_unspecified_agrees_with_ipaddress(host: str) -> None:
    try:
        expected = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        expected = False
    assert is_unspecified(host) is expected


def test_blank_lines_and_bare_lf_parse_as_before() -> None:
    body = b"v=0\n\r\no=- 1 1 IN IP4 192.0.2.1\r\n  \ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n\n"
    sd = parse(body)
    assert sd.media[0].port == 4000 and sd.connection is not None and sd.connection.host == "192.0.2.1"
    with pytest.raises(SdpError):
        parse(b"v=0\r\n o=- 1 1 IN IP4 192.0.2.1\r\n")  # a line may not start with a space
    with pytest.raises(SdpError):
        parse(b"\r\n \r\n")


def test_codec_attributes_are_shared_between_parses_and_per_call_ones_are_not() -> None:
    from node.sdp import parser

    body = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
            b"m=audio 4000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
            b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:%s\r\n")
    one = parse(body % b"KEY1").media[0].attributes
    two = parse(body % b"KEY2").media[0].attributes
    assert one == two[:2] + one[2:] and one[2] != two[2]
    assert one[0] is two[0] and one[1] is two[1]  # the same immutable objects
    assert one[2] is not two[2] and "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY1" not in parser._shared
    assert parse(body % b"K").connection is parse(body % b"L").connection  # a phone's c= too
    # a flood of distinct codec lines cannot grow the table without bound
    for i in range(parser._SHARED_MAX + 50):
        parse(body.replace(b"PCMU/8000", b"X%d/8000" % i) % b"K")
    assert len(parser._shared) <= parser._SHARED_MAX
    for i in range(parser._SHARED_MAX + 50):
        parse(body.replace(b"192.0.2.1", b"10.0.%d.%d" % divmod(i, 256)) % b"K")
    assert len(parser._connections) <= parser._SHARED_MAX
    with pytest.raises(SdpError):  # what is shared was checked once, what is not is checked each time
        parse(body.replace(b"a=sendrecv", b"a=bad name") % b"K")
