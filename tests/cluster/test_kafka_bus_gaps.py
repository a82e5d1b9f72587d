"""KafkaBus never reads over records retention deleted: it raises node.ports.LogGap.

The test broker (tansu) has no retention and panics on DeleteRecords, so these tests put a
stand-in for aiokafka's consumer under KafkaBus that answers as a Kafka broker does when the log
start moves: ``beginning_offsets`` past the position, and OFFSET_OUT_OF_RANGE on a fetch below
it (with ``auto_offset_reset="none"`` aiokafka raises that instead of jumping to the earliest).
The rest of the bus contract runs against tansu (tests/contract/test_bus_contract.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

import cluster.kafka.bus as kafka_bus
from cluster.kafka import KafkaBus
from node.ports import LogGap

TOPIC = "acd"


class Log:
    """One partition as the broker holds it: offsets [first, end)."""

    def __init__(self, end: int) -> None:
        self.first, self.end = 0, end


class FakeConsumer:
    """The few AIOKafkaConsumer calls KafkaBus.subscribe makes, answered like a broker."""

    made: list[FakeConsumer] = []

    def __init__(self, log: Log, **kw) -> None:  # type: ignore[no-untyped-def]
        self.log, self.kw = log, kw
        self.pos: dict[TopicPartition, int] = {}
        self.stopped = False
        FakeConsumer.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.tps = tps

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log.first for tp in tps}

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.pos[tp] = self.log.first

    def seek(self, tp: TopicPartition, off: int) -> None:
        self.pos[tp] = off

    async def getmany(self, timeout_ms: int = 0) -> dict:
        await asyncio.sleep(0)
        out = {}
        for tp, off in self.pos.items():
            if off < self.log.first or off > self.log.end:
                assert self.kw["auto_offset_reset"] == "none"  # else the client would jump silently
                raise OffsetOutOfRangeError({tp: off})
            recs = [SimpleNamespace(offset=o, key=b"k", value=str(o).encode()) for o in range(off, self.log.end)]
            if recs:
                out[tp] = recs
                self.pos[tp] = self.log.end
        return out


@pytest.fixture
def broker(monkeypatch) -> Log:  # type: ignore[no-untyped-def]
    log = Log(end=5)
    FakeConsumer.made.clear()
    monkeypatch.setattr(kafka_bus, "AIOKafkaConsumer", lambda **kw: FakeConsumer(log, **kw))
    return log


def kafka(monkeypatch) -> KafkaBus:  # type: ignore[no-untyped-def]
    bus = KafkaBus("127.0.0.1:1")  # never connects: the consumer is the stand-in

    async def one_partition(topic: str) -> int:
        return 1

    monkeypatch.setattr(bus, "partitions", one_partition)
    return bus


async def test_start_below_the_log_start_is_a_gap(broker: Log, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    broker.first = 3  # retention deleted 0..2
    it = kafka(monkeypatch).subscribe(TOPIC, {0: 1})
    with pytest.raises(LogGap) as e:
        await it.__anext__()
    assert (e.value.topic, e.value.partition, e.value.needed, e.value.first) == (TOPIC, 0, 1, 3)
    assert FakeConsumer.made[-1].stopped


async def test_start_at_the_log_start_and_no_start_read_on(broker: Log, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    broker.first = 3
    bus = kafka(monkeypatch)
    for start in ({0: 3}, None):
        it = bus.subscribe(TOPIC, start)
        assert [(await it.__anext__()).offset for _ in range(2)] == [3, 4]
        await it.aclose()  # type: ignore[attr-defined]


async def test_a_reader_retention_passes_gets_a_gap(broker: Log, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The live case: the node was paused or cut off for longer than the retention."""
    it = kafka(monkeypatch).subscribe(TOPIC, {0: 0})
    assert [(await it.__anext__()).offset for _ in range(5)] == [0, 1, 2, 3, 4]
    broker.first, broker.end = 8, 12  # meanwhile 5..7 were written and deleted
    with pytest.raises(LogGap) as e:
        await it.__anext__()
    assert (e.value.needed, e.value.first) == (5, 8)
    assert FakeConsumer.made[-1].stopped


async def test_a_position_past_the_log_end_is_an_error_not_a_gap(broker: Log, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The log lost records the reader had (broker data loss): an error, never a silent reset."""
    it = kafka(monkeypatch).subscribe(TOPIC, {0: 9})
    with pytest.raises(OffsetOutOfRangeError):
        await it.__anext__()
