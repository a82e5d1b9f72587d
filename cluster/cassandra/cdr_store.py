"""node.ports.CdrStore on Cassandra (schema: cluster.cassandra.schema).

Writes are single-row INSERTs sent concurrently (bounded), each routed by the token-aware
policy straight to a replica: multi-partition batches would only load one coordinator. A
replay of the same CDR has the same primary key, so it is an upsert of an identical row:
idempotent. (A different record under an id already written would overwrite it; ids are
unique per call attempt, so that never happens in the PBX. ``first_write_wins=True`` makes
the store refuse it with a lightweight transaction, IF NOT EXISTS, at the price of a Paxos
round per CDR.) A CDR without an answer time leaves that column unset rather than null: a
null would write a tombstone per unanswered call.

``list`` reads the tenant's bucket index newest first and walks those buckets backwards
until it has ``limit`` CDRs; ``since`` stops the walk at its bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from node.model import Cdr

from cluster.cassandra.aio import execute
from cluster.cassandra.schema import BUCKET_ROW_EXTRA_TTL, BUCKET_SECONDS, check_keyspace

MAX_LIST = 10_000
COLUMNS = (
    "tenant_id", "bucket", "start_ts", "id", "call_id", "caller", "callee", "direction", "end_ts",
    "answer_ts", "trunk", "disposition", "sip_code", "hangup_cause", "caller_name",
)
_READ_COLUMNS = COLUMNS[2:]  # tenant_id and bucket come from the query


def bucket_of(start: float, bucket_seconds: int = BUCKET_SECONDS) -> int:
    """The partition bucket (days since the epoch, UTC, by default) of a call that started at ``start``."""
    return int(start // bucket_seconds)


def cdr_row(cdr: Cdr, unset, bucket_seconds: int = BUCKET_SECONDS) -> tuple:
    """Bind values for the INSERT, in ``COLUMNS`` order; ``unset`` stands for "no value"."""
    return (
        cdr.tenant_id, bucket_of(cdr.start, bucket_seconds), float(cdr.start), cdr.id, cdr.call_id, cdr.caller,
        cdr.callee, cdr.direction, float(cdr.end), unset if cdr.answer is None else float(cdr.answer), cdr.trunk,
        cdr.disposition, cdr.sip_code, cdr.hangup_cause, cdr.caller_name,
    )


def row_cdr(tenant_id: int, row) -> Cdr:
    """A selected row (``_READ_COLUMNS`` order) back to a Cdr; missing text columns read as ''."""
    (start, id_, call_id, caller, callee, direction, end, answer, trunk, disposition, sip_code,
     hangup_cause, caller_name) = row
    return Cdr(
        id=id_, tenant_id=tenant_id, call_id=call_id or "", caller=caller or "", callee=callee or "",
        direction=direction or "", start=start, end=end if end is not None else start, answer=answer,
        trunk=trunk or "", disposition=disposition or "", sip_code=sip_code or 0,
        hangup_cause=hangup_cause or "", caller_name=caller_name or "",
    )


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be between 1 and {MAX_LIST}, not {limit!r}")
    return limit


class Statements:
    """The store's CQL, built once per keyspace (pure text: unit-tested without a server)."""

    def __init__(self, keyspace: str, *, ttl_seconds: int | None = None, first_write_wins: bool = False) -> None:
        ks = check_keyspace(keyspace)
        if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int)
                                        or not 0 < ttl_seconds <= 630_720_000):
            raise ValueError(f"ttl must be 1 to 630720000 seconds or None (table default), not {ttl_seconds!r}")
        marks = ", ".join("?" * len(COLUMNS))
        self.insert = (
            f"INSERT INTO {ks}.cdrs ({', '.join(COLUMNS)}) VALUES ({marks})"
            + (" IF NOT EXISTS" if first_write_wins else "")
            + (f" USING TTL {ttl_seconds}" if ttl_seconds else "")
        )
        self.insert_bucket = (
            f"INSERT INTO {ks}.cdr_buckets (tenant_id, bucket) VALUES (?, ?)"
            + (f" USING TTL {ttl_seconds + BUCKET_ROW_EXTRA_TTL}" if ttl_seconds else "")
        )
        self.buckets = f"SELECT bucket FROM {ks}.cdr_buckets WHERE tenant_id = ?"
        self.buckets_since = self.buckets + " AND bucket >= ?"
        cols = ", ".join(_READ_COLUMNS)
        self.select = f"SELECT {cols} FROM {ks}.cdrs WHERE tenant_id = ? AND bucket = ? LIMIT ?"
        self.select_since = f"SELECT {cols} FROM {ks}.cdrs WHERE tenant_id = ? AND bucket = ? AND start_ts >= ? LIMIT ?"


