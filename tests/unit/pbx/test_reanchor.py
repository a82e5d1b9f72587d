"""node/pbx/reanchor.py's state machine with a scripted rtpengine anchor and fake relay
legs (the real rtpengine: tests/interop/pbx/test_rtpengine_features_sipp.py): re-INVITEs
offer the local legs, a crossing re-INVITE meanwhile gets 491, the answers aim the legs,
commit hands the call over; a refusal moves the other party back to rtpengine's SDP and
leaves the call as it was; a call ended meanwhile or a feature failing after the swap
leaves nothing open."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest

from node.pbx import reanchor
from node.pbx.call import CallState
from node.pbx.media import MediaAnchor
from node.runtime.config import NodeConfig
from node.sdp.origin import LocalOrigin
from node.sip.errors import SipError
from node.sip.message import Request, make_response
from tests.unit.pbx.test_call_awaited_media import SDP_A, SDP_B, Host, _b_response, _call, _settle

RTPE_TO_A = SDP_A.replace(b"10.0.0.1", b"192.0.2.9").replace(b"4000", b"30000")
RTPE_TO_B = SDP_A.replace(b"10.0.0.1", b"192.0.2.9").replace(b"4000", b"30002")


class FakeLeg:
    def __init__(self, port: int) -> None:
        self.local_port = port
        self.remote = None

    def set_remote(self, host, port, rtcp_port=None, rtcp_host=None) -> None:
        self.remote = (host, port)


class FakeSession:
    def __init__(self) -> None:
        self.legs = {"a": FakeLeg(20000), "b": FakeLeg(20002)}
        self.closed = False

    def leg(self, name):
        return self.legs[name]

    def close(self) -> None:
        self.closed = True


class RtpAnchor:
    """What reanchor.py uses of node/pbx/media_rtpengine.py's RtpengineAnchor."""

    where = "rtpengine"
    needs_await = True
    advertise = None
    session = None

    def __init__(self) -> None:
        self.local = None
        self.heard = {"a": SDP_A, "b": SDP_B}
        self.sent_sdp = {"a": RTPE_TO_A, "b": RTPE_TO_B}
        self._origins = {"a": LocalOrigin(sess_id=7), "b": LocalOrigin(sess_id=8)}
        self.opened: list[MediaAnchor] = []
        self.factory = SimpleNamespace(local=SimpleNamespace(open=self._open))
        self.handed = None
        self.closed = False

    async def _open(self, call_id, tenant, call=None, *, reason="plain"):
        assert reason == "reanchor"
        self.opened.append(MediaAnchor(FakeSession(), None))
        return self.opened[-1]

    def initial_offer(self, body, ip):
        return RTPE_TO_B

    async def rewrite_async(self, side, body, ip, *, offer=None):
        return RTPE_TO_A if side == "b" else RTPE_TO_B

    async def hand_over(self, local) -> None:
        self.handed = local
        self.local = local

    def close(self) -> None:
        self.closed = True


async def _answered_call(answer_wait: float = NodeConfig().reanchor_answer_wait):
    host, anchor = Host(), RtpAnchor()
    host.cfg.reanchor_answer_wait = answer_wait  # the node's setting (NodeConfig)
    call = _call(host, anchor)
    leg, ok = _b_response(call, 200)
    call.on_leg_response(leg, ok)
    await _settle(host)
    assert call.state is CallState.ANSWERED
    host.endpoint.out.clear()
    host.endpoint.txns.clear()
    return host, anchor, call


def _reinvites(host):
    """(side, request, its transaction) of the re-INVITEs the node sent, in order."""
    out = []
    for (kind, m), txn in zip([o for o in host.endpoint.out if o[0] == "request"], host.endpoint.txns):
        if m.method == "INVITE":
            out.append(("a" if m.call_id == "call-a" else "b", m, txn))
    return out


def _answer(req, status=200, body=SDP_A):
    headers = [("Contact", "<sip:x@127.0.0.1:5999>")]
    if status == 200:
        headers.append(("Content-Type", "application/sdp"))
    return make_response(req, status, None, headers=headers, body=body if status == 200 else b"")


