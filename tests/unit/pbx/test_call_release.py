"""node/pbx/call.py frees an ended call by reference counting once its transactions are over:
``Call._release`` breaks the Call <-> Leg <-> transaction cycles, so the garbage collector
need not find them (bench/calls_inproc.py prints its share). Until then a late 2xx
retransmission on the callee's leg is still ACKed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace

import pytest

from node.pbx import call as call_mod
from node.pbx.call import Call, Caller, CallState
from node.pbx.routing import RoutePlan, Target
from node.sip.flow import Flow
from node.sip.message import Request, make_response

SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
FLOW_A = Flow("udp", ("127.0.0.1", 5071), ("127.0.0.1", 5060))
FLOW_B = Flow("udp", ("127.0.0.1", 5072), ("127.0.0.1", 5060))


class Anchor:
    needs_await = False
    session = None

    def initial_offer(self, body, ip):
        return body

    def rewrite(self, side, body, ip):
        return body

    def close(self) -> None:
        pass


class Endpoint:
    """Keeps what it sends, and the transactions it hands out (as the layer does until their
    timers end them)."""

    def __init__(self) -> None:
        self.out: list = []
        self.txns: list = []

    def send_response(self, r) -> None:
        self.out.append(r)

    def send_request(self, req, flow):
        self.out.append(req)
        self.txns.append(SimpleNamespace(tu=None))
        return self.txns[-1]

    def send_stateless(self, m, flow) -> None:
        self.out.append(m)

    def local_host(self, flow) -> str:
        return "127.0.0.1"

    def sent_by(self, flow) -> str:
        return "127.0.0.1:5060"


class Host:
    def __init__(self) -> None:
        self.endpoint = Endpoint()
        self.loop = asyncio.get_running_loop()
        self.cfg = SimpleNamespace(ring_timeout=30)
        self.t1, self.t2 = 0.5, 4.0
        self.apps = None

    def flow_for(self, target):
        return FLOW_B

    def register_dialog(self, *a) -> None:
        pass

    def call_answered(self, call) -> None:
        pass

    def call_ended(self, call) -> None:
        pass


def _answered_then_hung_up(host: Host):
    invite = Request("INVITE", "sip:1002@alpha.example", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-a1;rport"),
        ("From", "<sip:1001@alpha.example>;tag=ta"), ("To", "<sip:1002@alpha.example>"),
        ("Call-ID", "call-a"), ("CSeq", "1 INVITE"), ("Contact", "<sip:1001@127.0.0.1:5071>"),
        ("Max-Forwards", "70"), ("Content-Type", "application/sdp"),
    ], SDP)
    tenant = SimpleNamespace(id=1, name="alpha", domain="alpha.example", ring_timeout=0)
    target = Target("extension", "sip:1002@127.0.0.1:5072", "udp", "127.0.0.1", 5072, "<sip:1002@alpha.example>")
    plan = RoutePlan(tenant, "internal", "1002", attempts=[[target]])
    server_txn = SimpleNamespace(tu=None)
    call = Call(host, invite, server_txn, FLOW_A, plan, Caller("1001", "", "alpha.example"), Anchor())
    server_txn.tu = call  # as the service does: a CANCEL finds the call through it
    call.start_routing()
    leg = call.legs[0]
    ok = make_response(leg.invite, 200, None, to_tag="tb", body=SDP,
                       headers=[("Contact", "<sip:1002@127.0.0.1:5072>"), ("Content-Type", "application/sdp")])
    call.on_leg_response(leg, ok)
    assert call.state is CallState.ANSWERED and call.walker is not None
    call.hangup_both("test")
    assert call.state is CallState.ENDED
    return call, server_txn, leg, ok


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


async def test_an_ended_call_is_freed_without_the_collector_once_released(monkeypatch, no_gc):
    monkeypatch.setattr(call_mod, "RELEASE_AFTER_T1", 0.01)  # 5 ms instead of 40 s
    host = Host()
    call, server_txn, leg, ok = _answered_then_hung_up(host)
    assert call.walker is None  # dropped at the end already: nothing rings any more
    ref = weakref.ref(call)
    await asyncio.sleep(0.05)  # the release timer fires
    assert call.legs == [] and call.answered_leg is None and call.txn is None and leg.txn is None
    # the transactions end (the layer forgets them): nothing else holds the call
    del call, server_txn, leg, ok
    host.endpoint.txns.clear()
    assert ref() is None


async def test_without_the_release_only_the_collector_frees_it(monkeypatch, no_gc):
    """The counter-check: the same call, its cycles left in place, outlives its transactions."""
    monkeypatch.setattr(call_mod, "RELEASE_AFTER_T1", 0.01)
    monkeypatch.setattr(Call, "_release", lambda self: None)
    host = Host()
    call, server_txn, leg, ok = _answered_then_hung_up(host)
    ref = weakref.ref(call)
    await asyncio.sleep(0.05)
    del call, server_txn, leg, ok
    host.endpoint.txns.clear()
    assert ref() is not None
    gc.collect()
    assert ref() is None


async def test_a_late_2xx_after_the_release_is_still_acked(monkeypatch):
    monkeypatch.setattr(call_mod, "RELEASE_AFTER_T1", 0.01)
    host = Host()
    call, _, leg, ok = _answered_then_hung_up(host)
    await asyncio.sleep(0.05)
    acks = [m for m in host.endpoint.out if getattr(m, "method", None) == "ACK"]
    assert len(acks) == 1
    call.on_leg_response(leg, ok)  # B's 200 retransmitted: its transaction still points at the leg
    acks = [m for m in host.endpoint.out if getattr(m, "method", None) == "ACK"]
    assert len(acks) == 2 and acks[1] is acks[0]
