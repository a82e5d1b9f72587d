"""CDR recording off the call path: calls hand their CDR over and never wait for the store.

A busy node ends hundreds of calls a second; one commit per CDR would cost more than the
call itself. The recorder batches what arrived in the last ``interval`` into one
``write_many`` and retries a failed batch with backoff, keeping it in memory meanwhile, so
a slow or briefly failing store delays CDRs but never drops them. ``close`` flushes.
In front of a remote store the runtime puts ``node.pbx.cdr_spool.SpooledCdrStore``: a
CDR then counts as recorded once it is fsync'd on local disk, and each batch here is one fsync.
"""

from __future__ import annotations

import asyncio
import logging

from node.model import Cdr
from node.ports import CdrStore

log = logging.getLogger("hivepbx.cdr")


class CdrRecorder:
    def __init__(self, store: CdrStore, interval: float = 0.05, max_batch: int = 500) -> None:
        self.store = store
        self.interval = interval
        self.max_batch = max_batch
        self._pending: list[Cdr] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.written = 0

    def record(self, cdr: Cdr) -> None:
        self._pending.append(cdr)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
            # the first CDR starts the batch interval: a CDR waits ``interval``, not a poll period
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            if not self._closing:
                await asyncio.sleep(self.interval)
            batch = self._pending[: self.max_batch]
            try:
                await self.store.write_many(batch)
            except Exception:
                log.exception("writing %d CDRs failed; retrying in %.1fs", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.2
            del self._pending[: len(batch)]
            self.written += len(batch)

    async def close(self, timeout: float = 10.0) -> None:
        """Flush what is pending (bounded by ``timeout``)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                log.error("%d CDRs not written at shutdown", len(self._pending))
                self._task.cancel()