def _port(body: bytes) -> int:
    return int(re.search(rb"m=audio (\d+)", body).group(1))


async def test_both_parties_move_then_the_rtpengine_session_is_handed_over():
    host, anchor, call = await _answered_call()
    done = reanchor.REANCHORS.labels("done")._value.get()
    task = asyncio.create_task(reanchor.make_local(call))
    await asyncio.sleep(0.01)
    sent = _reinvites(host)
    assert sorted(s for s, _, _ in sent) == ["a", "b"]
    local = anchor.opened[0]
    for side, req, _ in sent:
        # each party is offered its own local leg, with the o= line it already knows (next version)
        assert _port(req.body) == local.session.leg(side).local_port
        assert f"o=hivepbx {7 if side == 'a' else 8} ".encode() in req.body
    # a party's own re-INVITE crossing ours: 491 (RFC 3261 §14.2)
    crossing = Request("INVITE", "sip:1002@127.0.0.1:5060", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-x1;rport"), ("From", "<sip:1001@alpha.example>;tag=ta"),
        ("To", f"<sip:1002@alpha.example>;tag={call.a_tag}"), ("Call-ID", "call-a"), ("CSeq", "5 INVITE"),
        ("Contact", "<sip:1001@127.0.0.1:5071>"), ("Max-Forwards", "70")])
    call.on_request("a", crossing, SimpleNamespace())
    assert [r.status for r in host.endpoint.sent("response", 491)] == [491]
    assert call.media is anchor and anchor.handed is None  # nothing swapped before both answered
    for side, req, txn in sent:
        body = SDP_A.replace(b"4000", b"4100") if side == "a" else SDP_B.replace(b"4000", b"4200")
        txn.tu.on_sip_response(_answer(req, 200, body), txn)
    await asyncio.wait_for(task, 1)
    assert call.media is local and anchor.handed is local
    assert local.session.leg("a").remote == ("10.0.0.1", 4100) and local.session.leg("b").remote == ("10.0.0.2", 4200)
    assert len(host.endpoint.sent("stateless", "ACK")) == 2  # each 2xx ACKed
    assert call.pending == {"a": None, "b": None} and call.reanchor is None
    assert reanchor.REANCHORS.labels("done")._value.get() == done + 1
    assert not reanchor.needed(call)
    call.hangup_both("test")


async def test_a_refusal_moves_the_other_party_back_and_keeps_the_call_on_rtpengine():
    host, anchor, call = await _answered_call()
    refused = reanchor.REANCHORS.labels("refused")._value.get()
    task = asyncio.create_task(reanchor.make_local(call))
    await asyncio.sleep(0.01)
    sent = {s: (req, txn) for s, req, txn in _reinvites(host)}
    req, txn = sent["b"]
    txn.tu.on_sip_response(_answer(req, 200, SDP_B), txn)
    req, txn = sent["a"]
    txn.tu.on_sip_response(_answer(req, 488), txn)
    await asyncio.sleep(0.01)
    back = _reinvites(host)[2:]
    assert [s for s, _, _ in back] == ["b"]  # only the party that moved goes back
    assert _port(back[0][1].body) == 30002 and b"c=IN IP4 192.0.2.9" in back[0][1].body
    assert b"o=hivepbx 8 " in back[0][1].body
    back[0][2].tu.on_sip_response(_answer(back[0][1], 200, SDP_B), back[0][2])
    with pytest.raises(reanchor.ReanchorError) as e:
        await asyncio.wait_for(task, 1)
    assert e.value.status == 488 and "moving the call's media" in e.value.reason
    assert call.media is anchor and anchor.handed is None and anchor.opened[0].session.closed
    assert call.state is CallState.ANSWERED and call.pending == {"a": None, "b": None} and call.reanchor is None
    assert reanchor.REANCHORS.labels("refused")._value.get() == refused + 1
    call.hangup_both("test")


