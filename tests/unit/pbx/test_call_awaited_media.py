"""node/pbx/call.py with an anchor whose rewrites are awaited (rtpengine mode): the 200 to
the caller leaves only after its SDP is rewritten, a retransmitted 2xx meanwhile asks the
relay nothing more, a CANCEL meanwhile ends the call and hangs up the answered leg, and a
forwarded re-INVITE waits for its offer. The anchor is scripted (each rewrite waits for
the test to release it); the real rtpengine is in tests/interop/pbx/test_media_rtpengine_sipp.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from node.pbx.call import Call, Caller, CallState
from node.pbx.routing import RoutePlan, Target
from node.sip.flow import Flow
from node.sip.message import Request, make_response

SDP_A = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_B = SDP_A.replace(b"10.0.0.1", b"10.0.0.2")
FLOW_A = Flow("udp", ("127.0.0.1", 5071), ("127.0.0.1", 5060))
FLOW_B = Flow("udp", ("127.0.0.1", 5072), ("127.0.0.1", 5060))


class SlowAnchor:
    """Rewrites wait for ``release()``; every call is logged."""

    where = "rtpengine"
    needs_await = True
    session = None
    advertise = None

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.gate = asyncio.Event()
        self.closed = False

    def release(self) -> None:
        self.gate.set()

    def initial_offer(self, body, ip):
        return b"offer-for-b\r\n"

    async def rewrite_async(self, side, body, ip, *, offer=None):
        self.log.append(("rewrite", side, offer))
        await self.gate.wait()
        return b"rewritten-from-" + side.encode() + b"\r\n"

    def close(self) -> None:
        self.closed = True
        self.log.append(("close",))


class Endpoint:
    def __init__(self) -> None:
        self.out: list = []
        self.txns: list = []

    def send_response(self, r) -> None:
        self.out.append(("response", r))

    def send_request(self, req, flow):
        self.out.append(("request", req))
        self.txns.append(SimpleNamespace(tu=None))
        return self.txns[-1]

    def send_stateless(self, m, flow) -> None:
        self.out.append(("stateless", m))

    def local_host(self, flow) -> str:
        return "127.0.0.1"

    def sent_by(self, flow) -> str:
        return "127.0.0.1:5060"

    def sent(self, kind, what):
        return [m for k, m in self.out if k == kind and (getattr(m, "status", None) == what or
                                                         getattr(m, "method", None) == what)]


class Host:
    def __init__(self) -> None:
        self.endpoint = Endpoint()
        self.loop = asyncio.get_running_loop()
        self.cfg = SimpleNamespace(ring_timeout=30)
        self.t1, self.t2 = 0.5, 4.0
        self.apps = None
        self.tasks: list[asyncio.Task] = []
        self.ended: list = []

    def _spawn(self, coro) -> None:
        self.tasks.append(self.loop.create_task(coro))

    def flow_for(self, target):
        return FLOW_B

    def register_dialog(self, *a) -> None:
        pass

    def unregister_dialog(self, *a) -> None:
        pass

    def call_answered(self, call) -> None:
        pass

    def call_ended(self, call) -> None:
        self.ended.append(call)


def _call(host: Host, anchor: SlowAnchor, forks: int = 1) -> Call:
    invite = Request("INVITE", "sip:1002@alpha.example", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-a1;rport"),
        ("From", "<sip:1001@alpha.example>;tag=ta"), ("To", "<sip:1002@alpha.example>"),
        ("Call-ID", "call-a"), ("CSeq", "1 INVITE"), ("Contact", "<sip:1001@127.0.0.1:5071>"),
        ("Max-Forwards", "70"), ("Content-Type", "application/sdp"),
    ], SDP_A)
    tenant = SimpleNamespace(id=1, name="alpha", domain="alpha.example", ring_timeout=0)
    target = Target("extension", "sip:1002@127.0.0.1:5072", "udp", "127.0.0.1", 5072, "<sip:1002@alpha.example>")
    plan = RoutePlan(tenant, "internal", "1002", attempts=[[target] * forks])
    call = Call(host, invite, SimpleNamespace(tu=None), FLOW_A, plan, Caller("1001", "", "alpha.example"), anchor)
    call.start_routing()
    return call


def _b_response(call: Call, status: int, body: bytes = SDP_B):
    leg = call.legs[0]
    headers = [("Contact", "<sip:1002@127.0.0.1:5072>")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return leg, make_response(leg.invite, status, None, to_tag="tb", headers=headers, body=body)


async def _settle(host: Host) -> None:
    await asyncio.sleep(0)
    if host.tasks:
        await asyncio.gather(*host.tasks)


async def test_200_to_caller_waits_for_the_rewrite_and_retransmissions_ask_nothing_more():
    host, anchor = Host(), SlowAnchor()
    call = _call(host, anchor)
    invite_b = host.endpoint.sent("request", "INVITE")
    assert len(invite_b) == 1 and invite_b[0].body == b"offer-for-b\r\n"
    leg, ok = _b_response(call, 200)
    call.on_leg_response(leg, ok)
    call.on_leg_response(leg, ok)  # B retransmits its 200 while the relay works
    await asyncio.sleep(0.01)
    assert host.endpoint.sent("response", 200) == []  # nothing to A before the rewrite
    assert len(host.endpoint.sent("stateless", "ACK")) == 2  # B is ACKed at once, each 200
    anchor.release()
    await _settle(host)
    to_a = host.endpoint.sent("response", 200)
    assert len(to_a) == 1 and to_a[0].body == b"rewritten-from-b\r\n"
    assert call.state is CallState.ANSWERED
    assert anchor.log == [("rewrite", "b", None)]  # one rewrite for two 200s
    call.on_leg_response(leg, ok)  # a late retransmission: ACKed again, nothing rewritten
    assert len(host.endpoint.sent("stateless", "ACK")) == 3 and len(anchor.log) == 1
    call.hangup_both("test")


async def test_cancel_while_the_answer_is_rewritten_ends_the_call_and_hangs_up_the_callee():
    host, anchor = Host(), SlowAnchor()
    call = _call(host, anchor)
    leg, ok = _b_response(call, 200)
    call.on_leg_response(leg, ok)
    await asyncio.sleep(0.01)
    call.on_cancel()  # A's CANCEL arrives while the relay still works on B's answer
    assert call.state is CallState.ENDED and anchor.closed  # the anchor deletes its session
    assert [r.status for r in (m for k, m in host.endpoint.out if k == "response")] == [487]
    anchor.release()
    await _settle(host)
    assert host.endpoint.sent("response", 200) == []  # no 200 after the 487
    assert len(host.endpoint.sent("request", "BYE")) == 1  # the answered callee is hung up
    assert host.ended == [call]


async def test_a_reinvite_is_forwarded_once_its_offer_is_rewritten_and_another_meanwhile_gets_491():
    host, anchor = Host(), SlowAnchor()
    anchor.release()
    call = _call(host, anchor)
    leg, ok = _b_response(call, 200)
    call.on_leg_response(leg, ok)
    await _settle(host)
    ack = Request("ACK", "sip:1002@127.0.0.1:5060", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-a2;rport"), ("From", "<sip:1001@alpha.example>;tag=ta"),
        ("To", f"<sip:1002@alpha.example>;tag={call.a_tag}"), ("Call-ID", "call-a"), ("CSeq", "1 ACK"),
        ("Max-Forwards", "70")])
    call.on_request("a", ack, None)
    anchor.gate = asyncio.Event()  # the next rewrite waits
    host.tasks.clear()
    reinvite = Request("INVITE", "sip:1002@127.0.0.1:5060", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-a3;rport"), ("From", "<sip:1001@alpha.example>;tag=ta"),
        ("To", f"<sip:1002@alpha.example>;tag={call.a_tag}"), ("Call-ID", "call-a"), ("CSeq", "2 INVITE"),
        ("Contact", "<sip:1001@127.0.0.1:5071>"), ("Max-Forwards", "70"), ("Content-Type", "application/sdp"),
    ], SDP_A.replace(b"1 1 IN", b"1 2 IN"))
    call.on_request("a", reinvite, SimpleNamespace())
    await asyncio.sleep(0.01)
    assert len(host.endpoint.sent("request", "INVITE")) == 1  # only the first INVITE to B so far
    again = Request("INVITE", "sip:1002@127.0.0.1:5060", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-a4;rport"), ("From", "<sip:1001@alpha.example>;tag=ta"),
        ("To", f"<sip:1002@alpha.example>;tag={call.a_tag}"), ("Call-ID", "call-a"), ("CSeq", "3 INVITE"),
        ("Contact", "<sip:1001@127.0.0.1:5071>"), ("Max-Forwards", "70"), ("Content-Type", "application/sdp"),
    ], SDP_A.replace(b"1 1 IN", b"1 3 IN"))
    call.on_request("a", again, SimpleNamespace())  # the first is still with the relay
    assert [r.status for r in host.endpoint.sent("response", 491)] == [491]
    anchor.release()
    await _settle(host)
    sent = host.endpoint.sent("request", "INVITE")
    assert len(sent) == 2 and sent[1].body == b"rewritten-from-a\r\n"
    assert ("rewrite", "a", True) in anchor.log
    # B's 200 to it, retransmitted while the relay rewrites its answer: one rewrite, A gets
    # the 200 after it, and a later retransmission is forwarded again from what was kept
    fwd = host.endpoint.txns[-1].tu
    ok2 = make_response(sent[1], 200, None, headers=[("Contact", "<sip:1002@127.0.0.1:5072>"),
                                                     ("Content-Type", "application/sdp")], body=SDP_B)
    anchor.gate = asyncio.Event()
    host.tasks.clear()
    n = len(anchor.log)
    call.on_forwarded_response(fwd, ok2)
    call.on_forwarded_response(fwd, ok2)
    await asyncio.sleep(0.01)
    def to_a():
        return [r for r in host.endpoint.sent("response", 200) if r.cseq.seq == 2]

    assert to_a() == [] and len(anchor.log) == n + 1
    anchor.release()
    await _settle(host)
    call.on_forwarded_response(fwd, ok2)
    assert [r.body for r in to_a()] == [b"rewritten-from-b\r\n"] * 2 and len(anchor.log) == n + 1
    call.hangup_both("test")


async def test_a_cancelled_forks_487_while_the_answer_is_rewritten_does_not_end_the_call():
    host, anchor = Host(), SlowAnchor()
    call = _call(host, anchor, forks=2)
    winner, loser = call.legs
    for leg in call.legs:
        call.on_leg_response(leg, make_response(leg.invite, 180, None, to_tag=f"t{id(leg)}"))
    leg, ok = _b_response(call, 200)
    call.on_leg_response(winner, ok)
    assert host.endpoint.sent("request", "CANCEL")  # the other fork is cancelled at once
    call.on_leg_response(loser, make_response(loser.invite, 487, None, to_tag="t2"))
    assert call.state is CallState.RINGING and not host.endpoint.sent("response", 487)
    anchor.release()
    await _settle(host)
    assert call.state is CallState.ANSWERED and len(host.endpoint.sent("response", 200)) == 1
    call.hangup_both("test")
