"""A durable local spool in front of a remote CdrStore, so that no CDR is ever lost.

A CDR is billing data. A cluster store (Cassandra) is a network away: it can be down, slow
or partitioned, and the node can be killed at any moment. So a CDR first goes to this
node's disk and only then counts as recorded; a forwarder sends the spool's oldest CDRs to
the store in batches (``write_many``) and deletes them only after the store acknowledged
them. A crash between the store's ack and the delete replays that batch on the next start:
stores are idempotent on ``Cdr.id``, so a replay never duplicates a record.

The spool is SQLite in its own file, WAL with ``synchronous=FULL``: every commit is fsync'd.
One commit per ``write_many`` call, and the caller (``node.pbx.cdr.CdrRecorder``) already
batches what arrived in its interval, so at 1,000 CDRs/s that is ~20 fsyncs/s, not 1,000.
Disk work runs on one dedicated thread: an fsync takes milliseconds, far too long for the
event loop, and one thread keeps the file's statements ordered.

``SpooledCdrStore`` is itself a ``node.ports.CdrStore``: the runtime puts it in front of
whatever store the backend opened and nobody else needs to know.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import sqlite3
import time
import weakref
from dataclasses import astuple, fields
from pathlib import Path

from prometheus_client import Counter, Gauge

from node.model import Cdr
from node.ports import CdrStore

log = logging.getLogger("hivepbx.cdr.spool")

SPOOL_FILENAME = "cdr-spool.db"
_FIELDS = tuple(f.name for f in fields(Cdr))

SPOOLED = Counter("hivepbx_cdr_spooled", "CDRs made durable in the node's local CDR spool")
FORWARDED = Counter("hivepbx_cdr_forwarded", "CDRs acknowledged by the CDR store and removed from the spool")
REPLAYED = Counter(
    "hivepbx_cdr_replayed",
    "CDRs delivered to the store late: left in the spool by an earlier run, or after a failed attempt",
)
STORE_ERRORS = Counter(
    "hivepbx_cdr_store_errors", "Failed CDR store writes (the CDRs stay spooled)", ["reason"],
)
_ERR_TIMEOUT = STORE_ERRORS.labels("timeout")
_ERR_ERROR = STORE_ERRORS.labels("error")
_ERR_REJECTED = STORE_ERRORS.labels("rejected")
_spools: "weakref.WeakSet[SpooledCdrStore]" = weakref.WeakSet()
PENDING = Gauge("hivepbx_cdr_spool_pending", "CDRs in the local spool not yet acknowledged by the store")
PENDING.set_function(lambda: float(sum(s.pending for s in list(_spools))))
HELD = Gauge("hivepbx_cdr_spool_held", "CDRs the store refused as invalid, held in the spool for an operator")
HELD.set_function(lambda: float(sum(s.held for s in list(_spools))))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    id   TEXT NOT NULL UNIQUE,
    doc  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    id      TEXT PRIMARY KEY,
    doc     TEXT NOT NULL,
    reason  TEXT NOT NULL,
    at      REAL NOT NULL
);
"""


def encode(cdr: Cdr) -> str:
    return json.dumps(astuple(cdr), separators=(",", ":"))


def decode(doc: str) -> Cdr:
    return Cdr(**dict(zip(_FIELDS, json.loads(doc), strict=True)))


