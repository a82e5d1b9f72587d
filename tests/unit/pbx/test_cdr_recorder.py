"""The CDR recorder batches, survives a failing store without losing records, and flushes on close."""

from __future__ import annotations

import asyncio

from node.model import Cdr
from node.pbx.cdr import CdrRecorder


class FlakyStore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[str]] = []

    async def write_many(self, cdrs):
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        self.batches.append([c.id for c in cdrs])


def _cdr(i: int) -> Cdr:
    return Cdr(id=f"c{i}", tenant_id=1, call_id=f"x{i}", caller="1001", callee="1002",
               direction="internal", start=1.0, end=2.0)


async def test_batches_and_retries_without_loss():
    store = FlakyStore(failures=2)
    rec = CdrRecorder(store, interval=0.01)
    for i in range(25):
        rec.record(_cdr(i))
    await asyncio.sleep(0.05)
    for i in range(25, 30):
        rec.record(_cdr(i))
    await rec.close(timeout=5)
    written = [cid for batch in store.batches for cid in batch]
    assert sorted(written, key=lambda s: int(s[1:])) == [f"c{i}" for i in range(30)]
    assert len(store.batches) < 30  # batched, not one write per CDR
    assert rec.backlog == 0


async def test_close_with_nothing_pending_returns():
    rec = CdrRecorder(FlakyStore(0))
    await rec.close(timeout=1)
