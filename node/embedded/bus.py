"""The in-process event bus of the single-node PBX: node.ports.EventBus kept in memory.

It behaves like the Kafka bus where the contract cares (per-partition order, stable key to
partition, replay from any offset, explicit partitions for broadcasts) so the ACD service runs
on either unchanged and the same contract tests hold for both. Nothing survives the process:
a single node has no one to share its queues with. ``max_records`` bounds each partition
like Kafka's retention (oldest records go; offsets keep counting), so a long-running node's
memory stays flat; ``delete_records`` drops a prefix at once, as retention does on Kafka. A
reader whose next record was dropped gets LogGap, never a silent jump ahead.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

from node.ports import BusRecord, LogGap

__all__ = ["InMemoryBus"]


class _Topic:
    __slots__ = ("name", "logs", "base", "changed")

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.logs: list[list[tuple[str, bytes]]] = [[] for _ in range(partitions)]
        self.base = [0] * partitions  # offset of logs[p][0]
        # a fresh Event per wake-up: set() wakes every reader waiting on the old one
        self.changed = asyncio.Event()


class InMemoryBus:
    """Ordered, replayable, in memory. Single event loop; publish never blocks."""

    def __init__(self, *, default_partitions: int = 4, max_records: int | None = None) -> None:
        if default_partitions < 1:
            raise ValueError("default_partitions must be >= 1")
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be >= 1 or None")
        self._default = default_partitions
        self._max = max_records
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    def _topic(self, topic: str, create: bool) -> _Topic:
        t = self._topics.get(topic)
        if t is None:
            if not create:
                raise LookupError(f"no topic {topic!r}")
            t = self._topics[topic] = _Topic(topic, self._default)
        return t

    async def ensure_topic(self, topic: str, partitions: int) -> int:
        if not topic:
            raise ValueError("topic name is empty")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = _Topic(topic, partitions)
        return len(t.logs)

    async def partitions(self, topic: str) -> int:
        return len(self._topic(topic, False).logs)

    async def publish(self, topic: str, key: str, value: bytes, *, partition: int | None = None) -> tuple[int, int]:
        if self._closed:
            raise RuntimeError("bus is closed")
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError("value must be bytes")
        t = self._topic(topic, True)  # auto-create, as Kafka does on produce
        n = len(t.logs)
        if partition is None:
            partition = zlib.crc32(key.encode()) % n
        elif not 0 <= partition < n:
            raise ValueError(f"partition {partition} out of range 0..{n - 1} for {topic!r}")
        log = t.logs[partition]
        log.append((key, bytes(value)))
        offset = t.base[partition] + len(log) - 1
        if self._max is not None and len(log) > self._max + self._max // 4:
            drop = len(log) - self._max  # in chunks: a list's head is costly to cut one at a time
            del log[:drop]
            t.base[partition] += drop
        t.changed.set()
        t.changed = asyncio.Event()
        return partition, offset

    def delete_records(self, topic: str, before: dict[int, int]) -> None:
        """Drop every record below ``before[partition]`` (Kafka's DeleteRecords; what retention
        does): for tests of readers that fall behind the log start."""
        t = self._topic(topic, False)
        for p, off in before.items():
            drop = min(off, t.base[p] + len(t.logs[p])) - t.base[p]
            if drop > 0:
                del t.logs[p][:drop]
                t.base[p] += drop
        t.changed.set()
        t.changed = asyncio.Event()

    async def subscribe(self, topic: str, start: dict[int, int] | None = None) -> AsyncIterator[BusRecord]:
        t = self._topic(topic, True)
        start = start or {}
        # missing: the earliest kept now; given: exactly that offset, or LogGap
        pos = [max(0, start[p]) if p in start else t.base[p] for p in range(len(t.logs))]
        while not self._closed:
            waiter = t.changed
            progressed = False
            for p, log in enumerate(t.logs):
                while True:
                    if pos[p] < t.base[p]:
                        raise LogGap(topic, p, pos[p], t.base[p])
                    i = pos[p] - t.base[p]
                    if i >= len(log):
                        break
                    key, value = log[i]
                    yield BusRecord(topic, p, pos[p], key, value)
                    pos[p] += 1
                    progressed = True
            if not progressed:
                await waiter.wait()

    async def close(self) -> None:
        self._closed = True
        for t in self._topics.values():
            t.changed.set()
