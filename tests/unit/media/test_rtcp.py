"""RTCP core (node/media/rtcp.py): packets round-trip, malformed input is a clear RtcpError and
nothing else, and the receiver statistics follow RFC 3550 A.1/A.3/A.8 on hand-computed cases."""

from __future__ import annotations

import random

import pytest

from node.media.errors import MediaError
from node.media.rtcp import (
    BYE, RR, SDES, SR, Bye, ReceiverReport, ReceptionStats, ReportBlock, RtcpError, RtcpSession, Sdes,
    SenderReport, UnknownRtcp, compound, ntp_middle, ntp_timestamp, parse_rtcp, rtcp_interval,
)


def _sample() -> bytes:
    blk = ReportBlock(0xCAFEBABE, fraction_lost=64, cumulative_lost=-3, highest_seq=70_000, jitter=12,
                      lsr=0x12345678, dlsr=65536)
    return compound(
        SenderReport(0x11223344, ntp_timestamp(1_700_000_000.25), 123456, 50, 8000, (blk,)),
        Sdes(((0x11223344, ((1, b"abc@node"), (6, b"hivepbx"))), (7, ((1, b"x"),)))),
        Bye((0x11223344, 7), "call ended"),
    )


def test_compound_round_trip():
    data = _sample()
    assert len(data) % 4 == 0
    sr, sdes, bye = parse_rtcp(data)
    assert isinstance(sr, SenderReport) and sr.ssrc == 0x11223344
    assert (sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (123456, 50, 8000)
    assert sr.ntp >> 32 == 1_700_000_000 + 2208988800 and abs((sr.ntp & 0xFFFFFFFF) / 2**32 - 0.25) < 1e-9
    assert sr.reports == (ReportBlock(0xCAFEBABE, 64, -3, 70_000, 12, 0x12345678, 65536),)
    assert sdes.cname_of(0x11223344) == "abc@node" and sdes.cname_of(7) == "x" and sdes.cname_of(8) is None
    assert bye == Bye((0x11223344, 7), "call ended")
    assert compound(sr, sdes, bye) == data  # re-serialises to the same bytes
    rr = ReceiverReport(5, (ReportBlock(6, 1, 2, 3, 4, 5, 6), ReportBlock(7)))
    assert parse_rtcp(rr.to_bytes()) == [rr]


def test_header_fields_on_the_wire():
    data = ReceiverReport(0xAABBCCDD).to_bytes()
    assert data == bytes([0x80, RR, 0, 1]) + bytes.fromhex("AABBCCDD")  # V=2, RC=0, length 1 word
    sr = SenderReport(1, 0, 0, 0, 0, (ReportBlock(2),)).to_bytes()
    assert (sr[0], sr[1], int.from_bytes(sr[2:4], "big")) == (0x81, SR, 12)  # 6 + 6 words after the first
    # SDES: "x" -> ssrc, type 1, len 1, 'x', END, padded to a word
    assert Sdes.cname(9, "x").to_bytes() == bytes([0x81, SDES, 0, 2]) + (9).to_bytes(4, "big") + b"\x01\x01x\x00"
    assert Bye((3,)).to_bytes() == bytes([0x81, BYE, 0, 1]) + (3).to_bytes(4, "big")
    # cumulative lost is signed 24 bit and clamped
    assert ReportBlock(1, 0, -1).pack()[4:8] == b"\x00\xff\xff\xff"
    assert ReportBlock(1, 0, 10**9).pack()[4:8] == b"\x00\x7f\xff\xff"


def test_padding_and_unknown_types_are_handled():
    app = UnknownRtcp(204, 1, b"name" + b"data")
    body = ReceiverReport(1).to_bytes() + app.to_bytes()
    assert parse_rtcp(body)[1] == app
    assert parse_rtcp(app.to_bytes()) == [app]  # a lone APP (reduced-size, RFC 5506), as baresip sends
    # padding on the last packet: P bit, 4 octets whose last one counts them
    rr = bytearray(ReceiverReport(1).to_bytes() + b"\0\0\0\x04")
    rr[0] |= 0x20
    rr[3] = 2
    assert parse_rtcp(bytes(rr)) == [ReceiverReport(1)]


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than an RTCP report"),
    (b"\x80\xc9\x00", "shorter"),
    (bytes([0x40, RR, 0, 1, 0, 0, 0, 1]), "version 1"),
    (bytes([0x80, 100, 0, 1, 0, 0, 0, 1]), "type 100 is not RTCP"),
    (bytes([0x80, RR, 0, 5, 0, 0, 0, 1]), "claims 24 bytes"),
    (bytes([0x81, RR, 0, 1, 0, 0, 0, 1]), "receiver report with 1 blocks"),
    (bytes([0x81, SR, 0, 1, 0, 0, 0, 1]), "sender report"),
    (ReceiverReport(1).to_bytes() + b"\x80\xca", "stray bytes"),
    (ReceiverReport(1).to_bytes() + bytes([0x81, SDES, 0, 2, 0, 0, 0, 1, 1, 9, 97, 98]), "runs past"),
    (ReceiverReport(1).to_bytes() + bytes([0x81, SDES, 0, 2, 0, 0, 0, 1, 1, 2, 97, 98]), "no END"),
    (ReceiverReport(1).to_bytes() + bytes([0x82, BYE, 0, 1, 0, 0, 0, 1]), "BYE of 2 sources"),
    (ReceiverReport(1).to_bytes() + bytes([0x81, BYE, 0, 2, 0, 0, 0, 1, 9, 97, 0, 0]), "reason runs past"),
    (bytes([0xA0, RR, 0, 1, 0, 0, 0, 0]), "bad RTCP padding"),
    (bytes([0xA0, RR, 0, 1, 0, 0, 0, 1]) + ReceiverReport(2).to_bytes(), "only in the last packet"),
])
def test_malformed_packets_get_a_clear_error(data, message):
    with pytest.raises(RtcpError, match=message):
        parse_rtcp(data)


