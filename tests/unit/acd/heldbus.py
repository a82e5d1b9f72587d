"""A node's view of a shared bus that the test can hold (the node paused or cut off) or that
hides records from it (a client that jumps ahead): for the tests of log gaps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from node.ports import BusRecord, EventBus

WAIT = 10.0


async def until(cond, what: str, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class HeldBus:
    """A node's view of the shared bus: ``hold()`` stops its readers before their next record,
    ``skip`` hides records (partition, offset) from them. Publishing is never held."""

    def __init__(self, inner: EventBus) -> None:
        self.inner = inner
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.parked = asyncio.Event()  # a reader waits for release()
        self.skip: set[tuple[int, int]] = set()
        self.topic: str | None = None  # hold and skip only this topic (None: all)

    async def hold(self, nudge) -> None:  # type: ignore[no-untyped-def]
        """Hold the readers; ``nudge()`` publishes something, so a reader waiting for the next
        record takes it and parks before the one after."""
        self.flowing.clear()
        await nudge()
        await until(self.parked.is_set, "the reader parked")

    def release(self) -> None:
        self.flowing.set()

    async def ensure_topic(self, topic: str, partitions: int) -> int:
        return await self.inner.ensure_topic(topic, partitions)

    async def partitions(self, topic: str) -> int:
        return await self.inner.partitions(topic)

    async def publish(self, topic: str, key: str, value: bytes, *, partition: int | None = None) -> tuple[int, int]:
        return await self.inner.publish(topic, key, value, partition=partition)

    async def subscribe(self, topic: str, start: dict[int, int] | None = None) -> AsyncIterator[BusRecord]:
        it = self.inner.subscribe(topic, start)
        if self.topic is not None and topic != self.topic:
            try:
                async for rec in it:
                    yield rec
            finally:
                await it.aclose()  # type: ignore[attr-defined]
            return
        try:
            while True:
                if not self.flowing.is_set():
                    self.parked.set()
                    await self.flowing.wait()
                    self.parked.clear()
                rec = await it.__anext__()
                if (rec.partition, rec.offset) not in self.skip:
                    yield rec
        except StopAsyncIteration:
            return
        finally:
            await it.aclose()

    async def close(self) -> None:
        pass


