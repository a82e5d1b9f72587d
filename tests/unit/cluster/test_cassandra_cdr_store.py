"""The Cassandra CDR store without a server: the CQL it sends, the bucket walk, row mapping,
the asyncio bridge (pages, errors, the driver's thread), against a fake session that
implements just these statements with Cassandra's semantics (upsert, unset, IF NOT EXISTS,
clustering order)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
from cassandra.query import UNSET_VALUE

from cluster.cassandra import schema as S
from cluster.cassandra.aio import execute
from cluster.cassandra.cdr_store import (
    COLUMNS, CassandraCdrStore, Statements, bucket_of, cdr_row, row_cdr, walk_buckets,
)
from node.model import Cdr

DAY = 86_400


def _cdr(id_: str, tenant_id: int, start: float, **kw) -> Cdr:
    return Cdr(id=id_, tenant_id=tenant_id, call_id="c" + id_, caller="1001", callee="1002",
               direction="internal", start=start, end=start + 10, **kw)


# ---------------------------------------------------------------- a fake cassandra-driver session


class FakePrepared:
    def __init__(self, cql: str) -> None:
        self.query_string = cql
        self.consistency_level = None
        self.serial_consistency_level = None


class FakeFuture:
    """ResponseFuture's callback protocol; pages delivered from another thread like the driver."""

    def __init__(self, rows: list | None, error: BaseException | None, page_size: int) -> None:
        self._pages = [rows[i:i + page_size] for i in range(0, len(rows), page_size)] if rows else [[]]
        self._error = error
        self.has_more_pages = False

    def add_callbacks(self, callback, errback) -> None:
        self._cb, self._eb = callback, errback
        self._deliver()

    def start_fetching_next_page(self) -> None:
        self._deliver()

    def _deliver(self) -> None:
        def run() -> None:
            if self._error is not None:
                self._eb(self._error)
                return
            page = self._pages.pop(0)
            self.has_more_pages = bool(self._pages)
            self._cb(page)

        threading.Thread(target=run).start()


class FakeSession:
    def __init__(self, page_size: int = 1000) -> None:
        self.cdrs: dict[tuple, dict] = {}
        self.buckets: set[tuple[int, int]] = set()
        self.log: list[tuple[str, tuple]] = []
        self.page_size = page_size
        self.fail: BaseException | None = None
        self.prepared: list[FakePrepared] = []

    def prepare(self, cql: str) -> FakePrepared:
        p = FakePrepared(cql)
        self.prepared.append(p)
        return p

    def execute_async(self, stmt, params=None, timeout=None) -> FakeFuture:
        cql = stmt.query_string if isinstance(stmt, FakePrepared) else stmt
        self.log.append((cql, tuple(params or ())))
        if self.fail is not None:
            return FakeFuture(None, self.fail, self.page_size)
        return FakeFuture(self._run(cql, tuple(params or ())), None, self.page_size)

    def _run(self, cql: str, p: tuple) -> list:
        if cql.startswith("INSERT INTO ks.cdrs"):
            values = dict(zip(COLUMNS, p, strict=True))
            key = (values["tenant_id"], values["bucket"], values["start_ts"], values["id"])
            if "IF NOT EXISTS" in cql and key in self.cdrs:
                return [(False,)]
            row = self.cdrs.setdefault(key, dict.fromkeys(COLUMNS))
            row.update({k: v for k, v in values.items() if v is not UNSET_VALUE})
            return [(True,)] if "IF NOT EXISTS" in cql else []
        if cql.startswith("INSERT INTO ks.cdr_buckets"):
            self.buckets.add(p)
            return []
        if cql.startswith("SELECT bucket FROM ks.cdr_buckets"):
            floor = p[1] if len(p) > 1 else None
            return [(b,) for t, b in sorted(self.buckets, key=lambda x: -x[1])
                    if t == p[0] and (floor is None or b >= floor)]
        if cql.startswith("SELECT start_ts"):
            tenant, bucket = p[0], p[1]
            since = p[2] if len(p) == 4 else None
            limit = p[-1]
            rows = [r for (t, b, _, _), r in self.cdrs.items()
                    if t == tenant and b == bucket and (since is None or r["start_ts"] >= since)]
            rows.sort(key=lambda r: (-r["start_ts"], r["id"]))
            cols = COLUMNS[2:]
            return [tuple(r[c] for c in cols) for r in rows[:limit]]
        raise AssertionError(f"unexpected CQL {cql}")

    def selects(self) -> list[tuple]:
        return [p for cql, p in self.log if cql.startswith("SELECT start_ts")]


