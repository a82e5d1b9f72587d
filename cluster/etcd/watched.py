"""An etcd key prefix mirrored in memory: one range read, then a watch from the next revision.

Hot reads (every REGISTER and INVITE) must not wait on the network, so each store keeps what
it serves in memory and this keeps it fresh. A node's own writes wait until the watch has
delivered their revision (``caught_up``), so a write is visible to the next read on the same
node, and every other node sees it as soon as its watch delivers it (milliseconds on a LAN).
A broken or compacted watch reloads the whole prefix and watches on: a missed event can only
delay, never lose, a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aetcd

from cluster.etcd import metrics as M
from cluster.etcd.client import prefix_end

log = logging.getLogger("hivepbx.cluster.etcd")

#: seconds a write waits for its own revision before reloading the prefix directly
CATCH_UP_TIMEOUT = 5.0
#: back-off after a broken watch, seconds (doubles up to RETRY_MAX)
RETRY_MIN, RETRY_MAX = 0.1, 5.0


class WatchedPrefix:
    """Calls ``reset(kvs)`` with the whole prefix, then ``apply(kind, key, value)`` per event.

    ``kind`` is 'PUT' or 'DELETE'; keys are bytes with the prefix still on them.
    """

    def __init__(
        self,
        client: aetcd.Client,
        prefix: bytes,
        reset: Callable[[list[tuple[bytes, bytes]]], None],
        apply: Callable[[str, bytes, bytes], None],
        name: str = "",
    ) -> None:
        self._client = client
        self.prefix = prefix
        self._reset = reset
        self._apply = apply
        self.name = name or prefix.decode(errors="replace")
        #: the view reflects every change up to this revision
        self.revision = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._closing = False
        self._broken = asyncio.Event()
        self._error: BaseException | None = None
        self._watch_id: int | None = None
        self.reloads = 0

    async def start(self) -> None:
        """Load the prefix (errors propagate: the store cannot serve without it), then watch."""
        await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"etcd-watch {self.name}")

    async def close(self) -> None:
        self._closing = True
        self._broken.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=2.0)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=2.0)
            if self._task.done() and not self._task.cancelled():
                self._task.exception()  # retrieved: never "exception was never retrieved"
            self._task = None
        await self._cancel_watch()
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    async def reload(self) -> None:
        got = await self._client.get_prefix(self.prefix)
        if got.header.revision < self.revision:
            return  # the live watch got further while we read: this snapshot would go back
        self._reset([(kv.key, kv.value) for kv in got])
        self.reloads += 1
        M.resynced(self.name)
        self._advance(max(got.header.revision, self.revision))

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        self.revision = revision
        M.revision(self.name, revision)
        if self._waiters:
            keep = []
            for rev, fut in self._waiters:
                if rev <= revision:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((rev, fut))
            self._waiters = keep

    async def caught_up(self, revision: int) -> None:
        """Return once the view holds every change up to ``revision``."""
        if revision <= self.revision:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, fut))
        try:
            await asyncio.wait_for(fut, CATCH_UP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("etcd watch of %s lags behind revision %d: reloading", self.name, revision)
            await self.reload()

    async def _on_event(self, event) -> None:
        """aetcd's watcher calls this per event, or with the error that ended the stream
        (None: the client shut down)."""
        if event is None or isinstance(event, BaseException):
            self._error = event
            self._broken.set()
            return
        rev = event.kv.mod_revision
        if rev < self.revision:
            return  # already in the view (a reload overtook the watch)
        # (rev == revision: one more event of the same transaction; applying it again after a
        # reload is harmless, puts and deletes being idempotent)
        self._apply(event.kind, event.kv.key, event.kv.value)
        # events of one response are delivered one after the other without a pause, so a
        # waiter woken here runs only after the whole transaction is in the view
        self._advance(rev)

    async def _cancel_watch(self) -> None:
        watch_id, self._watch_id = self._watch_id, None
        if watch_id is not None and self._client._watcher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client._watcher.cancel(watch_id), 2.0)

    async def _run(self) -> None:
        # events go straight to a callback (aetcd's Watcher.add_callback), not through aetcd's
        # async iterator: a task cancelled inside that iterator does not always stop (seen with
        # grpc.aio on Python 3.11), and asyncio.run then waits for it for ever at exit
        delay = RETRY_MIN
        while not self._closing:
            self._broken.clear()
            self._error = None
            try:
                if self._client._watcher is None:
                    await self._client.connect()
                callback = await self._client._watcher.add_callback(
                    self.prefix, self._on_event, range_end=prefix_end(self.prefix),
                    start_revision=self.revision + 1,
                )
                self._watch_id = callback.watch_id
                await self._broken.wait()
                if self._closing:
                    return
                raise self._error or ConnectionError("watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # broken stream, compaction, etcd restarting: resync
                if self._closing:
                    return
                await self._cancel_watch()
                log.warning("etcd watch of %s broke (%s): resyncing in %.1fs", self.name, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                try:
                    await self.reload()
                    delay = RETRY_MIN
                except Exception as e2:
                    log.warning("etcd reload of %s failed: %s", self.name, e2)


async def wait_deleted(client: aetcd.Client, key: bytes, after_revision: int, timeout: float) -> None:
    """Until ``key`` is deleted after ``after_revision``, or ``timeout`` seconds."""
    gone = asyncio.Event()

    async def on_event(event) -> None:
        if event is None or isinstance(event, BaseException) or event.kind == "DELETE":
            gone.set()

    if client._watcher is None:
        await client.connect()
    callback = await client._watcher.add_callback(key, on_event, start_revision=after_revision + 1)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(gone.wait(), timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client._watcher.cancel(callback.watch_id), 2.0)
