"""node.ports.EventBus on Kafka (aiokafka).

Every node must see every event of the partitions it serves, so readers assign partitions and
seek themselves instead of joining a consumer group (a group would split the partitions between
nodes and rebalance on every join). The producer waits for acks=all: an ACD event a node acted
on must survive a broker loss. It is not idempotent (not every broker offers it), so a retried
send can land twice: values carry (origin, seq) and the consumer of the bus drops duplicates.

Readers never let the client reset their position (``auto_offset_reset="none"``): a reader
whose next record retention deleted (asked for it at start, or fell behind it while paused or
cut off) gets node.ports.LogGap, because jumping to the earliest offset would silently skip
records a replica built from the log needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import OffsetOutOfRangeError, UnknownTopicOrPartitionError

from node.ports import BusRecord, LogGap

__all__ = ["KafkaBus", "open_bus"]

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36


class KafkaBus:
    """``bootstrap``: "host:port[,host:port]". ``fetch_max_wait_ms`` bounds how long a fetch
    waits for new data (some brokers do not wake a waiting fetch), i.e. event latency."""

    def __init__(self, bootstrap: str | Sequence[str], *, client_id: str = "hivepbx",
                 replication_factor: int = 1, fetch_max_wait_ms: int = 20,
                 request_timeout_ms: int = 10_000) -> None:
        self._bootstrap = bootstrap if isinstance(bootstrap, str) else ",".join(bootstrap)
        self._client_id = client_id
        self._rf = replication_factor
        self._fetch_wait = fetch_max_wait_ms
        self._timeout = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._start_lock = asyncio.Lock()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        async with self._start_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap, client_id=self._client_id, acks="all",
                    enable_idempotence=False, linger_ms=0, request_timeout_ms=self._timeout)
                await producer.start()
                self._producer = producer
            return self._producer

    async def ensure_topic(self, topic: str, partitions: int) -> int:
        if not topic:
            raise ValueError("topic name is empty")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, client_id=self._client_id,
                                    request_timeout_ms=self._timeout)
        await admin.start()
        try:
            resp = await admin.create_topics([NewTopic(topic, partitions, self._rf)])
            for err in getattr(resp, "topic_errors", ()):
                code = err[1]
                if code not in (0, _TOPIC_EXISTS):
                    raise RuntimeError(f"cannot create topic {topic!r}: Kafka error {code} {err[2:]}")
        finally:
            await admin.close()
        return await self.partitions(topic)

    async def partitions(self, topic: str) -> int:
        producer = await self._ensure_producer()
        try:
            parts = await producer.partitions_for(topic)
        except UnknownTopicOrPartitionError:
            parts = None
        if not parts:
            raise LookupError(f"no topic {topic!r}")
        return len(parts)

    async def publish(self, topic: str, key: str, value: bytes, *, partition: int | None = None) -> tuple[int, int]:
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError("value must be bytes")
        producer = await self._ensure_producer()
        if partition is not None:
            n = await self.partitions(topic)
            if not 0 <= partition < n:
                raise ValueError(f"partition {partition} out of range 0..{n - 1} for {topic!r}")
        md = await producer.send_and_wait(topic, bytes(value), key=key.encode(), partition=partition)
        return md.partition, md.offset

    async def subscribe(self, topic: str, start: dict[int, int] | None = None) -> AsyncIterator[BusRecord]:
        n = await self.partitions(topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, client_id=self._client_id, group_id=None,
            enable_auto_commit=False, auto_offset_reset="none", fetch_max_wait_ms=self._fetch_wait,
            request_timeout_ms=self._timeout)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(n)]
            consumer.assign(tps)
            start = {p: max(0, off) for p, off in (start or {}).items() if 0 <= p < n}
            firsts = await consumer.beginning_offsets([tps[p] for p in start]) if start else {}
            for tp in tps:
                off = start.get(tp.partition)
                if off is None:
                    await consumer.seek_to_beginning(tp)
                elif off < firsts[tp]:
                    raise LogGap(topic, tp.partition, off, firsts[tp])
                else:
                    consumer.seek(tp, off)
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=1000)
                except OffsetOutOfRangeError as e:
                    await self._out_of_range(consumer, topic, e)
                    raise
                for tp, records in batches.items():
                    for r in records:
                        key = r.key.decode("utf-8", "replace") if r.key is not None else ""
                        yield BusRecord(topic, tp.partition, r.offset, key, r.value or b"")
        finally:
            await consumer.stop()

    @staticmethod
    async def _out_of_range(consumer: AIOKafkaConsumer, topic: str, err: OffsetOutOfRangeError) -> None:
        """A fetch position left the log: raises LogGap when retention passed it (the usual
        case: the reader was paused or cut off for longer than the retention)."""
        wanted = err.args[0] if err.args and isinstance(err.args[0], dict) else {}
        if not wanted:
            return
        firsts = await consumer.beginning_offsets(list(wanted))
        for tp, off in sorted(wanted.items(), key=lambda kv: kv[0].partition):
            if off < firsts.get(tp, 0):
                raise LogGap(topic, tp.partition, off, firsts[tp]) from err
        # past the end: the log lost records this reader had (broker reset, unclean election)
        log.error("kafka: %s positions %s are beyond the log end", topic,
                  {tp.partition: off for tp, off in wanted.items()})

    async def close(self) -> None:
        async with self._start_lock:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await producer.stop()


def open_bus(cfg) -> KafkaBus | None:
    """The node's bus from its config (``kafka_bootstrap``; ``node_id`` as client id), None when
    no Kafka is configured. For the cluster backend to expose as ``bus`` (the runtime runs the
    ACD on ``backend.bus`` when there is one) and to close in its ``aclose``."""
    bootstrap = tuple(getattr(cfg, "kafka_bootstrap", ()) or ())
    if not bootstrap:
        return None
    return KafkaBus(bootstrap, client_id=f"hivepbx-{getattr(cfg, 'node_id', 'node')}",
                    replication_factor=int(getattr(cfg, "kafka_replication_factor", 1)))