def test_fuzzed_input_never_raises_anything_but_rtcp_error():
    rng = random.Random(3550)
    good = _sample()
    cases = [good[:n] for n in range(len(good))]
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(bytes(b))
        cases.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 80))))
    parsed = 0
    for data in cases:
        try:
            parse_rtcp(data)
            parsed += 1
        except RtcpError as e:
            assert isinstance(e, MediaError) and str(e)
    assert parsed > 100  # many mutations leave a valid packet (a changed count, a value)


def test_session_counts_a_malformed_packet_and_raises_clearly():
    s = RtcpSession(1, "me", 0.0)
    with pytest.raises(RtcpError):
        s.receive(b"\x80\xc9\x00\x07junk", 1.0, 1.0)
    assert s.errors == 1 and s.received_reports == 0


# ------------------------------------------------------------------ receiver statistics
def test_jitter_follows_rfc3550_a8_on_a_hand_computed_case():
    """20 ms packets (160 ticks at 8 kHz). After the 2-packet probation (A.1) the first valid
    packet only sets the transit; then transit runs 8, 0, 16, 0 (arrival - timestamp):
       D = |0 - 8| = 8    J = 0 + (8 - 0) / 16            = 0.5
       D = |16 - 0| = 16  J = 0.5 + (16 - 0.5) / 16       = 1.46875
       D = |0 - 16| = 16  J = 1.46875 + (16 - 1.46875)/16 = 2.376953125"""
    s = ReceptionStats()
    arrivals = [0, 160 + 8, 320, 480 + 16, 640]
    for i, at in enumerate(arrivals):
        s.update(0xABC, 100 + i, 1000 + 160 * i, 1000 + at)
    assert s.jitter == pytest.approx(2.376953125)
    blk = s.block(0.0)
    assert blk.jitter == 2 and blk.cumulative_lost == 0 and blk.fraction_lost == 0
    assert s.jitter_seconds == pytest.approx(2.376953125 / 8000)


def test_loss_fraction_and_extended_sequence_across_a_wrap():
    s = ReceptionStats()
    seqs = [65530, 65531, 65532, 65534, 65535, 1, 2, 3]  # 65533 and 0 lost, wrap in between
    for seq in seqs:
        s.update(7, seq, seq * 160, seq * 160)
    # probation: 65530 is not counted; base is 65531
    assert s.extended_max == 65536 + 3 and s.expected == 65539 - 65531 + 1 == 9
    assert s.received == 7 and s.lost == 2
    blk = s.block(1.0)
    assert (blk.ssrc, blk.highest_seq, blk.cumulative_lost) == (7, 65539, 2)
    assert blk.fraction_lost == 2 * 256 // 9
    # the next interval: 4 expected, 3 received -> 1/4 lost; cumulative 3
    for seq in (4, 5, 7):
        s.update(7, seq, seq * 160, seq * 160)
    blk = s.block(2.0)
    assert (blk.fraction_lost, blk.cumulative_lost, blk.highest_seq) == (64, 3, 65543)
    # duplicates make cumulative lost go down (RFC 3550 §6.4.1), fraction is then 0
    s.update(7, 7, 7 * 160, 7 * 160)
    s.update(7, 7, 7 * 160, 7 * 160)
    blk = s.block(3.0)
    assert (blk.fraction_lost, blk.cumulative_lost) == (0, 1)