class SpoolFile:
    """The spool's SQLite file. Synchronous; used from the spool's one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
        except BaseException:
            self.conn.close()
            raise

    def append(self, rows: list[tuple[str, str]]) -> int:
        """Make ``rows`` (id, doc) durable; returns how many were new (ids already spooled are kept)."""
        conn = self.conn
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO spool (id, doc) VALUES (?, ?)", rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")  # synchronous=FULL: returns once the WAL is on disk
        return conn.total_changes - before

    def oldest(self, limit: int) -> list[tuple[int, str, str]]:
        return self.conn.execute("SELECT seq, id, doc FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def remove_upto(self, seq: int) -> int:
        """Drop everything up to ``seq`` (AUTOINCREMENT: later appends always get a larger seq)."""
        return self.conn.execute("DELETE FROM spool WHERE seq <= ?", (seq,)).rowcount

    def hold(self, seq: int, id_: str, doc: str, reason: str) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO held (id, doc, reason, at) VALUES (?, ?, ?, ?)", (id_, doc, reason, time.time()))
        conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
        conn.execute("COMMIT")

    def counts(self) -> tuple[int, int, int]:
        """(pending, held, highest seq) right now."""
        pending, top = self.conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM spool").fetchone()
        (held,) = self.conn.execute("SELECT count(*) FROM held").fetchone()
        return pending, held, top

    def close(self) -> None:
        self.conn.close()


class SpooledCdrStore:
    """node.ports.CdrStore: durable on local disk first, then forwarded to ``store``.

    ``write``/``write_many`` return once the CDRs are fsync'd in the spool. ``list`` reads
    the store, so a CDR shows there once forwarded (normally within milliseconds).
    """

    #: how long the CdrRecorder in front gathers CDRs into one fsync'd append: the window in
    #: which a kill -9 can still lose a CDR of a call that just ended. The commit runs off the
    #: event loop, so this can be far shorter than for a store committing on it; 10 ms caps
    #: the spool at ~100 fsyncs/s whatever the call rate (bench/cdr_spool.py).
    batch_interval = 0.01

    def __init__(
        self,
        store: CdrStore,
        path: str | Path,
        *,
        max_batch: int = 500,
        write_timeout: float = 10.0,
        min_backoff: float = 0.2,
        max_backoff: float = 30.0,
        poll_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.path = Path(path)
        self.max_batch = max_batch
        self.write_timeout = write_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        self._file: SpoolFile | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._recovered_upto = 0
        #: counters of this spool (the Prometheus ones sum over all spools of the process)
        self.pending = 0
        self.held = 0
        self.spooled = 0
        self.forwarded = 0
        self.replayed = 0
        self.store_errors = 0
        self.last_error = ""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open (or create) the spool file and start forwarding, replaying what an earlier
        run left behind. Raises ``sqlite3.Error``/``OSError`` when the file cannot be used."""
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cdr-spool")
        try:
            self._file = await self._run_io(SpoolFile, self.path)
            self.pending, self.held, self._recovered_upto = await self._run_io(self._file.counts)
        except BaseException:
            await self._shutdown_io()
            raise
        _spools.add(self)
        if self.pending:
            log.warning("%d CDRs left in the spool %s by an earlier run: replaying them", self.pending, self.path)
        if self.held:
            log.error("%d CDRs refused by the store are held in %s (table 'held') for an operator",
                      self.held, self.path)
        self._task = asyncio.get_running_loop().create_task(self._forward_loop(), name="cdr-spool")

    async def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is pending for up to ``timeout``; whatever the store did not
        acknowledge stays on disk and is replayed at the next start."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()
                try:
                    await self._task
                except BaseException:
                    pass
            self._task = None
        if self.pending:
            log.warning("%d CDRs not yet acknowledged by the store stay in the spool %s for the next start",
                        self.pending, self.path)
        await self._shutdown_io()
        _spools.discard(self)

    async def _shutdown_io(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await self._run_io(file.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _run_io(self, fn, *args):
        assert self._executor is not None, "spool not started"
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ CdrStore
    async def write(self, cdr: Cdr) -> None:
        await self.write_many([cdr])

    async def write_many(self, cdrs: list[Cdr]) -> None:
        """Durable on return (one fsync for the batch). Idempotent on ``Cdr.id`` while spooled;
        the store dedups what was already forwarded."""
        if not cdrs:
            return
        if self._file is None or self._closing.is_set():
            raise RuntimeError("CDR spool is not open")
        rows = [(c.id, encode(c)) for c in cdrs]
        added = await self._run_io(self._file.append, rows)
        self.spooled += added
        self.pending += added
        SPOOLED.inc(added)
        self._wake.set()

    async def list(self, tenant_id: int, limit: int = 100, since: float | None = None) -> list[Cdr]:
        return await self.store.list(tenant_id, limit, since)

    # ------------------------------------------------------------------ forwarding
    async def _forward_loop(self) -> None:
        delay = self.min_backoff
        failed = False
        while True:
            self._wake.clear()
            try:
                rows = await self._run_io(self._file.oldest, self.max_batch)
            except sqlite3.Error as e:  # a disk problem: keep trying, the CDRs are still there
                log.error("reading the CDR spool %s failed: %s", self.path, e)
                rows = None
            if rows is None:
                if self._closing.is_set():
                    return
                await asyncio.sleep(self.max_backoff / 10)
                continue
            if not rows:
                if self._closing.is_set():
                    return
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                ok = await self._deliver(rows, failed)
            except sqlite3.Error as e:  # delivered but not removed: replayed later, stores dedup
                log.error("updating the CDR spool %s failed: %s", self.path, e)
                ok = False
            if ok:
                failed = False
                delay = self.min_backoff
                continue
            failed = True
            if self._closing.is_set():
                return
            # full jitter keeps a fleet of nodes from retrying against a recovering store in step
            pause = random.uniform(delay / 2, delay)
            delay = min(delay * 2, self.max_backoff)
            try:
                await asyncio.wait_for(self._closing.wait(), pause)
            except asyncio.TimeoutError:
                pass

    async def _deliver(self, rows: list[tuple[int, str, str]], retry: bool) -> bool:
        cdrs = []
        for seq, id_, doc in rows:
            try:
                cdrs.append(decode(doc))
            except (ValueError, TypeError) as e:
                await self._hold(seq, id_, doc, f"unreadable spool record: {e}")
                return True  # re-read the batch without it
        try:
            await asyncio.wait_for(self.store.write_many(cdrs), self.write_timeout)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            self._failed(_ERR_TIMEOUT, f"no answer within {self.write_timeout:g}s", len(cdrs))
            return False
        except ValueError as e:
            # the store calls the data invalid: retrying the same batch would block the spool
            # for good, so find the culprits one by one and set them aside (kept, not dropped)
            self._failed(_ERR_REJECTED, f"{type(e).__name__}: {e}", len(cdrs))
            return await self._isolate(rows, cdrs)
        except Exception as e:
            self._failed(_ERR_ERROR, f"{type(e).__name__}: {e}", len(cdrs))
            return False
        await self._acknowledged(rows, retry)
        return True

    async def _acknowledged(self, rows: list[tuple[int, str, str]], retry: bool) -> None:
        n = len(rows)
        await self._run_io(self._file.remove_upto, rows[-1][0])
        late = n if retry else sum(1 for seq, _, _ in rows if seq <= self._recovered_upto)
        self.pending = max(0, self.pending - n)
        self.forwarded += n
        FORWARDED.inc(n)
        if late:
            self.replayed += late
            REPLAYED.inc(late)
        if retry:
            log.info("CDR store reachable again: %d CDRs delivered, %d pending", n, self.pending)

    async def _isolate(self, rows: list[tuple[int, str, str]], cdrs: list[Cdr]) -> bool:
        for (seq, id_, doc), cdr in zip(rows, cdrs):
            try:
                await asyncio.wait_for(self.store.write_many([cdr]), self.write_timeout)
            except ValueError as e:
                await self._hold(seq, id_, doc, f"store refused it: {e}")
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._failed(_ERR_TIMEOUT if isinstance(e, asyncio.TimeoutError) else _ERR_ERROR,
                             f"{type(e).__name__}: {e}", 1)
                return False
            await self._acknowledged([(seq, id_, doc)], True)
        return True

    async def _hold(self, seq: int, id_: str, doc: str, reason: str) -> None:
        await self._run_io(self._file.hold, seq, id_, doc, reason)
        self.pending = max(0, self.pending - 1)
        self.held += 1
        log.error("CDR %s held in the spool %s, not delivered: %s", id_, self.path, reason)

    def _failed(self, counter, reason: str, n: int) -> None:
        self.store_errors += 1
        self.last_error = reason
        counter.inc()
        log.warning("CDR store write of %d CDRs failed (%s); %d CDRs pending in the spool, retrying",
                    n, reason, self.pending)

    def status(self) -> dict:
        """For /health."""
        return {"pending": self.pending, "held": self.held, "store_errors": self.store_errors,
                "last_error": self.last_error}
