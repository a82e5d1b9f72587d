"""The durable CDR spool: on disk before it counts, delivered exactly once through store
outages, hangs, refusals and restarts."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from node.model import Cdr
from node.pbx.cdr import CdrRecorder
from node.pbx.cdr_spool import SpoolFile, SpooledCdrStore, decode, encode


def _cdr(i: int, tenant_id: int = 1, **kw) -> Cdr:
    return Cdr(id=f"c{i}", tenant_id=tenant_id, call_id=f"x{i}", caller="1001", callee="1002",
               direction="internal", start=1000.0 + i, end=1010.0 + i, **kw)


class Store:
    """An idempotent CdrStore that can be down, hang, or refuse some ids."""

    def __init__(self) -> None:
        self.records: dict[str, Cdr] = {}
        self.writes = 0
        self.batches: list[int] = []
        self.down = False
        self.hang = False
        self.bad_ids: set[str] = set()
        self.calls = 0

    async def write(self, cdr: Cdr) -> None:
        await self.write_many([cdr])

    async def write_many(self, cdrs: list[Cdr]) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise ConnectionError("store unreachable")
        bad = [c.id for c in cdrs if c.id in self.bad_ids]
        if bad:
            raise ValueError(f"invalid CDR {bad[0]}")
        for c in cdrs:
            self.writes += 1
            self.records.setdefault(c.id, c)
        self.batches.append(len(cdrs))

    async def list(self, tenant_id: int, limit: int = 100, since: float | None = None) -> list[Cdr]:
        out = sorted((c for c in self.records.values() if c.tenant_id == tenant_id), key=lambda c: -c.start)
        return out[:limit]


def _spooled_rows(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM spool ORDER BY seq")]


async def _until(pred, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def spool_path(tmp_path):
    return tmp_path / "cdr-spool.db"


def test_encode_decode_round_trip():
    c = _cdr(7, answer=1001.5, trunk="carrier", disposition="answered", sip_code=200,
             hangup_cause="caller-bye", caller_name="Ällice \"Q\"")
    assert decode(encode(c)) == c
    with pytest.raises((ValueError, TypeError)):
        decode('["only-one-field"]')


async def test_durable_before_acknowledged_and_removed_after(spool_path):
    store = Store()
    store.hang = True
    spool = SpooledCdrStore(store, spool_path, write_timeout=0.2, min_backoff=0.05, max_backoff=0.1)
    await spool.start()
    try:
        await spool.write_many([_cdr(i) for i in range(5)])
        # on disk (another connection sees it) while the store has acknowledged nothing
        assert _spooled_rows(spool_path) == [f"c{i}" for i in range(5)]
        assert spool.pending == 5 and store.records == {}
        await _until(lambda: spool.store_errors >= 1)
        assert spool.last_error.startswith("no answer within")
        store.hang = False
        await _until(lambda: spool.pending == 0)
        assert sorted(store.records) == [f"c{i}" for i in range(5)]
        assert _spooled_rows(spool_path) == []
        assert spool.replayed == 5  # delivered on a retry
    finally:
        await spool.close()


async def test_store_down_then_up_delivers_all_exactly_once_in_batches(spool_path):
    store = Store()
    store.down = True
    spool = SpooledCdrStore(store, spool_path, min_backoff=0.02, max_backoff=0.05, max_batch=40)
    await spool.start()
    try:
        for k in range(10):
            await spool.write_many([_cdr(k * 10 + i) for i in range(10)])
        await _until(lambda: spool.store_errors >= 3)
        assert spool.pending == 100 and not store.records
        store.down = False
        await _until(lambda: spool.pending == 0)
    finally:
        await spool.close()
    assert sorted(store.records) == sorted(f"c{i}" for i in range(100))
    assert store.writes == 100  # nothing sent twice
    assert max(store.batches) <= 40 and len(store.batches) <= 5
    assert spool.spooled == spool.forwarded == 100


async def test_same_id_spooled_twice_is_kept_once(spool_path):
    store = Store()
    store.down = True
    spool = SpooledCdrStore(store, spool_path, min_backoff=0.02, max_backoff=0.05)
    await spool.start()
    try:
        await spool.write_many([_cdr(1), _cdr(2)])
        await spool.write_many([_cdr(2), _cdr(3)])  # a retried batch from the recorder
        assert _spooled_rows(spool_path) == ["c1", "c2", "c3"] and spool.pending == 3
        store.down = False
        await _until(lambda: spool.pending == 0)
    finally:
        await spool.close()
    assert store.writes == 3


async def test_restart_replays_what_an_earlier_run_left(spool_path):
    store = Store()
    store.down = True
    first = SpooledCdrStore(store, spool_path, min_backoff=0.02, max_backoff=0.05)
    await first.start()
    await first.write_many([_cdr(i) for i in range(7)])
    await first.close(timeout=0.2)  # the store is down: they stay on disk
    assert len(_spooled_rows(spool_path)) == 7 and not store.records

    store.down = False
    second = SpooledCdrStore(store, spool_path)
    await second.start()
    try:
        assert second.pending == 7
        await _until(lambda: second.pending == 0)
        assert second.replayed == 7
        await second.write_many([_cdr(100)])
        await _until(lambda: second.pending == 0)
        assert second.replayed == 7  # a fresh CDR delivered first time is not a replay
    finally:
        await second.close()
    assert sorted(store.records) == sorted([f"c{i}" for i in range(7)] + ["c100"])


async def test_crash_after_store_ack_before_delete_does_not_duplicate(spool_path):
    """The store got the batch but the node died before removing it: replay, store dedups."""
    store = Store()
    for i in range(4):
        await store.write(_cdr(i))
    file = SpoolFile(spool_path)  # what the dead node left on disk
    file.append([(c.id, encode(c)) for c in (_cdr(i) for i in range(6))])
    file.close()
    spool = SpooledCdrStore(store, spool_path)
    await spool.start()
    try:
        await _until(lambda: spool.pending == 0)
    finally:
        await spool.close()
    assert sorted(store.records) == sorted(f"c{i}" for i in range(6))
    assert len(await store.list(1, limit=100)) == 6


async def test_refused_cdr_is_held_not_dropped_and_does_not_block_others(spool_path):
    store = Store()
    store.bad_ids = {"c3"}
    spool = SpooledCdrStore(store, spool_path)
    await spool.start()
    try:
        await spool.write_many([_cdr(i) for i in range(6)])
        await _until(lambda: spool.pending == 0)
        await spool.write_many([_cdr(9)])
        await _until(lambda: spool.pending == 0)
        assert spool.held == 1
    finally:
        await spool.close()
    assert sorted(store.records) == ["c0", "c1", "c2", "c4", "c5", "c9"]
    with sqlite3.connect(spool_path) as conn:
        held = conn.execute("SELECT id, reason, doc FROM held").fetchall()
    assert [(h[0], "invalid CDR c3" in h[1]) for h in held] == [("c3", True)]
    assert decode(held[0][2]) == _cdr(3)


async def test_list_reads_the_store_and_closed_spool_refuses_writes(spool_path):
    store = Store()
    spool = SpooledCdrStore(store, spool_path)
    await spool.start()
    await spool.write_many([_cdr(1, tenant_id=1), _cdr(2, tenant_id=2)])
    await _until(lambda: spool.pending == 0)
    assert [c.id for c in await spool.list(2)] == ["c2"]
    await spool.close()
    with pytest.raises(RuntimeError, match="not open"):
        await spool.write(_cdr(3))


async def test_recorder_in_front_of_the_spool_batches_fsyncs(spool_path):
    store = Store()
    spool = SpooledCdrStore(store, spool_path)
    await spool.start()
    appends = []
    orig = spool._file.append

    def counting(rows):
        appends.append(len(rows))
        return orig(rows)

    spool._file.append = counting
    rec = CdrRecorder(spool, interval=0.02)
    try:
        for i in range(200):
            rec.record(_cdr(i))
            if i % 50 == 0:
                await asyncio.sleep(0)
        await rec.close()
        assert rec.written == 200 and sum(appends) == 200
        assert len(appends) < 20  # one fsync per batch, not per CDR
        await _until(lambda: spool.pending == 0)
    finally:
        await spool.close()
    assert len(store.records) == 200


async def test_unopenable_spool_file_raises(tmp_path):
    bad = tmp_path / "missing-dir" / "cdr-spool.db"
    spool = SpooledCdrStore(Store(), bad)
    with pytest.raises(sqlite3.Error):
        await spool.start()