def test_a_new_ssrc_starts_over_and_a_jump_needs_confirming():
    s = ReceptionStats()
    for seq in range(10, 20):
        s.update(1, seq, 0, 0)
    assert s.received == 9
    assert not s.update(1, 40_000, 0, 0)  # a wild jump: held until the next one confirms it
    assert s.update(1, 40_001, 0, 0) and s.received == 1 and s.lost == 0
    for seq in range(5, 8):
        s.update(2, seq, 0, 0)
    assert (s.ssrc, s.received, s.lost) == (2, 2, 0)


# ------------------------------------------------------------------ the session
def test_lsr_dlsr_and_round_trip_time():
    node = RtcpSession(0x1000, "node", now=0.0, rng=random.Random(1))
    peer = RtcpSession(0x2000, "peer", now=0.0, rng=random.Random(2))
    for i in range(50):  # each hears the other's RTP
        node.rx.update(0x2000, i, i * 160, i * 160)
        peer.rx.update(0x1000, 300 + i, i * 160, i * 160)
    wall = 1_800_000_000.0
    sr = node.report(now=1.0, wall=wall, packets_sent=50, octets_sent=8000, rtp_ts=8000)
    assert isinstance(parse_rtcp(sr)[0], SenderReport)
    (about_peer,) = peer.receive(sr, now=5.0, wall=0)  # the SR's block is about the peer's stream
    assert about_peer.rtt is None and about_peer.cumulative_lost == 0  # the peer sent no SR: no LSR
    # the peer answers 0.25 s later (DLSR) with an RR; it reaches the node 0.3 s after the SR left
    rr = peer.report(now=5.25, wall=0, packets_sent=0, octets_sent=0, rtp_ts=0)
    first = parse_rtcp(rr)[0]
    assert isinstance(first, ReceiverReport)
    blk = first.reports[0]
    assert blk.ssrc == 0x1000 and blk.lsr == ntp_middle(ntp_timestamp(wall)) and blk.dlsr == 0.25 * 65536
    (rep,) = node.receive(rr, now=1.3, wall=wall + 0.3)
    assert rep.rtt == pytest.approx(0.05, abs=1 / 65536 * 2)
    assert rep.fraction_lost == 0 and rep.cumulative_lost == 0
    assert node.peer_ssrc == 0x2000 and node.peer_cname == "peer" and node.rtt_max == rep.rtt
    # no SR heard yet -> LSR 0 -> no RTT
    (rep2,) = peer.receive(node.report(1.5, wall + 0.5, 60, 9600, 9600), now=5.5, wall=0)
    assert rep2.rtt is None


def test_sr_when_sending_rr_when_only_receiving_bye_at_the_end():
    s = RtcpSession(1, "n", 0.0)
    s.rx.update(2, 1, 0, 0)
    s.rx.update(2, 2, 160, 160)
    assert isinstance(parse_rtcp(s.report(1.0, 1.0, 10, 1600, 0))[0], SenderReport)
    assert isinstance(parse_rtcp(s.report(2.0, 2.0, 10, 1600, 0))[0], ReceiverReport)  # sent nothing since
    pkts = parse_rtcp(s.report(3.0, 3.0, 10, 1600, 0, bye=""))
    assert [type(p) for p in pkts] == [ReceiverReport, Sdes, Bye] and pkts[2].ssrcs == (1,)
    assert pkts[1].cname_of(1) == "n"


def test_report_interval_is_rfc3550_randomised_around_5_seconds():
    comp = 2.71828 - 1.5
    # two members at 64 kbit/s: the bandwidth share is far below the minimum, so Tmin rules
    assert rtcp_interval(2, 2, 500.0, True, 100.0, False, 0.0) == pytest.approx(5 * 0.5 / comp)
    assert rtcp_interval(2, 2, 500.0, True, 100.0, False, 0.999999) == pytest.approx(5 * 1.5 / comp, rel=1e-5)
    assert rtcp_interval(2, 1, 500.0, True, 100.0, True, 0.5) == pytest.approx(2.5 / comp)  # the first: half
    # a tiny bandwidth makes the computed interval win over the minimum
    assert rtcp_interval(2, 2, 10.0, True, 100.0, False, 0.5) == pytest.approx(20 / comp)
    s = RtcpSession(1, "n", 100.0, rng=random.Random(7))
    gaps = []
    last = 100.0
    for _ in range(200):
        assert not s.due(s.next_due - 0.001) and s.due(s.next_due)
        now = s.next_due
        s.report(now, now, 0, 0, 0)
        gaps.append(s.next_due - now)
        last = now
    assert last > 100.0
    assert min(gaps) >= 5 * 0.5 / comp - 1e-9 and max(gaps) <= 5 * 1.5 / comp + 1e-9
    assert 3.7 < sum(gaps) / len(gaps) < 4.5  # mean 5 / (e - 3/2) = 4.1 s
