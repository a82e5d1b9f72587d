"""Three nodes queue calls at once and answer their offers as they come: whatever interleaving
the bus gives, every call is served exactly once, no agent ever rings for two calls, and all
nodes end with the same state as a fresh replay of the log."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest

from node.acd.engine import AcdEngine
from node.acd.events import CancelOffer, Connected, Offer, decode
from node.acd.service import AcdService
from node.ports import EventBus
from tests.peers.kafka import kafka_broker  # noqa: F401  (fixture)
from tests.unit.acd.logbuilder import check_invariants

T = 3
AGENTS = ["101", "102", "103", "104"]
CALLS_PER_NODE = 6
WAIT = 30.0


@pytest.fixture(params=["embedded", "kafka"])
async def cluster(request) -> AsyncIterator[tuple[list[AcdService], EventBus, str]]:  # type: ignore[no-untyped-def]
    topic = f"hivepbx.acd.test.{uuid.uuid4().hex[:8]}"
    buses: list[EventBus] = []
    if request.param == "embedded":
        from node.embedded.bus import InMemoryBus

        shared = InMemoryBus()
        buses = [shared]
        make_bus = lambda node: shared  # noqa: E731
    else:
        from cluster.kafka import KafkaBus

        def make_bus(node: str) -> EventBus:
            b = KafkaBus(request.getfixturevalue("kafka_broker"), client_id=node, fetch_max_wait_ms=10)
            buses.append(b)
            return b
    nodes = [AcdService(make_bus(n), n, topic=topic, partitions=2) for n in ("A", "B", "C")]
    for n in nodes:
        await n.start()
    yield nodes, buses[0], topic
    for n in nodes:
        await n.close()
    for b in buses:
        await b.close()


async def _caller(node: AcdService, call: str, rng: random.Random) -> str:
    """Join, answer the first offer (or decline now and then), talk briefly, hang up."""
    qc = await node.join(T, "q", call, priority=rng.choice([0, 0, 1]))
    while True:
        d = await qc.next_of(Offer, Connected, CancelOffer, timeout=WAIT)
        if isinstance(d, Offer):
            if rng.random() < 0.2:
                await node.declined(T, call, d.agent)
            else:
                await node.answered(T, call, d.agent)
        elif isinstance(d, Connected):
            await asyncio.sleep(rng.uniform(0, 0.05))
            await node.ended(T, call)
            return d.agent


async def test_concurrent_callers_on_three_nodes(cluster) -> None:  # type: ignore[no-untyped-def]
    nodes, bus, topic = cluster
    a = nodes[0]
    await a.configure_queue(T, "q", {"members": AGENTS, "strategy": "round-robin", "retry_delay": 1,
                                     "ring_timeout": 30})
    for ag in AGENTS:
        await nodes[AGENTS.index(ag) % 3].login(T, ag)
    rng = random.Random(7)
    jobs = [_caller(n, f"{n.node}-{i}", random.Random(rng.random())) for n in nodes for i in range(CALLS_PER_NODE)]
    served = await asyncio.wait_for(asyncio.gather(*jobs), 90)
    assert len(served) == 3 * CALLS_PER_NODE and set(served) <= set(AGENTS)
    for _ in range(int(WAIT * 10)):  # let declined agents' rests run out (their ticks come last)
        if all(e.next_deadline() is None for n in nodes for e in n._engines):
            break
        await asyncio.sleep(0.1)
    marks = await a.sync(WAIT)
    for n in nodes[1:]:
        await n.caught_up(marks, WAIT)
    assert nodes[0].snapshot() == nodes[1].snapshot() == nodes[2].snapshot()
    rep = a.queue_report(T, "q")
    assert (rep["offered"], rep["answered"], rep["waiting"]) == (18, 18, 0)
    # replay the whole log in a fresh engine per partition, checking the invariants at each step
    replay = [AcdEngine() for _ in range(len(a.snapshot()))]
    it = bus.subscribe(topic)
    upto = dict(marks)
    left = set(upto)

    async def run() -> None:
        async for rec in it:
            if rec.offset > upto[rec.partition]:
                continue
            ds = replay[rec.partition].apply(rec.offset, decode(rec.value))
            check_invariants(replay[rec.partition], [d for d in ds if isinstance(d, Offer)])
            if rec.offset == upto[rec.partition]:
                left.discard(rec.partition)
                if not left:
                    return

    try:
        await asyncio.wait_for(run(), WAIT)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    assert tuple(e.snapshot() for e in replay) == a.snapshot()
