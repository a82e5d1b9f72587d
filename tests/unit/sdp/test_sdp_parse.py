"""Parsing and serializing SDP from real peers (samples/), and rejecting bad SDP clearly.

baresip_* and sipp_* samples were captured from baresip 1.0.0 and SIPp 3.6.1 on loopback;
the Linphone, Polycom and Cisco samples are written in those phones' usual shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.sdp import (
    Attribute,
    Connection,
    Media,
    Origin,
    RtpMap,
    SdpError,
    SdpNotAcceptable,
    SessionDescription,
    parse,
)
from node.sip.errors import SipError

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.sdp")))
def test_every_sample_round_trips_byte_for_byte(name: str) -> None:
    raw = sample(name)
    assert parse(raw).to_bytes() == raw


def test_baresip_offer() -> None:
    sd = parse(sample("baresip_offer.sdp"))
    assert sd.origin == Origin("-", "1324595771", 2076275274, "192.0.2.2", "IP4", "IN")
    assert sd.connection == Connection("192.0.2.2", "IP4")
    assert sd.timing == ("0 0",)
    assert sd.attribute("tool") == "baresip 1.0.0"
    (m,) = sd.media
    assert (m.type, m.port, m.proto) == ("audio", 12098, "RTP/AVP")
    assert m.formats == ("0", "8", "96", "9", "101")
    assert m.payload_types == (0, 8, 96, 9, 101)
    assert m.rtpmap(96) == RtpMap(96, "opus", 48000, 2)
    assert m.rtpmap(0) == RtpMap(0, "PCMU", 8000)
    assert m.fmtp(101) == "0-15"
    assert m.fmtp(96) == "stereo=1;sprop-stereo=1"
    assert m.direction == "sendrecv"
    assert m.ptime == 20
    assert m.has_attribute("rtcp-rsize")
    assert m.attribute("rtcp-rsize") == ""
    assert m.attribute("ssrc") == "2917483819 cname:sip:alice@127.0.0.1"


def test_baresip_ipv6_offer() -> None:
    sd = parse(sample("baresip_offer_ipv6.sdp"))
    assert sd.origin.addrtype == "IP6"
    assert sd.connection == Connection("fd00::2", "IP6")
    assert sd.media[0].port == 12066


def test_sipp_default_offer() -> None:
    sd = parse(sample("sipp_default_offer.sdp"))
    assert sd.origin.username == "user1"
    (m,) = sd.media
    assert m.formats == ("0",)
    assert m.rtpmap(0) == RtpMap(0, "PCMU", 8000)
    assert m.direction is None
    assert sd.media_direction(m) == "sendrecv"  # RFC 8866 §6.7 default


def test_sipp_ipv6_answer_with_bracketed_origin_address() -> None:
    # SIPp writes o=... IN IP6 [::1]; harmless for us, so accepted and kept as sent
    sd = parse(sample("sipp_default_answer_ipv6.sdp"))
    assert sd.origin.address == "[::1]"
    assert sd.connection == Connection("::1", "IP6")


def test_cisco_offer_has_connection_only_in_media() -> None:
    sd = parse(sample("cisco_offer.sdp"))
    assert sd.connection is None
    m = sd.media[0]
    assert m.connection == Connection("10.10.10.21")
    assert sd.media_connection(m) == Connection("10.10.10.21")
    assert sd.origin.sess_version == 0


def test_cisco_hold_with_zero_address() -> None:
    sd = parse(sample("cisco_hold_zero_address.sdp"))
    m = sd.media[0]
    assert m.connection is not None and m.connection.unspecified
    assert m.direction == "sendonly"


def test_polycom_direction_at_session_level() -> None:
    offer = parse(sample("polycom_vvx_offer.sdp"))
    hold = parse(sample("polycom_vvx_hold.sdp"))
    assert offer.media[0].direction is None
    assert offer.media_direction(offer.media[0]) == "sendrecv"
    assert hold.media_direction(hold.media[0]) == "sendonly"
    assert offer.other == (("b", "AS:512"),)
    assert offer.media[0].rtpmap(102) == RtpMap(102, "G7221", 16000)
    # a static payload type without rtpmap still resolves (RFC 3551 §6)
    assert parse(sample("polycom_vvx_offer.sdp")).media[0].rtpmap(18) == RtpMap(18, "G729", 8000)


def test_linphone_offer_two_streams_and_three_event_clocks() -> None:
    sd = parse(sample("linphone_offer_ice_video.sdp"))
    audio, video = sd.media
    assert (audio.type, video.type) == ("audio", "video")
    assert [audio.rtpmap(pt).clock_rate for pt in (101, 99, 100)] == [48000, 16000, 8000]
    assert audio.attribute("rtcp") == "7079"
    assert sd.attribute("ice-ufrag") == "e9b9d2f5"
    assert video.rtpmap(97) == RtpMap(97, "H264", 90000)
    assert audio.rtpmap(97) == RtpMap(97, "speex", 16000)  # payload types are per m-line


def test_bare_lf_and_blank_lines_are_accepted_and_written_with_crlf() -> None:
    raw = b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n\n"
    sd = parse(raw)
    assert sd.media[0].port == 4000
    assert sd.to_bytes() == raw.replace(b"\n\n", b"\n").replace(b"\n", b"\r\n")


def test_unknown_and_unmodelled_lines_are_kept_in_place() -> None:
    raw = (
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=call\r\ni=session info\r\nu=http://example.com/\r\n"
        b"e=ops@example.com\r\np=+1 555 0100\r\nc=IN IP4 10.0.0.1\r\nb=CT:128\r\nt=0 0\r\nr=604800 3600 0\r\n"
        b"z=2882844526 -1h\r\nk=prompt\r\ny=0123456789\r\na=group:BUNDLE 0\r\n"
        b"m=audio 4000/2 RTP/AVP 0\r\ni=media info\r\nc=IN IP4 10.0.0.1/127\r\nb=AS:64\r\nk=prompt\r\n"
        b"x=vendor thing\r\na=mid:0\r\n"
    )
    sd = parse(raw)
    assert sd.to_bytes() == raw
    assert ("y", "0123456789") in sd.other
    assert sd.media[0].port_count == 2
    assert sd.media[0].connection.host == "10.0.0.1"
    assert ("x", "vendor thing") in sd.media[0].other


def test_non_utf8_bytes_survive_a_round_trip() -> None:
    raw = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=caf\xe9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    assert parse(raw).to_bytes() == raw


def test_rejected_stream_without_formats_is_tolerated() -> None:
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP\r\n")
    assert sd.media[0].formats == ()


BASE = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ("", 400, "empty"),
        ("   \r\n", 400, "empty"),
        ("o=- 1 1 IN IP4 10.0.0.1\r\n", 400, "v="),
        ("v=1\r\no=- 1 1 IN IP4 10.0.0.1\r\n", 400, "version"),
        ("v=0\r\ns=-\r\n", 400, "o="),
        (BASE + "garbage\r\n", 400, "malformed"),
        (BASE + "A=x\r\n", 400, "malformed"),
        ("v=0\r\no=- 1 1 IN IP4\r\n", 400, "o="),
        ("v=0\r\no=- abc 1 IN IP4 10.0.0.1\r\n", 400, "non-numeric"),
        ("v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\no=- 1 1 IN IP4 1.1.1.1\r\n", 400, "o="),
        (BASE + "c=IN IP4 10.0.0.2\r\n", 400, "c="),
        ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nc=IN IP4\r\n", 400, "c="),
        ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nc=ATM NSAP 47.0091\r\n", 488, "network type"),
        ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nc=IN IPX 10.0.0.1\r\n", 488, "address type"),
        (BASE + "m=audio 70000 RTP/AVP 0\r\n", 400, "port"),
        (BASE + "m=audio -1 RTP/AVP 0\r\n", 400, "port"),
        (BASE + "m=audio 4000/0 RTP/AVP 0\r\n", 400, "port count"),
        (BASE + "m=audio 4000 RTP/AVP\r\n", 400, "formats"),
        (BASE + "m=audio 4000\r\n", 400, "m="),
        (BASE + "m=audio 4000 RTP/AVP 0\r\nc=IN IP4 1.1.1.1\r\nc=IN IP4 1.1.1.2\r\n", 488, "c="),
        (BASE + "m=audio 4000 RTP/AVP 0\r\no=- 1 1 IN IP4 1.1.1.1\r\n", 400, "media section"),
        (BASE + "a=\r\n", 400, "a="),
        (BASE + "a=bad name:x\r\n", 400, "a="),
    ],
)
def test_bad_sdp_raises_with_status_hint(body: str, status: int, needle: str) -> None:
    with pytest.raises(SdpError) as exc:
        parse(body.encode())
    assert exc.value.status_hint == status
    assert needle.lower() in str(exc.value).lower()
    # the B2BUA catches SipError around every SDP operation
    assert isinstance(exc.value, SipError)
    assert isinstance(exc.value, SdpNotAcceptable) == (status == 488)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_raise_sdp_error(data: bytes) -> None:
    try:
        sd = parse(data)
    except SdpError:
        return
    assert parse(sd.to_bytes()) == sd


@settings(max_examples=300)
@given(st.lists(st.sampled_from([
    "v=0", "o=- 1 2 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0", "a=sendrecv", "b=AS:64",
    "m=audio 4000 RTP/AVP 0 8", "m=video 0 RTP/AVP 96", "a=rtpmap:0 PCMU/8000", "a=rtcp:4001", "i=x",
    "c=IN IP6 ::1", "k=prompt", "y=1", "r=1 1 0", "a=ptime:20", "m=audio 70000 RTP/AVP 0", "junk",
]), max_size=14))
def test_line_soup_parses_or_raises_sdp_error(lines: list[str]) -> None:
    try:
        sd = parse("\r\n".join(lines))
    except SdpError:
        return
    assert parse(sd.to_bytes()) == sd


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._", min_size=1, max_size=8)
_attr = st.builds(Attribute, _token, st.none() | st.text(alphabet="abc 0123456789/=;:-", max_size=12).map(str.strip))
_conn = st.builds(Connection, st.sampled_from(["10.0.0.1", "192.0.2.7", "::1", "2001:db8::5", "0.0.0.0"]))
_media = st.builds(
    Media,
    st.sampled_from(["audio", "video", "application"]),
    st.integers(0, 65535),
    st.sampled_from(["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF"]),
    st.lists(st.integers(0, 127).map(str), min_size=1, max_size=5).map(tuple),
    st.none() | st.integers(1, 4),
    st.none() | _conn,
    st.lists(_attr, max_size=4).map(tuple),
    # in RFC 8866 order (i= b= k=), the only order the wire form has
    st.lists(st.tuples(st.sampled_from("ibk"), _token), max_size=2).map(lambda o: tuple(sorted(o, key=lambda kv: "ibk".index(kv[0])))),
)


@settings(max_examples=200)
@given(
    st.builds(
        SessionDescription,
        st.builds(Origin, _token, st.integers(0, 2**63).map(str), st.integers(0, 2**40), st.just("10.0.0.1")),
        _token,
        st.none() | _conn,
        st.just(("0 0",)),
        st.lists(_attr, max_size=4).map(tuple),
        st.lists(_media, max_size=3).map(tuple),
    )
)
def test_model_round_trips_through_the_wire(sd: SessionDescription) -> None:
    assert parse(sd.to_bytes()) == sd