@pytest.fixture
async def store():
    s = CassandraCdrStore(FakeSession(), "ks")
    await s.start()
    return s


# ---------------------------------------------------------------- schema and CQL text


def test_schema_network_topology_ttl_and_twcs():
    stmts = S.schema_statements("hivepbx", S.Replication.parse("dc1:3, eu-west.2:2"), 30 * DAY)
    assert stmts[0] == ("CREATE KEYSPACE IF NOT EXISTS hivepbx WITH replication = {'class': "
                        "'NetworkTopologyStrategy', 'dc1': 3, 'eu-west.2': 2} AND durable_writes = true")
    assert "PRIMARY KEY ((tenant_id, bucket), start_ts, id)" in stmts[1]
    assert "CLUSTERING ORDER BY (start_ts DESC, id ASC)" in stmts[1]
    assert "TimeWindowCompactionStrategy" in stmts[1] and f"default_time_to_live = {30 * DAY}" in stmts[1]
    assert f"default_time_to_live = {32 * DAY}" in stmts[2]  # the index outlives its CDRs
    keep = S.schema_statements("hivepbx", S.Replication.parse("simple:1"), 0)
    assert "'SimpleStrategy', 'replication_factor': 1" in keep[0]
    assert "SizeTieredCompactionStrategy" in keep[1] and "default_time_to_live = 0" in keep[1]


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("dc1", "expected"), ("dc1:0", "expected"), ("dc1:x", "expected"),
    ("simple:1,dc1:3", "cannot be combined"), ("dc'1:3", "data centre name"), ("dc1:3,dc1:2", "twice"),
])
def test_bad_replication_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        S.Replication.parse(text)


@pytest.mark.parametrize("keyspace", ["", "1abc", "ks; DROP KEYSPACE x", "a" * 49, "ks.cdrs"])
def test_bad_keyspace_is_refused(keyspace):
    with pytest.raises(ValueError, match="keyspace"):
        S.schema_statements(keyspace, S.Replication(simple=1), 0)
    with pytest.raises(ValueError, match="keyspace"):
        Statements(keyspace)


def test_bad_ttl_is_refused():
    with pytest.raises(ValueError, match="ttl"):
        S.schema_statements("ks", S.Replication(simple=1), -1)
    with pytest.raises(ValueError, match="ttl"):
        Statements("ks", ttl_seconds=0)


def test_statements_upsert_or_first_write_wins_and_ttl():
    plain = Statements("ks")
    assert plain.insert.startswith("INSERT INTO ks.cdrs (tenant_id, bucket, start_ts, id,")
    assert plain.insert.count("?") == len(COLUMNS) and "IF NOT EXISTS" not in plain.insert
    assert "USING TTL" not in plain.insert  # the table default applies
    lwt = Statements("ks", ttl_seconds=3600, first_write_wins=True)
    assert lwt.insert.endswith(" IF NOT EXISTS USING TTL 3600")
    assert lwt.insert_bucket.endswith(f" USING TTL {3600 + 2 * DAY}")
    assert plain.select_since.endswith("WHERE tenant_id = ? AND bucket = ? AND start_ts >= ? LIMIT ?")


