"""Busy lamps shared between nodes over the event bus (the in-memory bus stands for Kafka)."""

from __future__ import annotations

import asyncio

import pytest

from node.embedded.bus import InMemoryBus
from node.pbx.blf_bus import TOPIC, LineStateSharing, decode, encode
from node.pbx.subscriptions import LineStates
from node.sip.events import DialogInfo
from tests.unit.pbx._fixtures import FakeSubscriptionServer
from tests.waiting import until


def _node(bus, node_id, now=lambda: 1000.0):
    server = FakeSubscriptionServer()
    lines = LineStates(server, config=None)  # type: ignore[arg-type]
    return server, lines, LineStateSharing(bus, lines, node_id, clock=now)




async def test_a_call_on_one_node_lights_the_lamp_on_the_other():
    bus = InMemoryBus()
    _, lines_a, share_a = _node(bus, "a")
    server_b, lines_b, share_b = _node(bus, "b")
    await share_a.start()
    await share_b.start()
    try:
        ring = DialogInfo("call-1-b", "inv-1", "recipient", "early", "sip:1001@alpha.example")
        lines_a.update(7, "1002", ring)
        assert await until(lambda: lines_b.dialogs(7, "1002") == [ring], timeout=2.0), "not reached"
        assert ("dialog", 7, "1002") in server_b.changes and ("presence", 7, "1002") in server_b.changes
        lines_a.update(7, "1002", DialogInfo("call-1-b", "inv-1", "recipient", "confirmed", "sip:1001@alpha.example"))
        lines_a.update(7, "1002", DialogInfo("call-1-b", "inv-1", "recipient", "terminated", "sip:1001@alpha.example"))
        assert await until(lambda: share_b.applied == 3, timeout=2.0), "not reached"
        assert lines_b.dialogs(7, "1002") == []
        assert lines_a.dialogs(8, "1002") == [] and lines_b.dialogs(8, "1002") == []  # other tenant untouched
        # b applied a's records without echoing them back: only a's 3 records are on the bus
        assert share_a.published == 3 and share_b.published == 0
        assert share_a.applied == 0  # its own records are not applied twice
    finally:
        await share_a.close()
        await share_b.close()
        await bus.close()


async def test_a_starting_node_learns_current_state_and_skips_stale_and_bad_records():
    bus = InMemoryBus()
    await bus.ensure_topic(TOPIC, 4)
    live = DialogInfo("c-live", "x", "initiator", "confirmed", "sip:2@a")
    now = 100_000.0
    await bus.publish(TOPIC, "7:1001", encode("a", 7, "1001", live, now - 60))
    await bus.publish(TOPIC, "7:1003", encode("dead", 7, "1003", DialogInfo("c-old", "y", "initiator", "confirmed"),
                                                now - 7 * 3600))
    await bus.publish(TOPIC, "7:1004", b"not json")
    _, lines, share = _node(bus, "b", now=lambda: now)
    await share.start()
    try:
        assert await until(lambda: share.errors == 1, timeout=2.0), "not reached"
        await asyncio.sleep(0.05)
        assert share.applied == 1
        assert lines.dialogs(7, "1001") == [live]
        assert lines.dialogs(7, "1003") == []  # older than stale_after: a dead node's call
    finally:
        await share.close()
        await bus.close()


def test_record_round_trip_and_validation():
    info = DialogInfo("d", "c", "recipient", "early", "sip:1@a", "Ann")
    assert decode(encode("n1", 3, "1002", info, 5.0)) == ("n1", 3, "1002", info, 5.0)
    with pytest.raises(ValueError):
        decode(b'{"node":"n","tenant":1,"ext":"1","at":1,"id":"d","call_id":"c","direction":"up","state":"early"}')
    with pytest.raises(ValueError):
        decode(b'{"node":"n"}')
