"""Kafka-specific ACD log behaviour: at-least-once delivery and node restarts."""

from __future__ import annotations

import asyncio
import uuid

from cluster.kafka import KafkaBus
from node.acd.events import CallJoined, Envelope, Offer, Position, encode
from node.acd.service import AcdService, tenant_key
from tests.peers.kafka import kafka_broker  # noqa: F401  (fixture)

T = 5
WAIT = 15.0


async def test_a_record_delivered_twice_counts_once(kafka_broker: str) -> None:  # noqa: F811
    topic = f"hivepbx.acd.test.{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(kafka_broker, fetch_max_wait_ms=10)
    svc = AcdService(bus, "A", topic=topic, partitions=2)
    try:
        await svc.start()
        await svc.configure_queue(T, "q", {"members": ["101"]})
        # what a producer retry after a lost ack leaves: the same envelope at two offsets
        raw = encode(Envelope("other/1", 1, 1.0, CallJoined(T, "q", "x1", "other")))
        first = await bus.publish(topic, tenant_key(T), raw)
        second = await bus.publish(topic, tenant_key(T), raw)
        assert first[0] == second[0] and second[1] > first[1]
        await svc.sync(WAIT)
        assert svc.queue_calls(T, "q") == ["x1"]
        assert svc.queue_report(T, "q")["offered"] == 1
    finally:
        await svc.close()
        await bus.close()


async def test_restarted_node_clears_its_previous_calls(kafka_broker: str) -> None:  # noqa: F811
    topic = f"hivepbx.acd.test.{uuid.uuid4().hex[:8]}"
    buses = [KafkaBus(kafka_broker, client_id=f"c{i}", fetch_max_wait_ms=10) for i in range(3)]
    a = AcdService(buses[0], "A", topic=topic, partitions=2)
    b = AcdService(buses[1], "B", topic=topic, partitions=2)
    a2 = AcdService(buses[2], "A", topic=topic, partitions=2)
    try:
        await a.start()
        await b.start()
        await a.configure_queue(T, "q", {"members": ["101"]})
        await a.join(T, "q", "a-old")
        bq = await b.join(T, "q", "b1")
        assert (await bq.next_of(Position, timeout=WAIT)).position == 2
        await a.close()  # A crashes and comes back before membership noticed
        await a2.start()
        assert a2.queue_calls(T, "q") == ["b1"]
        assert (await bq.next_of(Position, timeout=WAIT)).position == 1
        await a2.login(T, "101")
        assert (await bq.next_of(Offer, timeout=WAIT)).agent == "101"
    finally:
        for s in (a, b, a2):
            await s.close()
        await asyncio.gather(*(x.close() for x in buses))


async def test_open_bus_from_node_config(kafka_broker: str) -> None:  # noqa: F811
    from types import SimpleNamespace

    from cluster.kafka import open_bus

    assert open_bus(SimpleNamespace(kafka_bootstrap=())) is None
    bus = open_bus(SimpleNamespace(kafka_bootstrap=(kafka_broker,), node_id="n1"))
    assert bus is not None
    try:
        topic = f"hivepbx.acd.test.{uuid.uuid4().hex[:8]}"
        assert await bus.ensure_topic(topic, 2) == 2
        assert (await bus.publish(topic, "k", b"v"))[1] == 0
    finally:
        await bus.close()


async def _snapshot_at(bus: KafkaBus, topic: str, at_least: int) -> int:
    """Wait until the snapshot topic holds a snapshot of partition 0 at ``at_least`` or later."""
    import json

    it = bus.subscribe(topic + ".snapshots")

    async def read() -> int:
        async for rec in it:
            if rec.key == "partition:0" and json.loads(rec.value)["offset"] >= at_least:
                return int(json.loads(rec.value)["offset"])
        raise AssertionError("snapshot topic closed")

    try:
        return await asyncio.wait_for(read(), WAIT)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_a_replica_that_missed_records_restarts_from_a_snapshot(kafka_broker: str) -> None:  # noqa: F811
    """On the broker: B's reader loses records (tansu cannot delete records, so B's view hides
    them, as a client that jumps ahead would); B does not apply over the hole, reads the
    snapshot A wrote past it from the broker and reads on from there, and agrees with A."""
    from tests.unit.acd.heldbus import HeldBus

    topic = f"hivepbx.acd.test.{uuid.uuid4().hex[:8]}"
    buses = [KafkaBus(kafka_broker, client_id=f"g{i}", fetch_max_wait_ms=10) for i in range(3)]
    b_bus = HeldBus(buses[1])
    b_bus.topic = topic  # the snapshot topic reads normally
    a = AcdService(buses[0], "A", topic=topic, partitions=1, snapshot_every=5)
    b = AcdService(b_bus, "B", topic=topic, partitions=1, snapshot_every=5)
    try:
        await a.start()
        await b.start()
        await a.configure_queue(T, "q", {"members": ["101"], "ring_timeout": 60})
        qc = await b.join(T, "q", "b1")
        await b.caught_up(await a.sync(WAIT), WAIT)
        await b_bus.hold(lambda: a.sync(WAIT))
        first = a.applied[0] + 1
        b_bus.skip = {(0, o) for o in range(first, first + 8)}  # B never gets these
        await a.login(T, "101")  # offers B's caller to 101
        for i in range(11):
            await a.login(T, f"filler{i}")
        await a.sync(WAIT)
        assert await _snapshot_at(buses[2], topic, first + 7) >= first + 7
        b_bus.release()
        await b.caught_up(await a.sync(WAIT), WAIT)
        assert b.unhealthy == {}
        assert b.snapshot() == a.snapshot()
        assert (await qc.next_of(Offer, timeout=WAIT)).agent == "101"  # the offer B missed
    finally:
        for s in (a, b):
            await s.close()
        await asyncio.gather(*(x.close() for x in buses))