def test_schema_cli_prints_cql_or_explains_bad_input(capsys):
    assert S.main(["--replication", "dc1:3,dc2:3", "--ttl-days", "7", "--keyspace", "pbx"]) == 0
    out = capsys.readouterr().out
    assert "CREATE KEYSPACE IF NOT EXISTS pbx" in out and out.count("CREATE TABLE") == 2
    assert S.main(["--replication", "dc1"]) == 2
    assert "expected <datacenter>:<replicas" in capsys.readouterr().err


# ---------------------------------------------------------------- mapping and buckets


def test_bucket_is_the_utc_day():
    assert [bucket_of(x) for x in (0.0, DAY - 0.001, DAY, 1_700_000_000.5)] == [0, 0, 1, 19675]
    assert bucket_of(7200.0, 3600) == 2


def test_row_mapping_round_trip_and_unset_answer():
    answered = _cdr("a", 7, 1_700_000_000.123456, answer=1_700_000_003.5, trunk="carrier", disposition="answered",
                    sip_code=200, hangup_cause="caller-bye", caller_name="Zoë")
    unanswered = _cdr("b", 7, 1_700_000_100.0, disposition="no-answer", sip_code=480)
    row = cdr_row(answered, UNSET_VALUE)
    assert row[:2] == (7, 19675)
    assert row_cdr(7, row[2:]) == answered
    row = cdr_row(unanswered, UNSET_VALUE)
    assert row[COLUMNS.index("answer_ts")] is UNSET_VALUE  # unset, not null: no tombstone
    read = [None if v is UNSET_VALUE else v for v in row[2:]]  # Cassandra reads an unset cell as null
    assert row_cdr(7, read) == unanswered
    # columns written by some other tool may be null: read as empty, never a crash
    sparse = row_cdr(3, (5.0, "x", None, None, None, None, None, None, None, None, None, None, None))
    assert (sparse.call_id, sparse.end, sparse.sip_code, sparse.disposition) == ("", 5.0, 0, "")


async def test_walk_stops_once_it_has_enough():
    asked = []

    async def fetch(bucket, n):
        asked.append((bucket, n))
        return [_cdr(f"{bucket}-{i}", 1, bucket * DAY + 100 - i) for i in range(min(n, 3))]

    got = await walk_buckets([9, 7, 4, 2], fetch, 5)
    assert [c.id for c in got] == ["9-0", "9-1", "9-2", "7-0", "7-1"]
    assert asked == [(9, 5), (7, 2)]  # buckets 4 and 2 never read


# ---------------------------------------------------------------- the store on the fake session


async def test_prepares_with_consistency(store):
    levels = {p.query_string.split()[0] + (" lwt" if "IF NOT" in p.query_string else ""): p.consistency_level
              for p in store.session.prepared}
    from cassandra import ConsistencyLevel

    assert set(levels.values()) == {ConsistencyLevel.LOCAL_QUORUM}
    lwt = CassandraCdrStore(FakeSession(), "ks", first_write_wins=True, write_consistency="QUORUM")
    await lwt.start()
    ins = next(p for p in lwt.session.prepared if p.query_string.startswith("INSERT INTO ks.cdrs"))
    assert (ins.consistency_level, ins.serial_consistency_level) == (ConsistencyLevel.QUORUM, ConsistencyLevel.LOCAL_SERIAL)
    assert not getattr(ins, "is_idempotent", False)  # a Paxos round is not blindly retried
    assert all(p.is_idempotent for p in store.session.prepared)


async def test_replayed_write_is_one_row(store):
    c = _cdr("attempt-1", 1, 100.0, disposition="answered", answer=101.0)
    await store.write(c)
    await store.write_many([c, c])
    assert len(store.session.cdrs) == 1
    assert await store.list(1) == [c]


async def test_first_write_wins_keeps_the_first_record():
    s = CassandraCdrStore(FakeSession(), "ks", first_write_wins=True)
    await s.start()
    first = _cdr("attempt-1", 1, 100.0, disposition="answered", answer=101.0)
    await s.write(first)
    await s.write(_cdr("attempt-1", 1, 100.0, disposition="failed"))
    assert await s.list(1) == [first]


