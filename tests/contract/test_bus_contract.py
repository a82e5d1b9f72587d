"""What every node.ports.EventBus must do: the in-process bus and Kafka (tansu broker) alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from node.ports import BusRecord, EventBus, LogGap
from tests.peers.kafka import kafka_broker  # noqa: F401  (fixture)

BUSES = ["embedded", "kafka"]


@pytest.fixture(params=BUSES)
async def bus(request) -> AsyncIterator[EventBus]:  # type: ignore[no-untyped-def]
    if request.param == "embedded":
        from node.embedded.bus import InMemoryBus

        b: EventBus = InMemoryBus()
    else:
        from cluster.kafka import KafkaBus

        b = KafkaBus(request.getfixturevalue("kafka_broker"), fetch_max_wait_ms=20)
    yield b
    await b.close()


@pytest.fixture
def topic() -> str:
    return f"test.bus.{uuid.uuid4().hex[:10]}"


async def _read(bus: EventBus, topic: str, count: int, start: dict[int, int] | None = None) -> list[BusRecord]:
    out: list[BusRecord] = []
    it = bus.subscribe(topic, start)

    async def run() -> None:
        async for rec in it:
            out.append(rec)
            if len(out) >= count:
                return

    try:
        await asyncio.wait_for(run(), 15)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return out


async def test_topic_partitions(bus: EventBus, topic: str) -> None:
    assert await bus.ensure_topic(topic, 3) == 3
    assert await bus.ensure_topic(topic, 8) == 3  # an existing topic keeps its count
    assert await bus.partitions(topic) == 3
    with pytest.raises(ValueError):
        await bus.ensure_topic(topic, 0)


async def test_per_key_order_offsets_and_replay(bus: EventBus, topic: str) -> None:
    await bus.ensure_topic(topic, 4)
    keys = [f"tenant{i}" for i in range(6)]
    sent: dict[str, list[tuple[int, int, bytes]]] = {k: [] for k in keys}
    for n in range(10):
        for k in keys:
            v = f"{k}/{n}".encode()
            p, off = await bus.publish(topic, k, v)
            sent[k].append((p, off, v))
    for k in keys:
        parts = {p for p, _, _ in sent[k]}
        assert len(parts) == 1, f"key {k} spread over partitions {parts}"
        offs = [o for _, o, _ in sent[k]]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    got = await _read(bus, topic, 60)
    assert len(got) == 60
    for k in keys:
        mine = [(r.partition, r.offset, r.value) for r in got if r.key == k]
        assert mine == sent[k]  # same partition, offsets and order as published
    # offsets within a partition are increasing and unique as read
    for p in range(4):
        offs = [r.offset for r in got if r.partition == p]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    # replay from an offset: only what follows
    p0, from_off, _ = sent[keys[0]][5]
    expect = [(r.offset, r.value) for r in got if r.partition == p0 and r.offset >= from_off]
    # the other partitions from their end (never past it: Kafka would reset to the earliest)
    ends = {r.partition: r.offset + 1 for r in got}
    later = await _read(bus, topic, len(expect), ends | {p0: from_off})
    assert [(r.offset, r.value) for r in later] == expect
    assert [r.value for r in later if r.key == keys[0]] == [v for _, _, v in sent[keys[0]][5:]]


async def test_live_delivery_to_two_subscribers(bus: EventBus, topic: str) -> None:
    await bus.ensure_topic(topic, 2)
    await bus.publish(topic, "a", b"before")
    readers = [asyncio.create_task(_read(bus, topic, 21)) for _ in range(2)]
    await asyncio.sleep(0.3)
    for i in range(20):
        await bus.publish(topic, "a" if i % 2 else "b", str(i).encode())
    a, b = await asyncio.gather(*readers)
    def per_partition(recs: list[BusRecord]) -> dict[int, list[tuple[int, bytes]]]:
        out: dict[int, list[tuple[int, bytes]]] = {}
        for r in recs:
            out.setdefault(r.partition, []).append((r.offset, r.value))
        return out
    assert per_partition(a) == per_partition(b)
    assert sorted(r.value for r in a) == sorted([b"before"] + [str(i).encode() for i in range(20)])


async def test_explicit_partition_broadcast(bus: EventBus, topic: str) -> None:
    n = await bus.ensure_topic(topic, 3)
    placed = [await bus.publish(topic, "node-left", b"x", partition=p) for p in range(n)]
    assert [p for p, _ in placed] == list(range(n))
    got = await _read(bus, topic, n)
    assert sorted(r.partition for r in got) == list(range(n))
    with pytest.raises(ValueError):
        await bus.publish(topic, "k", b"x", partition=n)
    with pytest.raises(ValueError):
        await bus.publish(topic, "k", "not bytes")  # type: ignore[arg-type]


async def test_offsets_in_a_partition_have_no_holes(bus: EventBus, topic: str) -> None:
    """Readers that must not miss a record (the ACD replicas) rely on it: on a topic that is not
    compacted and gets no transactions, a jump in offsets means records are missing."""
    await bus.ensure_topic(topic, 2)
    placed = [await bus.publish(topic, "k", str(i).encode(), partition=1) for i in range(30)]
    assert [off for _, off in placed] == list(range(30))
    got = await _read(bus, topic, 30, {1: 0})  # explicit 0: "I need offset 0", not "the earliest"
    assert [(r.partition, r.offset, r.value) for r in got] == [(1, i, str(i).encode()) for i in range(30)]


async def test_embedded_unknown_topic_is_lookup_error() -> None:
    from node.embedded.bus import InMemoryBus

    with pytest.raises(LookupError):
        await InMemoryBus().partitions("no.such.topic")


async def test_embedded_retention_keeps_offsets_counting() -> None:
    from node.embedded.bus import InMemoryBus

    bus = InMemoryBus(max_records=10)
    await bus.ensure_topic("t", 1)
    offs = [(await bus.publish("t", "k", str(i).encode()))[1] for i in range(30)]
    assert offs == list(range(30))
    got = await _read(bus, "t", 10)  # from "earliest": what is left (at least the last 10), offsets unchanged
    first = got[0].offset
    assert 18 <= first <= 20
    assert [r.offset for r in got] == list(range(first, first + 10))
    assert [r.value for r in got] == [str(i).encode() for i in range(first, first + 10)]
    assert [r.offset for r in await _read(bus, "t", 3, {0: 27})] == [27, 28, 29]


async def test_embedded_reader_behind_the_log_start_gets_log_gap() -> None:
    """Kafka's retention moves the log start; a reader whose next record went gets LogGap (the
    Kafka bus: the same from beginning_offsets / OFFSET_OUT_OF_RANGE, see
    tests/cluster/test_kafka_bus_gaps.py; the test broker cannot delete records)."""
    from node.embedded.bus import InMemoryBus

    bus = InMemoryBus()
    await bus.ensure_topic("t", 1)
    for i in range(10):
        await bus.publish("t", "k", str(i).encode())
    bus.delete_records("t", {0: 6})
    with pytest.raises(LogGap) as e:
        await _read(bus, "t", 1, {0: 3})
    assert (e.value.topic, e.value.partition, e.value.needed, e.value.first) == ("t", 0, 3, 6)
    assert [r.offset for r in await _read(bus, "t", 4)] == [6, 7, 8, 9]  # no start: the earliest kept
    it = bus.subscribe("t", {0: 6})
    try:
        assert [(await it.__anext__()).offset for _ in range(2)] == [6, 7]
        bus.delete_records("t", {0: 9})  # retention passes the live reader
        with pytest.raises(LogGap) as e:
            await it.__anext__()
        assert (e.value.needed, e.value.first) == (8, 9)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
