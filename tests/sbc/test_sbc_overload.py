"""Load shedding (sbc/overload.py): past capacity new calls get 503 + Retry-After at once,
in-dialog requests still pass; the meter's hysteresis ignores one slow loop turn."""

from __future__ import annotations

import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from node.sip.flow import Flow  # noqa: E402
from node.sip.parser import parse_datagram  # noqa: E402
from sbc.overload import LoadMeter  # noqa: E402
from sbc_inproc import PHONE, SBC, _invite, _Peers, build  # noqa: E402


def test_meter_refuses_a_share_growing_with_the_wait():
    m = LoadMeter(0.15, alpha=1.0)
    assert m.observe(0.07) == 0.0 and not m.shedding  # below half of max_lag: nothing refused
    assert m.observe(0.1125) == pytest.approx(0.5)
    assert sum(m.refuse() for _ in range(100)) == 50  # exactly that share, spread evenly
    assert m.observe(0.5) == 1.0 and all(m.refuse() for _ in range(10))
    m.observe(0.0)
    assert not m.shedding and not any(m.refuse() for _ in range(10))
    smooth = LoadMeter(0.15)  # one slow turn (a GC pause) refuses half for one tick, no more
    assert smooth.observe(0.225) == pytest.approx(0.5)
    assert smooth.observe(0.0) == pytest.approx(0.0, abs=1e-9) and smooth.observe(0.0) == 0.0


def _run(peers, proxy, items):
    for data, flow in items:
        proxy.message_received(parse_datagram(data), flow)
    peers.react()


async def test_shedding_refuses_new_calls_and_lets_taken_ones_finish():
    peers = _Peers()
    proxy, endpoint = build(peers)
    phone = Flow("udp", PHONE, SBC)
    _run(peers, proxy, [(_invite(1), phone)])  # call 1 is taken before the overload
    proxy.load.fraction = 1.0
    sent_before = len(peers.to_sbc)
    peers.outbox.clear()
    proxy.message_received(parse_datagram(_invite(2)), phone)
    (data, flow), = peers.outbox
    resp = parse_datagram(data)
    assert resp.status == 503 and resp.get("Retry-After") == "2" and resp.call_id == "call-2@127.0.0.2"
    assert flow.remote == PHONE
    peers.outbox.clear()
    # a retransmission of call 1's INVITE is absorbed by its transaction, not refused
    proxy.message_received(parse_datagram(_invite(1)), phone)
    assert all(parse_datagram(d).status != 503 for d, _ in peers.outbox)
    peers.outbox.clear()
    # call 1 goes on: the node's answers, then the phone's ACK and BYE (in-dialog) pass
    for _ in range(6):
        if not peers.to_sbc:
            break
        batch, peers.to_sbc = peers.to_sbc, []
        _run(peers, proxy, batch)
    assert sent_before and peers.done == 1 and peers.failed == 0