async def test_list_newest_first_across_buckets_scoped_limited_since(store):
    starts = [5 * DAY + 10, 3 * DAY + 50, 5 * DAY + 20, 3 * DAY + 40, 1 * DAY + 1]
    await store.write_many([_cdr(f"a{i}", 1, s) for i, s in enumerate(starts)])
    await store.write(_cdr("b0", 2, 9 * DAY))
    assert [c.start for c in await store.list(1)] == sorted(starts, reverse=True)
    assert [c.id for c in await store.list(1, limit=3)] == ["a2", "a0", "a1"]
    assert [c.start for c in await store.list(1, since=3 * DAY + 45)] == [5 * DAY + 20, 5 * DAY + 10, 3 * DAY + 50]
    assert [c.id for c in await store.list(2)] == ["b0"]
    assert await store.list(3) == []
    # the walk asked only the buckets it needed, each with what was still missing
    store.session.log.clear()
    await store.list(1, limit=2)
    assert store.session.selects() == [(1, 5, 2)]


async def test_bucket_index_written_before_rows_and_once(store):
    await store.write_many([_cdr("x", 4, 10.0), _cdr("y", 4, DAY + 10.0)])
    kinds = [cql.split()[2] for cql, _ in store.session.log]
    assert kinds == ["ks.cdr_buckets", "ks.cdr_buckets", "ks.cdrs", "ks.cdrs"]
    store.session.log.clear()
    await store.write(_cdr("z", 4, 20.0))
    assert [cql.split()[2] for cql, _ in store.session.log] == ["ks.cdrs"]


async def test_bad_limit_is_refused(store):
    for bad in (0, -1, 10_001, True, "5"):
        with pytest.raises(ValueError, match="limit"):
            await store.list(1, limit=bad)


async def test_driver_errors_reach_the_caller(store):
    store.session.fail = ConnectionError("NoHostAvailable")
    with pytest.raises(ConnectionError):
        await store.write(_cdr("x", 1, 10.0))
    with pytest.raises(ConnectionError):
        await store.list(1)
    store.session.fail = None
    await store.write(_cdr("x", 1, 10.0))  # the bucket row was not cached as written
    assert [c.id for c in await store.list(1)] == ["x"]


async def test_execute_collects_every_page_from_the_driver_thread():
    session = FakeSession(page_size=3)
    for i in range(8):
        session.buckets.add((1, i))
    rows = await execute(session, "SELECT bucket FROM ks.cdr_buckets WHERE tenant_id = ?", (1,))
    assert [r[0] for r in rows] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert threading.current_thread() is threading.main_thread()
    empty = await execute(session, "SELECT bucket FROM ks.cdr_buckets WHERE tenant_id = ?", (2,))
    assert empty == []
    await asyncio.sleep(0)


async def test_open_from_config_or_environment(monkeypatch):
    from cluster.cassandra import cdr_store as C

    monkeypatch.delenv("HIVEPBX_CASSANDRA", raising=False)
    assert await C.open_cdr_store(SimpleNamespace()) is None  # not configured: SQLite keeps CDRs
    opened = []

    async def fake_open(hosts, keyspace, **kw):
        opened.append((hosts, keyspace, kw))
        return "store"

    monkeypatch.setattr(C.CassandraCdrStore, "open", fake_open)
    monkeypatch.setenv("HIVEPBX_CASSANDRA", "10.0.0.1:9142, 10.0.0.2:9142")
    monkeypatch.setenv("HIVEPBX_CASSANDRA_DC", "eu1")
    assert await C.open_cdr_store(SimpleNamespace(cassandra_keyspace="pbx")) == "store"
    hosts, keyspace, kw = opened[-1]
    assert (hosts, keyspace, kw["port"], kw["local_dc"]) == (["10.0.0.1", "10.0.0.2"], "pbx", 9142, "eu1")
    monkeypatch.setenv("HIVEPBX_CASSANDRA", "a:1,b:2")
    with pytest.raises(ValueError, match="one port"):
        await C.open_cdr_store(SimpleNamespace())
