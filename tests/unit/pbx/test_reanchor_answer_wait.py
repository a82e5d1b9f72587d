"""node/pbx/reanchor.py's bounded wait for a re-INVITE's answer (NodeConfig
``reanchor_answer_wait``, 0.2 s here): a party that never answers the move counts as
refused within seconds (not the 32 s transaction timeout), its re-INVITE is CANCELled as
RFC 3261 §9.1 allows (only after a provisional), the other party goes back to rtpengine,
and a 2xx that still comes is moved back too.
The real thing with SIPp: tests/interop/pbx/test_rtpengine_features_sipp.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.pbx import reanchor
from node.sip.message import make_response
from tests.unit.pbx.test_call_awaited_media import SDP_B
from tests.unit.pbx.test_reanchor import _answer, _answered_call, _port, _reinvites


def _cancels(host):
    return [m for k, m in host.endpoint.out if k == "request" and m.method == "CANCEL"]


async def test_a_silent_party_is_cancelled_and_the_move_rolled_back():
    host, anchor, call = await _answered_call(answer_wait=0.2)
    refused = reanchor.REANCHORS.labels("refused")._value.get()
    t0 = time.monotonic()
    task = asyncio.create_task(reanchor.make_local(call))
    await asyncio.sleep(0.01)
    sent = {s: (req, txn) for s, req, txn in _reinvites(host)}
    req_a, txn_a = sent["a"]
    txn_a.tu.on_sip_response(make_response(req_a, 100, None), txn_a)  # Trying, then nothing
    req_b, txn_b = sent["b"]
    txn_b.tu.on_sip_response(_answer(req_b, 200, SDP_B), txn_b)
    await asyncio.sleep(0.4)
    (cancel,) = _cancels(host)
    # §9.1: the CANCEL matches the re-INVITE (same branch, To with tag, CSeq number)
    assert cancel.get("Via") == req_a.get("Via") and cancel.get("To") == req_a.get("To")
    assert cancel.cseq.seq == req_a.cseq.seq and cancel.call_id == req_a.call_id
    back = [r for r in _reinvites(host)[2:]]
    assert [s for s, _, _ in back] == ["b"] and _port(back[0][1].body) == 30002  # b goes back to rtpengine
    back[0][2].tu.on_sip_response(_answer(back[0][1], 200, SDP_B), back[0][2])
    with pytest.raises(reanchor.ReanchorError) as e:
        await asyncio.wait_for(task, 1)
    assert time.monotonic() - t0 < 2.0
    assert e.value.status == 408 and "no answer" in e.value.reason
    assert call.media is anchor and anchor.opened[0].session.closed and call.reanchor is None
    assert call.pending == {"a": None, "b": None}
    assert reanchor.REANCHORS.labels("refused")._value.get() == refused + 1
    # the 487 to the cancelled re-INVITE changes nothing
    txn_a.tu.on_sip_response(make_response(req_a, 487, None), txn_a)
    assert len(_reinvites(host)) == 3
    call.hangup_both("test")


async def test_no_cancel_before_a_provisional_and_a_late_2xx_is_moved_back():
    host, anchor, call = await _answered_call(answer_wait=0.2)
    task = asyncio.create_task(reanchor.make_local(call, ("a",)))
    await asyncio.sleep(0.01)
    ((_, req, txn),) = _reinvites(host)
    with pytest.raises(reanchor.ReanchorError) as e:
        await asyncio.wait_for(task, 1)
    assert e.value.status == 408 and call.media is anchor
    assert _cancels(host) == []  # no provisional yet: RFC 3261 §9.1 forbids the CANCEL
    txn.tu.on_sip_response(make_response(req, 180, None), txn)
    assert len(_cancels(host)) == 1  # sent once a provisional came
    # the 2xx crossed the CANCEL: ACKed, then the party is offered rtpengine's SDP again
    txn.tu.on_sip_response(_answer(req), txn)
    assert [m.cseq.seq for m in host.endpoint.sent("stateless", "ACK")] == [req.cseq.seq]
    again = _reinvites(host)[1:]
    assert [s for s, _, _ in again] == ["a"] and _port(again[0][1].body) == 30000
    again[0][2].tu.on_sip_response(_answer(again[0][1]), again[0][2])
    assert len(_reinvites(host)) == 2  # nothing more
    call.hangup_both("test")
