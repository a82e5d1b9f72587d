"""ACD replicas sharing queues over a bus: the in-process bus (one process, several services)
and Kafka (tansu broker, one client per node). Same scenarios, same expectations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from node.acd.events import CancelOffer, Connected, Offer, Overflow, Position
from node.acd.service import AcdService
from node.ports import EventBus
from tests.peers.kafka import kafka_broker  # noqa: F401  (fixture)

T = 7
WAIT = 15.0  # generous: two cores shared with other suites

NewNode = Callable[..., Awaitable[AcdService]]


@pytest.fixture(params=["embedded", "kafka"])
async def new_node(request) -> AsyncIterator[NewNode]:  # type: ignore[no-untyped-def]
    """``await new_node("A")``: one more started AcdService on this test's topic."""
    topic = f"hivepbx.acd.test.{uuid.uuid4().hex[:8]}"
    buses: list[EventBus] = []
    services: list[AcdService] = []
    shared = None
    if request.param == "embedded":
        from node.embedded.bus import InMemoryBus

        shared = InMemoryBus()

    async def make(node: str, **kw) -> AcdService:
        if shared is not None:
            bus: EventBus = shared
        else:
            from cluster.kafka import KafkaBus

            bus = KafkaBus(request.getfixturevalue("kafka_broker"), client_id=node, fetch_max_wait_ms=10)
            buses.append(bus)
        svc = AcdService(bus, node, topic=topic, partitions=3, **kw)
        await svc.start()
        services.append(svc)
        return svc

    yield make
    for svc in services:
        await svc.close()
    for bus in buses:
        await bus.close()
    if shared is not None:
        await shared.close()


async def settle(*nodes: AcdService) -> None:
    """Every node has applied everything any of them published."""
    marks = await nodes[0].sync(WAIT)
    for n in nodes[1:]:
        await n.caught_up(marks, WAIT)


async def test_two_nodes_agree_on_offers_and_order(new_node: NewNode) -> None:
    a = await new_node("A")
    b = await new_node("B")
    await a.configure_queue(T, "sales", {"members": ["101", "102"], "ring_timeout": 60})
    await b.login(T, "101")
    await b.login(T, "102")
    c1 = await a.join(T, "sales", "c1")
    c2 = await b.join(T, "sales", "c2")
    c3 = await a.join(T, "sales", "c3")
    o1 = await c1.next_of(Offer, timeout=WAIT)
    o2 = await c2.next_of(Offer, timeout=WAIT)
    assert {o1.agent, o2.agent} == {"101", "102"}  # one call per agent, whichever node queued it
    await settle(a, b)
    assert a.snapshot() == b.snapshot()
    assert a.queue_calls(T, "sales") == b.queue_calls(T, "sales") == ["c1", "c2", "c3"]
    assert [d for d in c3.pending() if isinstance(d, Offer)] == []

    await a.answered(T, "c1", o1.agent)
    assert await c1.next_of(Connected, timeout=WAIT) == Connected(T, "sales", "c1", o1.agent, "A")
    await a.ended(T, "c1")  # o1's agent is free: c3 (queued on A, next in line) gets it
    o3 = await c3.next_of(Offer, timeout=WAIT)
    assert o3.agent == o1.agent
    await settle(a, b)
    assert a.snapshot() == b.snapshot()
    assert b.agent_status(T, o3.agent) == "ringing"
    assert a.queue_report(T, "sales") == b.queue_report(T, "sales")
    assert a.queue_report(T, "sales")["answered"] == 1


async def test_late_node_catches_up_then_takes_calls(new_node: NewNode) -> None:
    a = await new_node("A")
    await a.configure_queue(T, "help", {"members": ["201"], "strategy": "ring-all", "ring_timeout": 60})
    await a.login(T, "201")
    c1 = await a.join(T, "help", "c1")
    assert (await c1.next_of(Offer, timeout=WAIT)).agent == "201"
    await a.answered(T, "c1", "201")
    c2 = await a.join(T, "help", "c2")
    c = await new_node("C")  # replays the log before it is ready
    assert c.ready
    assert c.agent_status(T, "201") == "on_call"
    assert c.queue_calls(T, "help") == ["c2"]
    c3 = await c.join(T, "help", "c3")
    pos = await c3.next_of(Position, timeout=WAIT)
    assert pos.position == 2
    await a.ended(T, "c1")
    assert (await c2.next_of(Offer, timeout=WAIT)).agent == "201"
    await a.left(T, "c2")  # the caller gives up while 201 rings
    assert (await c3.next_of(Offer, timeout=WAIT)).agent == "201"
    await settle(a, c)
    assert a.snapshot() == c.snapshot()
    assert c.queue_report(T, "help")["abandoned"] == 1