async def walk_buckets(buckets: Iterable[int], fetch, limit: int) -> list[Cdr]:
    """Newest first across ``buckets`` (already newest first): ``fetch(bucket, n)`` returns up to
    ``n`` CDRs of one bucket, newest first; stop as soon as ``limit`` are collected."""
    out: list[Cdr] = []
    for b in buckets:
        out.extend(await fetch(b, limit - len(out)))
        if len(out) >= limit:
            break
    return out[:limit]


class CassandraCdrStore:
    """CdrStore on a cassandra-driver ``Session``. ``await start()`` prepares the statements;
    ``open`` also makes (and ``close`` shuts down) the driver's Cluster."""

    def __init__(
        self, session, keyspace: str, *, ttl_seconds: int | None = None, first_write_wins: bool = False,
        concurrency: int = 64, timeout: float = 10.0, write_consistency: str = "LOCAL_QUORUM",
        read_consistency: str = "LOCAL_QUORUM", bucket_seconds: int = BUCKET_SECONDS,
    ) -> None:
        self.session = session
        self.sql = Statements(keyspace, ttl_seconds=ttl_seconds, first_write_wins=first_write_wins)
        self.concurrency = concurrency
        self.timeout = timeout
        self.write_consistency = write_consistency
        self.read_consistency = read_consistency
        self.bucket_seconds = bucket_seconds
        self._cluster = None
        self._prepared: dict[str, object] = {}
        #: (tenant, bucket) already in the bucket index, written by this process
        self._known_buckets: set[tuple[int, int]] = set()

    @classmethod
    async def open(cls, contact_points: list[str], keyspace: str, *, port: int = 9042, local_dc: str | None = None,
                   username: str | None = None, password: str | None = None, **opts) -> "CassandraCdrStore":
        from cluster.cassandra.aio import connect

        cluster, session = await connect(contact_points, port=port, local_dc=local_dc,
                                         username=username, password=password)
        store = cls(session, keyspace, **opts)
        store._cluster = cluster
        try:
            await store.start()
        except BaseException:
            await store.close()
            raise
        return store

    async def start(self) -> None:
        from cassandra import ConsistencyLevel

        write_cl = ConsistencyLevel.name_to_value[self.write_consistency]
        read_cl = ConsistencyLevel.name_to_value[self.read_consistency]
        for name in ("insert", "insert_bucket", "buckets", "buckets_since", "select", "select_since"):
            stmt = await asyncio.to_thread(self.session.prepare, getattr(self.sql, name))
            stmt.consistency_level = write_cl if name.startswith("insert") else read_cl
            if name == "insert" and "IF NOT EXISTS" in self.sql.insert:
                stmt.serial_consistency_level = ConsistencyLevel.LOCAL_SERIAL
            else:
                stmt.is_idempotent = True  # the driver may retry it after a timeout
            self._prepared[name] = stmt

    async def close(self) -> None:
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await asyncio.to_thread(cluster.shutdown)

    def _run(self, name: str, params: tuple) -> asyncio.Future:
        return execute(self.session, self._prepared[name], params, timeout=self.timeout)

    # ------------------------------------------------------------------ CdrStore
    async def write(self, cdr: Cdr) -> None:
        await self.write_many([cdr])

    async def write_many(self, cdrs: list[Cdr]) -> None:
        """All or error: returns once every CDR is acknowledged (at the write consistency);
        on an error some may be written, and a retry of the whole batch is idempotent."""
        if not cdrs:
            return
        from cassandra.query import UNSET_VALUE

        rows = [cdr_row(c, UNSET_VALUE, self.bucket_seconds) for c in cdrs]
        # the index first: a CDR must never be written where list() would not look for it
        new = {(r[0], r[1]) for r in rows} - self._known_buckets
        if new:
            await self._bounded("insert_bucket", sorted(new))
            self._known_buckets.update(new)
            if len(self._known_buckets) > 100_000:
                self._known_buckets.clear()
        await self._bounded("insert", rows)

    async def _bounded(self, name: str, params: list[tuple]) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(p: tuple) -> None:
            async with sem:
                await self._run(name, p)

        results = await asyncio.gather(*(one(p) for p in params), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def list(self, tenant_id: int, limit: int = 100, since: float | None = None) -> list[Cdr]:
        """The tenant's CDRs, newest first; ``since`` keeps those started at or after it."""
        limit = check_limit(limit)
        if since is None:
            rows = await self._run("buckets", (tenant_id,))
        else:
            rows = await self._run("buckets_since", (tenant_id, bucket_of(since, self.bucket_seconds)))
        buckets = sorted((r[0] for r in rows), reverse=True)

        async def fetch(bucket: int, n: int) -> list[Cdr]:
            if since is None:
                got = await self._run("select", (tenant_id, bucket, n))
            else:
                got = await self._run("select_since", (tenant_id, bucket, float(since), n))
            return [row_cdr(tenant_id, r) for r in got]

        return await walk_buckets(buckets, fetch, limit)


async def open_cdr_store(cfg) -> CassandraCdrStore | None:
    """The cluster backend's CdrStore from node config or environment, or None when no
    Cassandra is configured (the runtime then keeps CDRs in the node's SQLite).

    ``cassandra_contact_points`` / HIVEPBX_CASSANDRA (host[,host...]), ``cassandra_keyspace`` /
    HIVEPBX_CASSANDRA_KEYSPACE (default hivepbx), ``cassandra_local_dc`` / HIVEPBX_CASSANDRA_DC,
    HIVEPBX_CASSANDRA_USER and HIVEPBX_CASSANDRA_PASSWORD. The schema must exist
    (``python -m cluster.cassandra.schema``)."""
    import os

    points = tuple(getattr(cfg, "cassandra_contact_points", ()) or ())
    if not points and os.environ.get("HIVEPBX_CASSANDRA"):
        points = tuple(p.strip() for p in os.environ["HIVEPBX_CASSANDRA"].split(",") if p.strip())
    if not points:
        return None
    hosts, ports = [], set()
    for p in points:
        host, sep, port = p.rpartition(":")
        if sep and port.isdigit() and "]" not in port:
            hosts.append(host.strip("[]"))
            ports.add(int(port))
        else:
            hosts.append(p)
    if len(ports) > 1:
        raise ValueError("Cassandra contact points must share one port")
    keyspace = getattr(cfg, "cassandra_keyspace", None) or os.environ.get("HIVEPBX_CASSANDRA_KEYSPACE", "hivepbx")
    return await CassandraCdrStore.open(
        hosts, keyspace, port=ports.pop() if ports else 9042,
        local_dc=getattr(cfg, "cassandra_local_dc", None) or os.environ.get("HIVEPBX_CASSANDRA_DC"),
        username=os.environ.get("HIVEPBX_CASSANDRA_USER"), password=os.environ.get("HIVEPBX_CASSANDRA_PASSWORD"),
    )
