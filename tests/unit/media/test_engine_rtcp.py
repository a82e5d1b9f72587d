"""RTCP between two of the engine's own endpoints on loopback (a short report interval):
each sends SR while it plays, reads the other's reports into round-trip time, loss and
jitter metrics, and says BYE with a last report when it closes; garbage on the RTCP port is
counted, never fatal."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from prometheus_client import REGISTRY

from node.media.rtcp import Bye, SenderReport, parse_rtcp
from node.media_engine import MediaEngine
from node.rtp_engine.port_pool import PortPool
from tests.peers.net import free_port
from tests.waiting import until


@pytest.fixture
async def engine():
    base = free_port("127.0.0.1", span=8)
    eng = MediaEngine(PortPool(base, base + 7), "127.0.0.1")
    eng.rtcp_min_interval = 0.3  # the RFC's 5 s would make this test slow; the logic is the same
    yield eng
    eng.close()


def _metric(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_two_endpoints_exchange_reports_and_close_with_bye(engine, caplog):
    rtt_before = _metric("hivepbx_media_rtcp_rtt_seconds_count")
    out_before = _metric("hivepbx_media_rtcp_packets_total", {"direction": "out"})
    errors_before = _metric("hivepbx_media_rtcp_errors_total")
    a = await engine.open_endpoint("call-a", "tenant-x")
    b = await engine.open_endpoint("call-b", "tenant-x")
    a.accept_answer(b.answer(a.offer("127.0.0.1"), "127.0.0.1"))
    assert a.sdp_rtcp == ("127.0.0.1", b.local_port + 1) and b.sdp_rtcp == ("127.0.0.1", a.local_port + 1)
    # both send silence on the clock: each must see the other's SR and get an RTT from it
    assert await until(lambda: a.rtcp_session.rtt_max is not None and b.rtcp_session.rtt_max is not None, timeout=5)
    sa, sb = a.rtcp_session, b.rtcp_session
    assert sa.peer_ssrc == b.ssrc and sb.peer_ssrc == a.ssrc
    assert 0 <= sa.rtt_max < 0.1 and sa.last_peer.cumulative_lost == 0
    assert sa.rx.ssrc == b.ssrc and sa.rx.lost == 0 and sa.rx.received > 10
    assert _metric("hivepbx_media_rtcp_rtt_seconds_count") >= rtt_before + 2
    assert _metric("hivepbx_media_rtcp_packets_total", {"direction": "out"}) >= out_before + 2
    assert a.rtcp_dest == ("127.0.0.1", b.local_port + 1)  # learned from b's reports

    # garbage on a's RTCP port: counted, a carries on
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"\x80\xc9\x00\x09not rtcp", ("127.0.0.1", a.local_port + 1))
    assert await until(lambda: _metric("hivepbx_media_rtcp_errors_total") >= errors_before + 1)
    assert not a.closed and sa.errors == 1

    # b closes: its last report ends with BYE, and the log line has the stream's figures
    with caplog.at_level(logging.INFO, logger="hivepbx.media"):
        b.close()
    assert await until(lambda: sa.peer_bye)
    rec = next(r for r in caplog.records if r.getMessage() == "media stream closed")
    assert (rec.call_id, rec.tenant) == ("call-b", "tenant-x")
    assert rec.local_port == b.local_port and rec.rtp_in > 10 and rec.rx_lost == 0 and "rtt_ms" in rec.__dict__
    a.close()


async def test_endpoint_reports_reach_a_plain_socket_as_sr_with_our_ssrc(engine):
    """A peer that only listens: the endpoint's reports go to the SDP's RTCP address."""
    peer_rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = free_port("127.0.0.1", span=2)
    peer_rtp.bind(("127.0.0.1", port))
    peer_rtcp.bind(("127.0.0.1", port + 1))
    peer_rtcp.setblocking(False)
    try:
        ep = await engine.open_endpoint("c", "t")
        offer = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                 f"m=audio {port} RTP/AVP 0\r\na=sendrecv\r\n").encode()
        ep.answer(offer, "127.0.0.1")
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(peer_rtcp, 2048), 5)
        pkts = parse_rtcp(data)
        assert isinstance(pkts[0], SenderReport) and pkts[0].ssrc == ep.ssrc and pkts[0].packet_count > 0
        assert pkts[1].cname_of(ep.ssrc)
        ep.close()
        data = await asyncio.wait_for(loop.sock_recv(peer_rtcp, 2048), 5)
        assert isinstance(parse_rtcp(data)[-1], Bye)
    finally:
        peer_rtp.close()
        peer_rtcp.close()


async def test_rtcp_arriving_on_the_rtp_port_is_read_as_rtcp_not_rtp(engine):
    """RFC 5761 demux: a peer muxing RTCP onto the RTP port must not reset the RTP statistics."""
    from node.media.rtcp import ReceiverReport, ReportBlock, Sdes, compound

    a = await engine.open_endpoint("c", "t")
    b = await engine.open_endpoint("c", "t")
    a.accept_answer(b.answer(a.offer("127.0.0.1"), "127.0.0.1"))
    assert await until(lambda: a.rtcp_session.rx.received > 5)
    before = a.packets_in
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        rr = compound(ReceiverReport(0x5151, (ReportBlock(a.ssrc, fraction_lost=128),)), Sdes.cname(0x5151, "m"))
        s.sendto(rr, ("127.0.0.1", a.local_port))
    assert await until(lambda: a.rtcp_session.last_peer is not None and a.rtcp_session.last_peer.fraction_lost == 0.5)
    assert a.rtcp_session.rx.ssrc == b.ssrc and a.packets_in >= before  # b's stream still the one counted
    a.close()
    b.close()
