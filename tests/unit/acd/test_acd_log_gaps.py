"""A replica that missed records of the ACD log (retention deleted them before it read them)
never reads over the gap: it restarts the partition from a snapshot that covers it, or marks the
partition unhealthy and takes no decisions from it, instead of silently diverging.

The shared log is the in-process bus, whose ``delete_records`` drops a prefix as Kafka's
retention does; node B reads it through a bus that can hold its reader (a node paused or cut
off) or skip records (a client that jumps ahead the way ``auto_offset_reset`` does).
"""

from __future__ import annotations

import json
import logging
import uuid
import zlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from node.acd.events import Connected, Offer, Overflow
from node.acd.service import AcdService, PartitionUnhealthy, tenant_key
from node.embedded.bus import InMemoryBus
from tests.unit.acd.heldbus import HeldBus, until

WAIT = 10.0


def partition_of(tenant: int, partitions: int) -> int:
    """Where the in-process bus puts a tenant's key."""
    return zlib.crc32(tenant_key(tenant).encode()) % partitions


def newest_snapshot(bus: InMemoryBus, topic: str, p: int) -> int:
    offs = [json.loads(v)["offset"] for k, v in bus._topics[topic + ".snapshots"].logs[0] if k == f"partition:{p}"]
    return max(offs, default=-1)


def gaps(outcome: str) -> float:
    return REGISTRY.get_sample_value("hivepbx_acd_log_gaps_total", {"outcome": outcome}) or 0.0


@pytest.fixture
async def shared() -> AsyncIterator[tuple[InMemoryBus, str, list[AcdService]]]:
    bus = InMemoryBus()
    services: list[AcdService] = []
    yield bus, f"acd.gaps.{uuid.uuid4().hex[:8]}", services
    for s in services:
        await s.close()
    await bus.close()


async def _pair(bus, topic, services, **kw):  # type: ignore[no-untyped-def]
    """Node A on the bus and node B behind a HeldBus (its reader can be paused or made to skip)."""
    a = AcdService(bus, "A", topic=topic, **kw)
    b_bus = HeldBus(bus)
    b = AcdService(b_bus, "B", topic=topic, **kw)
    services += [a, b]
    await a.start()
    await b.start()
    return a, b, b_bus


async def test_a_node_behind_the_retention_restarts_from_a_snapshot(shared) -> None:  # type: ignore[no-untyped-def]
    bus, topic, services = shared
    T = 3
    a, b, b_bus = await _pair(bus, topic, services, partitions=1, snapshot_every=5)
    await a.configure_queue(T, "q", {"members": ["101"], "ring_timeout": 60})
    qc = await b.join(T, "q", "b1")
    q0 = await b.join(T, "q", "b0")
    await b.caught_up(await a.sync(WAIT), WAIT)
    before = gaps("resynced")

    await b_bus.hold(lambda: a.sync(WAIT))  # B is paused: it reads nothing while the log moves on and retention passes it
    await a.login(T, "101")  # the log offers B's caller to 101: B does not see it yet
    await a.left(T, "b0")  # (as if) b0 left: B does not see it either
    for i in range(12):
        await a.login(T, f"filler{i}")
    await a.sync(WAIT)
    await until(lambda: newest_snapshot(bus, topic, 0) >= a.applied[0] - 5, "A's snapshot")
    cut = newest_snapshot(bus, topic, 0)
    assert cut > b.applied[0] + 1
    q2 = await b.join(T, "q", "b2")  # B still publishes: this one is after the snapshot
    bus.delete_records(topic, {0: cut + 1})  # everything up to the snapshot is gone
    b_bus.release()

    await b.caught_up(await a.sync(WAIT), WAIT)
    assert b.unhealthy == {}
    assert b.snapshot() == a.snapshot()  # the replicas agree again
    assert gaps("resynced") == before + 1
    offer = await qc.next_of(Offer, timeout=WAIT)  # the offer B missed still reaches its caller
    assert offer.agent == "101"
    assert (await q0.next_of(Overflow, timeout=WAIT)).reason == "resync"  # gone meanwhile: how, B cannot know
    assert not q2.done and a.queue_calls(T, "q") == b.queue_calls(T, "q") == ["b1", "b2"]
    await b.answered(T, "b1", "101")
    assert (await qc.next_of(Connected, timeout=WAIT)).agent == "101"
    await b.caught_up(await a.sync(WAIT), WAIT)
    assert a.agent_status(T, "101") == b.agent_status(T, "101") == "on_call"


