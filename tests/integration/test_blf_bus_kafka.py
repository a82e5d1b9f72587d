"""Busy lamps between two nodes over Kafka (the tansu broker): each node has its own bus
client, line states and subscription server; a call on node A lights the lamp on node B."""

from __future__ import annotations

import uuid

from cluster.kafka import KafkaBus
from node.pbx.blf_bus import LineStateSharing
from node.pbx.subscriptions import LineStates
from node.sip.events import DialogInfo
from tests.peers.kafka import kafka_broker  # noqa: F401  (fixture)
from tests.unit.pbx._fixtures import FakeSubscriptionServer
from tests.waiting import until


async def test_line_state_crosses_nodes_over_kafka(kafka_broker):  # noqa: F811
    topic = f"test.blf.{uuid.uuid4().hex[:8]}"
    nodes = []
    for node_id in ("a", "b"):
        bus = KafkaBus(kafka_broker, client_id=f"blf-{node_id}", fetch_max_wait_ms=20)
        server = FakeSubscriptionServer()
        lines = LineStates(server, config=None)  # type: ignore[arg-type]
        nodes.append((bus, server, lines, LineStateSharing(bus, lines, node_id, partitions=2, topic=topic)))
    try:
        for *_, share in nodes:
            await share.start()
        (_, _, lines_a, share_a), (_, server_b, lines_b, share_b) = nodes
        for state in ("early", "confirmed"):
            lines_a.update(3, "1002", DialogInfo("c1-b", "inv-1", "recipient", state, "sip:1001@alpha.example"))
        assert await until(lambda: [d.state for d in lines_b.dialogs(3, "1002")] == ["confirmed"], timeout=15.0)
        assert ("dialog", 3, "1002") in server_b.changes
        lines_a.update(3, "1002", DialogInfo("c1-b", "inv-1", "recipient", "terminated", "sip:1001@alpha.example"))
        assert await until(lambda: share_b.applied == 3, timeout=15.0)
        assert lines_b.dialogs(3, "1002") == [] and share_b.published == 0 and share_a.errors == 0
    finally:
        for bus, *_, share in nodes:
            await share.close()
            await bus.close()
