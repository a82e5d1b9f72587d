"""RTCP of the node's own media endpoints against a real call: a SIPp caller reaches an IVR,
its RTP is the test's RtpPeer (with an RTCP socket on port + 1), which sends a tone with
every 5th packet missing and answers the node's SR with an RR of its own. The node's reports
carry the SSRC of the RTP it sends, its reception report counts exactly the packets the peer
left out, its last report ends with BYE, and the metrics show the round trip and the loss."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import REGISTRY

from node.media.rtcp import Bye, ReceiverReport, ReportBlock, Sdes, SenderReport, compound, ntp_middle, parse_rtcp
from node.pbx import ivr
from tests.peers.rtp_peer import RtpPeer, node_media_of
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1 = "pw-1001-secret"
MENU = {"intro": ["welcome"], "prompt": ["menu"], "timeout": 8, "options": {"9": "1001"}}


def _metric(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _reports(peer: RtpPeer) -> list[list]:
    return [parse_rtcp(d) for _, d in peer.rtcp_packets]


async def test_ivr_call_gets_rtcp_reports_with_its_ssrc_and_the_loss_we_made(pbx, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hivepbx.media")
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1)
    await ivr.put(pbx.config, t.id, "800", MENU)
    lost_before = _metric("hivepbx_media_rtp_lost_packets_total")
    rtt_before = _metric("hivepbx_media_rtcp_rtt_seconds_count")
    loss_sum_before = _metric("hivepbx_media_rtcp_peer_fraction_lost_sum")
    peer = await RtpPeer.open(rtcp=True)
    try:
        caller = asyncio.create_task(Sipp(
            "uac_media_call.xml", pbx.target, workdir=tmp_path / "caller", service="800", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1, timeout=30,
            keys={"rtp_ip": "127.0.0.1", "rtp_port": peer.port, "formats": "0 101", "hold_ms": 4500}).run())
        node_rtp = await node_media_of(pbx, peer)
        node_rtcp = (node_rtp[0], node_rtp[1] + 1)
        # 3.48 s of tone = 174 packets, every 5th left out (34), the last one sent
        tone = asyncio.create_task(peer.send_tone(node_rtp, 700.0, 3.48, lose_every=5))
        # the first report comes within 2.5 s * 1.5 / (e - 3/2) of the answer (RFC 3550 A.7)
        assert await until(lambda: peer.rtcp_packets, timeout=5), "no RTCP from the node"
        first = _reports(peer)[0]
        assert isinstance(first[0], SenderReport), first  # the IVR is playing: a sender
        sr = first[0]
        assert abs((sr.ntp >> 32) - 2208988800 - time.time()) < 5
        # our answer: an RR about the node's stream, claiming 25 % loss, sent 10 ms after its SR
        # arrived (DLSR), from our RTCP port (the node learns it: symmetric RTCP)
        await asyncio.sleep(0.01)
        block = ReportBlock(sr.ssrc, fraction_lost=64, cumulative_lost=12, highest_seq=1000, jitter=80,
                            lsr=ntp_middle(sr.ntp), dlsr=int(0.01 * 65536))
        peer.send_rtcp(node_rtcp, compound(ReceiverReport(peer.ssrc, (block,)), Sdes.cname(peer.ssrc, "peer@test")))
        peer.send_rtcp(node_rtcp, b"\x80\xc9\x00\x05garbage")  # malformed: counted, not fatal
        await tone
        res = await asyncio.wait_for(caller, 30)
    finally:
        peer.close()
    res.assert_ok()
    assert await pbx.wait_idle()

    # what the node sent: every report from the SSRC of the RTP we received from it
    rtp_ssrcs = {int.from_bytes(p[8:12], "big") for _, p in peer.packets if len(p) >= 12 and p[1] & 0x7F == 0}
    assert len(rtp_ssrcs) == 1, rtp_ssrcs
    reports = _reports(peer)
    assert {pk[0].ssrc for pk in reports} == rtp_ssrcs
    assert all(isinstance(pk[1], Sdes) and pk[1].cname_of(pk[0].ssrc) for pk in reports)
    last = reports[-1]
    assert isinstance(last[-1], Bye) and last[-1].ssrcs == (last[0].ssrc,), last
    # its reception report about our stream: exactly the packets we left out
    blk = next(b for b in last[0].reports if b.ssrc == peer.ssrc)
    print(f"node's last report: {last[0]!r}; peer skipped {peer.skipped} of {peer.sent + peer.skipped}")
    assert peer.skipped == 34 and blk.cumulative_lost == peer.skipped
    assert blk.jitter < 8000 * 0.05  # loopback: well under 50 ms
    assert blk.lsr == 0  # we sent no SR (RR only): nothing to echo
    # the metrics: our loss counted, the peer's report read (25 % loss, a round-trip time)
    assert _metric("hivepbx_media_rtp_lost_packets_total") - lost_before == peer.skipped
    assert _metric("hivepbx_media_rtcp_rtt_seconds_count") >= rtt_before + 1
    assert _metric("hivepbx_media_rtcp_peer_fraction_lost_sum") - loss_sum_before == pytest.approx(0.25)
    assert _metric("hivepbx_media_rtcp_errors_total") >= 1
    # and one log line at close with the call's figures, call id and tenant
    rec = next(r for r in caplog.records if r.getMessage() == "media stream closed")
    assert rec.tenant == "alpha" and rec.call_id
    assert rec.rx_lost == peer.skipped and rec.peer_fraction_lost == 0.25 and 0 <= rec.rtt_ms < 100