async def test_without_a_covering_snapshot_the_partition_is_unhealthy_until_one_appears(shared, caplog) -> None:  # type: ignore[no-untyped-def]
    bus, topic, services = shared
    caplog.set_level(logging.ERROR, logger="node.acd.service")
    lost, kept = next((t, u) for t in range(1, 50) for u in range(1, 50)
                      if partition_of(t, 2) == 0 and partition_of(u, 2) == 1)
    a, b, b_bus = await _pair(bus, topic, services, partitions=2, snapshot_every=40, resync_every=0.05)
    for t in (lost, kept):
        await a.configure_queue(t, "q", {"members": ["101"], "ring_timeout": 60})
    b1 = await b.join(lost, "q", "b1")
    b2 = await b.join(kept, "q", "b2")
    await b.caught_up(await a.sync(WAIT), WAIT)
    assert newest_snapshot(bus, topic, 0) == -1
    before = gaps("unhealthy")

    await b_bus.hold(lambda: a.sync(WAIT))
    await a.login(lost, "filler")
    await a.sync(WAIT)
    cut = a.applied[0] + 1
    bus.delete_records(topic, {0: cut})  # the records B needs are gone, no snapshot has them
    b_bus.release()

    await until(lambda: 0 in b.unhealthy, "partition 0 unhealthy on B")
    assert set(b.unhealthy) == {0}  # the other partition goes on
    assert gaps("unhealthy") == before + 1
    assert b.health()["unhealthy"].keys() == {"0"}
    assert REGISTRY.get_sample_value("hivepbx_acd_unhealthy_partitions") >= 1
    rec = next(r for r in caplog.records if "unhealthy" in r.getMessage())
    assert rec.acd_partition == 0 and rec.log_start == cut  # type: ignore[attr-defined]
    # its caller leaves the queue (call control hangs up or overflows) instead of waiting blind
    d = await b1.next_of(Overflow, timeout=WAIT)
    assert (d.reason, d.destination) == ("unavailable", None)
    stuck = b.applied[0]
    marks = await a.sync(WAIT)
    await b.caught_up([m for m in marks if m[0] == 1], WAIT)
    with pytest.raises(PartitionUnhealthy):
        await b.caught_up([m for m in marks if m[0] == 0], WAIT)
    assert b.applied[0] == stuck  # nothing applied from the diverged state
    assert a.queue_calls(lost, "q") == []  # B took its caller out of the shared queue
    assert a.queue_calls(kept, "q") == b.queue_calls(kept, "q") == ["b2"]
    assert not b2.done
    b3 = await b.join(lost, "q", "b3")  # new callers of that tenant are refused at once
    assert (await b3.next(WAIT)).reason == "unavailable"
    with pytest.raises(PartitionUnhealthy):
        await b.sync(WAIT)
    # a node that starts now cannot rebuild partition 0 either, but starts and says so
    c = AcdService(bus, "C", topic=topic, partitions=2, snapshot_every=40, resync_every=0.05)
    services.append(c)
    await c.start()
    assert set(c.unhealthy) == {0} and c.ready

    # A keeps writing snapshots: the first one past the log start rebuilds B and C
    for i in range(45):
        await a.login(lost, f"more{i}")
    await until(lambda: not b.unhealthy and not c.unhealthy, "partition 0 healthy again")
    marks = await a.sync(WAIT)
    await b.caught_up(marks, WAIT)
    await c.caught_up(marks, WAIT)
    assert a.snapshot() == b.snapshot() == c.snapshot()
    assert b.health()["unhealthy"] == {}


async def test_a_reader_that_skips_records_is_caught(shared) -> None:  # type: ignore[no-untyped-def]
    """What Kafka's ``auto_offset_reset`` does: the reader jumps ahead without an error. The
    service sees the offsets jump and does not apply over the hole."""
    bus, topic, services = shared
    T = 4
    a, b, b_bus = await _pair(bus, topic, services, partitions=1, snapshot_every=0)
    await a.configure_queue(T, "q", {"members": ["101"]})
    await b.caught_up(await a.sync(WAIT), WAIT)
    b_bus.skip.add((0, a.applied[0] + 1))
    await a.login(T, "101")  # B never sees this record
    await a.sync(WAIT)
    await until(lambda: 0 in b.unhealthy, "partition 0 unhealthy on B")
    assert "snapshots are off" in b.unhealthy[0]
    assert b.agent_status(T, "101") == "logged_out"  # stale, but nothing is decided from it
    assert a.agent_status(T, "101") == "available"


async def test_the_node_health_reports_an_unhealthy_partition(shared) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from node.runtime.app import Node

    bus, topic, services = shared
    a = AcdService(bus, "A", topic=topic, partitions=2, snapshot_every=0)
    services.append(a)
    await a.start()
    svc = SimpleNamespace(draining=False, health=lambda: {})
    node = SimpleNamespace(service=svc, trunks=None, cdr_spool=None, backend=None, acd=a)
    ok = await Node.health(node)  # type: ignore[arg-type]
    assert ok["status"] == "ok" and ok["acd"]["unhealthy"] == {}
    await a.login(5, "x")
    await a.sync(WAIT)
    for p in range(2):
        bus.delete_records(topic, {p: a.applied[p] + 1})
    late = AcdService(bus, "B", topic=topic, partitions=2, snapshot_every=0)
    services.append(late)
    await late.start()  # everything it needs is gone
    node.acd = late
    bad = await Node.health(node)  # type: ignore[arg-type]
    assert bad["status"] == "ok"  # reported, not a 503 that would take every node out at once
    assert set(bad["acd"]["unhealthy"]) == {"0", "1"}
    assert "snapshots are off" in bad["acd"]["unhealthy"]["0"]