async def test_a_timeout_is_a_refusal_and_a_party_that_left_may_refuse():
    host, anchor, call = await _answered_call()
    task = asyncio.create_task(reanchor.make_local(call))
    await asyncio.sleep(0.01)
    sent = {s: (req, txn) for s, req, txn in _reinvites(host)}
    sent["a"][1].tu.on_sip_timeout(sent["a"][1])
    sent["b"][1].tu.on_sip_response(_answer(sent["b"][0], 491), sent["b"][1])
    with pytest.raises(reanchor.ReanchorError) as e:
        await asyncio.wait_for(task, 1)
    assert e.value.status in (408, 491) and call.media is anchor
    # the transferor hung up meanwhile: its 481 does not stop the move
    host.endpoint.out.clear()
    host.endpoint.txns.clear()
    task = asyncio.create_task(reanchor.make_local(call, gone=lambda side: side == "b"))
    await asyncio.sleep(0.01)
    sent = _reinvites(host)
    assert [s for s, _, _ in sent] == ["a"]  # nobody re-INVITEs a party that is gone
    sent[0][2].tu.on_sip_response(_answer(sent[0][1]), sent[0][2])
    await asyncio.wait_for(task, 1)
    assert call.media is anchor.opened[-1]
    call.hangup_both("test")


async def test_the_call_ending_meanwhile_leaves_nothing_open():
    host, anchor, call = await _answered_call()
    task = asyncio.create_task(reanchor.make_local(call))
    await asyncio.sleep(0.01)
    sent = _reinvites(host)
    call.hangup_both("test")  # a BYE while the parties are asked
    assert anchor.closed
    for _, req, txn in sent:
        txn.tu.on_sip_response(_answer(req), txn)  # still ACKed
    with pytest.raises(reanchor.ReanchorError) as e:
        await asyncio.wait_for(task, 1)
    assert e.value.status == 481 and anchor.opened[0].session.closed and anchor.handed is None


async def test_a_ringing_call_moves_without_reinvites_and_a_failing_feature_moves_it_back():
    host, anchor = Host(), RtpAnchor()
    call = _call(host, anchor)
    host.endpoint.out.clear()
    seen = []

    def fails():
        seen.append(call.media)
        raise SipError("no codec in common", 488)

    with pytest.raises(SipError):
        await reanchor.local_then(call, fails, ())
    assert seen == [anchor.opened[0]]  # the feature ran on the local relay
    assert call.media is anchor and anchor.opened[0].session.closed and anchor.handed is None
    assert _reinvites(host) == [] and call.state is CallState.RINGING
    await reanchor.local_then(call, lambda: seen.append(call.media), ())
    assert seen[-1] is anchor.opened[1] and call.media is anchor.opened[1] and anchor.handed is anchor.opened[1]
    call.hangup_both("test")


async def test_calls_moved_together_are_moved_back_together():
    host, anchor, call = await _answered_call()
    host2, anchor2, call2 = await _answered_call()
    moves = [reanchor.Reanchor(call, ("a",)), reanchor.Reanchor(call2, ("a",))]
    task = asyncio.create_task(reanchor.prepare_all(*moves))
    await asyncio.sleep(0.01)
    (_, req1, txn1), = _reinvites(host)
    (_, req2, txn2), = _reinvites(host2)
    txn1.tu.on_sip_response(_answer(req1), txn1)
    txn2.tu.on_sip_response(_answer(req2, 488), txn2)
    await asyncio.sleep(0.01)
    back = _reinvites(host)[1:]
    assert len(back) == 1 and _port(back[0][1].body) == 30000  # the first call's party goes back
    back[0][2].tu.on_sip_response(_answer(back[0][1]), back[0][2])
    with pytest.raises(reanchor.ReanchorError):
        await asyncio.wait_for(task, 1)
    assert call.media is anchor and call2.media is anchor2
    assert anchor.opened[0].session.closed and anchor2.opened[0].session.closed
    # a second transfer is refused while a move runs
    move = reanchor.Reanchor(call)
    call.reanchor = object()
    with pytest.raises(reanchor.ReanchorError) as e:
        await move.prepare()
    assert e.value.status == 491
    call.reanchor = None
    call.hangup_both("test")
    call2.hangup_both("test")
