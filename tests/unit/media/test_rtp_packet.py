"""RTP header parsing/serializing (RFC 3550 §5.1) without copying payloads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.media.errors import RtpError
from node.media.rtp import (
    RtpExtension,
    RtpPacket,
    is_rtcp,
    is_rtp,
    parse_rtp,
    peek_rtcp_ssrc,
    peek_ssrc,
)

# V=2 P=0 X=0 CC=0 | M=1 PT=0 | seq 0x1234 | ts 0x00000a00 | ssrc 0xdeadbeef | 160 bytes of 0xff (µ-law silence)
G711 = bytes.fromhex("8080 1234 00000a00 deadbeef") + b"\xff" * 160


def test_parse_g711_packet() -> None:
    p = parse_rtp(G711)
    assert (p.version, p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc) == (2, True, 0, 0x1234, 0xA00, 0xDEADBEEF)
    assert p.csrc == () and p.extension is None and p.padding == 0
    assert len(p.payload) == 160 and bytes(p.payload) == b"\xff" * 160


def test_payload_is_a_view_not_a_copy() -> None:
    buf = bytearray(G711)
    p = parse_rtp(buf)
    assert isinstance(p.payload, memoryview)
    assert p.payload.obj is buf
    buf[-1] = 0x00  # the view sees the change: no copy was made
    assert p.payload[-1] == 0x00


def test_csrc_extension_and_padding() -> None:
    data = (
        bytes.fromhex("b2 65 0001 00000002 00000003")  # V=2 P=1 X=1 CC=2 | M=0 PT=101
        + bytes.fromhex("00000011 00000022")  # CSRCs
        + bytes.fromhex("bede 0001 10ab0000")  # RFC 8285 one-byte extension, 1 word
        + bytes.fromhex("0a800190")  # telephone-event payload
        + bytes.fromhex("000003")  # 3 padding bytes
    )
    p = parse_rtp(data)
    assert (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc) == (101, False, 1, 2, 3)
    assert p.csrc == (0x11, 0x22)
    assert p.extension is not None and p.extension.profile == 0xBEDE
    assert bytes(p.extension.data) == bytes.fromhex("10ab0000")
    assert bytes(p.payload) == bytes.fromhex("0a800190")
    assert p.padding == 3
    assert p.to_bytes() == data
    assert p.size == len(data)


def test_serialize_builds_the_header_bits() -> None:
    p = RtpPacket(payload_type=8, sequence=65535, timestamp=2**32 - 1, ssrc=1, payload=b"abc", marker=True)
    assert p.to_bytes() == bytes.fromhex("8088 ffff ffffffff 00000001") + b"abc"


def test_pack_into_a_reused_buffer_at_an_offset() -> None:
    buf = bytearray(300)
    n = parse_rtp(G711).pack_into(buf, 10)
    assert n == len(G711)
    assert bytes(buf[10:10 + n]) == G711
    assert buf[:10] == bytearray(10)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "shorter"),
        (G711[:11], "shorter"),
        (bytes([0x40]) + G711[1:], "version"),  # V=1
        (bytes([0x8F]) + G711[1:12], "CSRC"),  # CC=15 but no CSRCs
        (bytes([0x90]) + G711[1:12] + b"\xbe\xde", "extension"),  # X=1, truncated extension header
        (bytes([0x90]) + G711[1:12] + bytes.fromhex("bede0004"), "extension"),  # length past the end
        (bytes([0xA0]) + G711[1:-1] + b"\x00", "padding"),  # P=1, count 0
        (bytes([0xA0]) + G711[1:-1] + b"\xff", "padding"),  # P=1, count past the header
    ],
)
def test_malformed_packets_raise_rtp_error(data: bytes, needle: str) -> None:
    with pytest.raises(RtpError) as exc:
        parse_rtp(data)
    assert needle.lower() in str(exc.value).lower()
    assert exc.value.status_hint == 400


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(128, 0, 0, 0),
        RtpPacket(0, 65536, 0, 0),
        RtpPacket(0, 0, 2**32, 0),
        RtpPacket(0, 0, 0, -1),
        RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, extension=RtpExtension(1, b"abc")),
        RtpPacket(0, 0, 0, 0, padding=256),
    ],
)
def test_out_of_range_fields_refuse_to_serialize(packet: RtpPacket) -> None:
    with pytest.raises(RtpError):
        packet.to_bytes()


def test_peeks_and_demux() -> None:
    assert peek_ssrc(G711) == 0xDEADBEEF
    assert peek_ssrc(G711[:11]) is None
    rtcp_sr = bytes.fromhex("80c8 0006 cafebabe") + bytes(20)
    assert is_rtcp(rtcp_sr) and not is_rtp(rtcp_sr)
    assert peek_rtcp_ssrc(rtcp_sr) == 0xCAFEBABE
    assert is_rtp(G711) and not is_rtcp(G711)
    stun = bytes.fromhex("0001 0000 2112a442") + bytes(12)
    assert not is_rtp(stun) and not is_rtcp(stun)


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none() | st.builds(RtpExtension, st.integers(0, 0xFFFF), st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])),
    padding=st.integers(0, 255),
)


@settings(max_examples=500)
@given(packets)
def test_serialize_then_parse_round_trips(p: RtpPacket) -> None:
    data = p.to_bytes()
    assert len(data) == p.size
    q = parse_rtp(data)
    assert q == p
    assert q.to_bytes() == data


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_datagrams_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        p = parse_rtp(data)
    except RtpError:
        return
    # whatever parses re-serializes to the very same bytes (padding content aside)
    out = p.to_bytes()
    if p.padding:
        assert out[: -p.padding] == data[: -p.padding] and out[-1] == data[-1]
    else:
        assert out == data