async def test_node_crash_frees_its_calls_and_agents(new_node: NewNode) -> None:
    a = await new_node("A")
    b = await new_node("B")
    await b.configure_queue(T, "q", {"members": ["301"], "ring_timeout": 60})
    await b.login(T, "301")
    a1 = await a.join(T, "q", "a1")
    assert (await a1.next_of(Offer, timeout=WAIT)).agent == "301"
    b1 = await b.join(T, "q", "b1")
    assert (await b1.next_of(Position, timeout=WAIT)).position == 2
    watchers = []

    class FakeMembership:  # node.ports.Membership as far as follow() needs it
        def watch(self, cb):
            watchers.append(cb)
            return lambda: watchers.remove(cb)

    unwatch = b.follow(FakeMembership())
    await a.close()  # A crashes: no more events from it
    for cb in list(watchers):
        cb("joined", "Z", {})  # ignored
        cb("left", "A", None)  # membership (etcd) tells B
    unwatch()
    assert not watchers
    assert (await b1.next_of(Offer, timeout=WAIT)).agent == "301"
    await settle(b)
    assert b.queue_calls(T, "q") == ["b1"]
    assert b.queue_report(T, "q")["lost"] == 1


async def test_deadlines_fire_from_ticks(new_node: NewNode) -> None:
    a = await new_node("A")
    b = await new_node("B", tick_grace=0.5)
    await a.configure_queue(T, "q", {"members": ["401", "402"], "ring_timeout": 1, "retry_delay": 1,
                                     "max_wait": 3, "overflow": "ext:500"})
    await a.login(T, "401")
    await a.login(T, "402")
    c1 = await a.join(T, "q", "c1")
    first = await c1.next_of(Offer, timeout=WAIT)
    # nobody answers: the ring timeout moves the call to the other agent, then max wait overflows it
    cancel = await c1.next_of(CancelOffer, timeout=WAIT)
    assert (cancel.agent, cancel.reason) == (first.agent, "timeout")
    second = await c1.next_of(Offer, timeout=WAIT)
    assert second.agent != first.agent
    over = await c1.next_of(Overflow, timeout=WAIT)
    assert (over.destination, over.reason) == ("ext:500", "timeout")
    await settle(a, b)
    assert a.snapshot() == b.snapshot()
    assert b.queue_report(T, "q")["overflowed"] == 1


async def test_bad_records_are_skipped(new_node: NewNode) -> None:
    a = await new_node("A")
    await a._bus.publish(a._topic, "tenant:7", b"\xff not json")
    await a._bus.publish(a._topic, "tenant:7", b'{"t":"CallJoined","o":"x","s":1,"ts":1,"e":{"tenant":7}}')
    await a.configure_queue(T, "q", {"members": ["101"]})
    await a.login(T, "101")
    c = await a.join(T, "q", "c1")
    assert (await c.next_of(Offer, timeout=WAIT)).agent == "101"
    with pytest.raises(ValueError):
        await a.configure_queue(T, "q", {"strategy": "nope"})
    with pytest.raises(ValueError):
        await a.join(T, "q", "c1")  # already queued here


async def test_reading_resumes_after_a_bus_error() -> None:
    """A read failure (broker gone) must not stop the node's ACD: it reads on from where it was."""
    from node.embedded.bus import InMemoryBus

    class FlakyBus(InMemoryBus):
        failures = 1

        async def subscribe(self, topic, start=None):
            n = 0
            async for rec in super().subscribe(topic, start):
                n += 1
                if n == 5 and self.failures:
                    self.failures -= 1
                    raise ConnectionError("broker went away")
                yield rec

    bus = FlakyBus()
    a = AcdService(bus, "A", topic="acd.flaky", partitions=2)
    try:
        await a.start()
        await a.configure_queue(T, "q", {"members": ["101"]})
        await a.login(T, "101")
        qc = await a.join(T, "q", "c1")
        assert (await qc.next_of(Offer, timeout=WAIT)).agent == "101"
        assert bus.failures == 0
        await a.sync(WAIT)
        assert a.queue_report(T, "q")["offered"] == 1  # nothing applied twice, nothing lost
    finally:
        await a.close()


async def test_late_node_starts_from_a_snapshot(new_node: NewNode) -> None:
    a = await new_node("A", snapshot_every=4)
    await a.configure_queue(T, "q", {"members": ["501", "502"], "ring_timeout": 60})
    await a.login(T, "501")
    await a.login(T, "502")
    for i in range(6):
        qc = await a.join(T, "q", f"c{i}")
        off = await qc.next_of(Offer, timeout=WAIT)
        await a.answered(T, f"c{i}", off.agent)
        await a.ended(T, f"c{i}")
    await a.pause(T, "501")
    await a.pause(T, "502")
    waiting = await a.join(T, "q", "w1")
    await a.sync(WAIT)
    await asyncio.sleep(0.2)  # snapshots are written in the background
    c = await new_node("C", snapshot_every=4)
    assert c.restored, "C replayed the whole log instead of starting from a snapshot"
    marks = await a.sync(WAIT)
    await c.caught_up(marks, WAIT)
    assert c.snapshot() == a.snapshot()
    assert c.queue_report(T, "q")["answered"] == 6
    await c.unpause(T, "502")
    assert (await waiting.next_of(Offer, timeout=WAIT)).agent == "502"
