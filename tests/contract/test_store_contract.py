"""What every backend of node.ports must do, whatever it is built on.

Parametrized over ``backend``: a cluster backend joins by adding its name to BACKENDS and a
branch to ``_open``. Only behaviour promised by node.ports is asserted here; invalid input
must raise a ValueError (the embedded ConfigError is one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from node.model import Binding, Cdr

BACKENDS = ["embedded", "etcd"]


class _EtcdBackend:
    """etcd config and locations (a fresh key prefix per test on the session's etcd); CDRs
    stay in the node's SQLite, as the cluster backend keeps them until a cluster CdrStore."""

    def __init__(self, stores, local) -> None:
        self.stores, self.local = stores, local
        self.config, self.locations, self.cdrs = stores.config, stores.locations, local.cdrs

    async def aclose(self) -> None:
        await self.stores.client.delete_prefix(self.stores.keys.root)
        await self.stores.aclose()
        self.local.close()


async def _open(name: str, tmp_path, request):
    from node.embedded import open_embedded

    if name == "embedded":
        return open_embedded(tmp_path)
    if name == "etcd":
        import uuid

        from cluster.etcd import open_etcd

        etcd = request.getfixturevalue("etcd_server")
        return _EtcdBackend(await open_etcd(etcd.endpoint, f"/test-{uuid.uuid4().hex}/"), open_embedded(tmp_path))
    raise AssertionError(f"unknown backend {name}")


async def _close(b) -> None:
    if hasattr(b, "aclose"):
        await b.aclose()
    else:
        b.close()


@pytest.fixture(params=BACKENDS)
async def backend(request, tmp_path) -> AsyncIterator[object]:
    b = await _open(request.param, tmp_path, request)
    yield b
    await _close(b)


class _CassandraCdrs:
    """The cluster CdrStore alone (tests/conftest.py cassandra_session: runs only where
    CASSANDRA_CONTACT_POINTS names a server), in its production mode: a plain upsert, which
    keeps identical replays idempotent (what a spool sends) without a Paxos round per CDR."""

    def __init__(self, cdrs) -> None:
        self.cdrs = cdrs


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
async def cdr_backend(request, tmp_path) -> AsyncIterator[object]:
    """CdrStore cases: the SQLite store (which the etcd backend also keeps) and Cassandra."""
    if request.param == "cassandra":
        from cluster.cassandra.cdr_store import CassandraCdrStore

        session, keyspace = request.getfixturevalue("cassandra_session")
        for table in ("cdrs", "cdr_buckets"):
            session.execute(f"TRUNCATE {keyspace}.{table}", timeout=60)
        store = CassandraCdrStore(session, keyspace)
        await store.start()
        yield _CassandraCdrs(store)
        return
    b = await _open(request.param, tmp_path, request)
    yield b
    await _close(b)


def _binding(tenant_id: int, ext: str, contact: str, expires_at: float, q: float = 1.0, cseq: int = 1) -> Binding:
    return Binding(
        tenant_id=tenant_id, extension=ext, contact=contact, source_host="127.0.0.1", source_port=5070,
        transport="udp", expires_at=expires_at, call_id="cid-" + contact, cseq=cseq, q=q,
    )


def _cdr(id_: str, tenant_id: int, start: float, **kw) -> Cdr:
    return Cdr(
        id=id_, tenant_id=tenant_id, call_id="c" + id_, caller="1001", callee="1002", direction="internal",
        start=start, end=start + 10, **kw,
    )


# ---------------------------------------------------------------- ConfigStore


async def test_tenant_round_trip(backend):
    c = backend.config
    t = await c.create_tenant("acme", "pbx.acme.example", max_calls=4, ring_timeout=20, timezone="Europe/Berlin")
    assert (t.name, t.domain, t.max_calls, t.ring_timeout, t.timezone) == (
        "acme", "pbx.acme.example", 4, 20, "Europe/Berlin",
    )
    assert await c.get_tenant(t.id) == t
    assert await c.tenant_by_domain("pbx.acme.example") == t
    assert await c.tenant_by_domain("PBX.Acme.Example") == t  # host names are case-insensitive
    assert await c.tenant_by_domain("other.example") is None
    assert [x.id for x in await c.list_tenants()] == [t.id]


async def test_duplicate_tenant_name_or_domain_is_refused(backend):
    c = backend.config
    await c.create_tenant("acme", "acme.example")
    with pytest.raises(ValueError, match="already exists"):
        await c.create_tenant("acme", "other.example")
    with pytest.raises(ValueError, match="already used"):
        await c.create_tenant("other", "ACME.example")
    assert len(await c.list_tenants()) == 1


async def test_extension_round_trip(backend):
    c = backend.config
    t = await c.create_tenant("acme", "acme.example")
    e = await c.create_extension(t.id, "1001", "s3cret!", display_name="Alice", callerid_number="+4930111")
    assert (e.tenant_id, e.number, e.password, e.display_name, e.callerid_number) == (
        t.id, "1001", "s3cret!", "Alice", "+4930111",
    )
    assert await c.get_extension(t.id, "1001") == e
    assert await c.get_extension(t.id, "1002") is None
    await c.create_extension(t.id, "200", "another1")
    assert [x.number for x in await c.list_extensions(t.id)] == ["200", "1001"]
    with pytest.raises(ValueError, match="1001 already exists"):
        await c.create_extension(t.id, "1001", "whatever")
    assert await c.delete_extension(t.id, "1001") is True
    assert await c.delete_extension(t.id, "1001") is False
    assert await c.get_extension(t.id, "1001") is None


async def test_did_is_globally_unique_and_found_with_or_without_plus(backend):
    c = backend.config
    a = await c.create_tenant("a", "a.example")
    b = await c.create_tenant("b", "b.example")
    await c.create_extension(a.id, "1001", "secret1")
    await c.create_extension(b.id, "1001", "secret1")
    d = await c.create_did(a.id, "+4930555", "extension", "1001")
    assert (d.tenant_id, d.number, d.dest_type, d.dest_value) == (a.id, "+4930555", "extension", "1001")
    for form in ("+4930555", "4930555"):
        assert await c.did_by_number(form) == d
    assert await c.did_by_number("4930556") is None
    for form in ("+4930555", "4930555"):
        with pytest.raises(ValueError, match="already in use"):
            await c.create_did(b.id, form, "extension", "1001")
    assert await c.list_dids(b.id) == []
    assert await c.list_dids(a.id) == [d]
    assert await c.delete_did(a.id, "+4930555") is True
    assert await c.did_by_number("+4930555") is None


async def test_did_needs_an_extension_of_the_same_tenant(backend):
    c = backend.config
    t = await c.create_tenant("acme", "acme.example")
    with pytest.raises(ValueError, match="does not exist"):
        await c.create_did(t.id, "4930555", "extension", "1001")
    assert await c.did_by_number("4930555") is None


async def test_trunk_round_trip_and_source_lookup(backend):
    c = backend.config
    t = await c.create_tenant("acme", "acme.example")
    tr = await c.create_trunk(t.id, "carrier", "192.0.2.10", port=5080, transport="tcp", username="u",
                              password="p", register=True, from_domain="sip.carrier.example")
    assert (tr.host, tr.port, tr.transport, tr.username, tr.password, tr.register, tr.from_domain) == (
        "192.0.2.10", 5080, "tcp", "u", "p", True, "sip.carrier.example",
    )
    assert await c.get_trunk(t.id, "carrier") == tr
    assert await c.trunks_by_address("192.0.2.10") == [tr]
    assert await c.trunks_by_address("192.0.2.11") == []
    v6 = await c.create_trunk(t.id, "v6", "[2001:DB8:0::1]")
    assert await c.trunks_by_address("2001:db8::1") == [v6]  # as a socket reports the peer
    assert [x.name for x in await c.list_trunks(t.id)] == ["carrier", "v6"]
    assert await c.delete_trunk(t.id, "v6") is True
    assert await c.trunks_by_address("2001:db8::1") == []
    assert await c.delete_trunk(t.id, "v6") is False


async def test_match_routes_longest_prefix_then_priority(backend):
    c = backend.config
    t = await c.create_tenant("acme", "acme.example")
    for name in ("a", "b", "c"):
        await c.create_trunk(t.id, name, f"{name}.carrier.example")
    default = await c.create_route(t.id, "", "c")
    r0b = await c.create_route(t.id, "0", "b", priority=5, strip=1, prepend="+49")
    r0a = await c.create_route(t.id, "0", "a", priority=1)
    r00 = await c.create_route(t.id, "00", "c")
    got = await c.match_routes(t.id, "0049301234")
    assert [r.id for r, _ in got] == [r00.id, r0a.id, r0b.id, default.id]
    assert [tr.name for _, tr in got] == ["c", "a", "b", "c"]
    assert (got[2][0].strip, got[2][0].prepend) == (1, "+49")
    assert [r.id for r, _ in await c.match_routes(t.id, "0301234")] == [r0a.id, r0b.id, default.id]
    assert [r.id for r, _ in await c.match_routes(t.id, "5551234")] == [default.id]
    assert await c.delete_route(t.id, r0a.id) is True
    assert [r.id for r, _ in await c.match_routes(t.id, "0301234")] == [r0b.id, default.id]
    assert await c.delete_route(t.id, r0a.id) is False


async def test_route_needs_an_existing_trunk(backend):
    c = backend.config
    t = await c.create_tenant("acme", "acme.example")
    with pytest.raises(ValueError, match="no trunk"):
        await c.create_route(t.id, "0", "missing")
    assert await c.list_routes(t.id) == []


async def test_delete_tenant_cascades_but_keeps_cdrs(backend):
    c = backend.config
    t = await c.create_tenant("acme", "acme.example")
    await c.create_extension(t.id, "1001", "secret1")
    await c.create_did(t.id, "4930555", "extension", "1001")
    await c.create_trunk(t.id, "carrier", "192.0.2.10")
    await c.create_route(t.id, "0", "carrier")
    await backend.locations.save(_binding(t.id, "1001", "sip:1001@10.0.0.1", 2000.0))
    await backend.cdrs.write(_cdr("x1", t.id, 100.0))

    assert await c.delete_tenant(t.id) is True
    assert await c.get_tenant(t.id) is None
    assert await c.tenant_by_domain("acme.example") is None
    assert await c.get_extension(t.id, "1001") is None
    assert await c.did_by_number("4930555") is None
    assert await c.trunks_by_address("192.0.2.10") == []
    assert await c.match_routes(t.id, "0301") == []
    assert await backend.locations.lookup(t.id, "1001", 1000.0) == []
    assert [x.id for x in await backend.cdrs.list(t.id)] == ["x1"]
    assert await c.delete_tenant(t.id) is False
    # the DID and domain are free again
    t2 = await c.create_tenant("acme", "acme.example")
    assert t2.id != t.id  # ids are never reused: the old CDRs must not become the new tenant's
    assert await backend.cdrs.list(t2.id) == []


# ---------------------------------------------------------------- LocationStore


async def test_location_save_lookup_refresh_remove(backend):
    loc = backend.locations
    await loc.save(_binding(1, "1001", "sip:a@10.0.0.1", 1100.0, q=0.5))
    await loc.save(_binding(1, "1001", "sip:b@10.0.0.2", 1200.0, q=0.9))
    await loc.save(_binding(1, "1002", "sip:c@10.0.0.3", 1200.0))
    got = await loc.lookup(1, "1001", 1000.0)
    assert [b.contact for b in got] == ["sip:b@10.0.0.2", "sip:a@10.0.0.1"]  # highest q first
    # refresh of the same contact replaces, never duplicates
    await loc.save(_binding(1, "1001", "sip:a@10.0.0.1", 1500.0, q=1.0, cseq=2))
    got = await loc.lookup(1, "1001", 1000.0)
    assert [(b.contact, b.cseq, b.expires_at) for b in got] == [
        ("sip:a@10.0.0.1", 2, 1500.0), ("sip:b@10.0.0.2", 1, 1200.0),
    ]
    await loc.remove(1, "1001", "sip:a@10.0.0.1")
    assert [b.contact for b in await loc.lookup(1, "1001", 1000.0)] == ["sip:b@10.0.0.2"]
    await loc.remove_all(1, "1001")
    assert await loc.lookup(1, "1001", 1000.0) == []
    assert [b.extension for b in await loc.list(None, 1000.0)] == ["1002"]


async def test_location_lookup_hides_expired_and_expire_drops_them(backend):
    loc = backend.locations
    await loc.save(_binding(1, "1001", "sip:old@10.0.0.1", 1000.0))
    await loc.save(_binding(1, "1001", "sip:new@10.0.0.2", 3000.0))
    assert [b.contact for b in await loc.lookup(1, "1001", 2000.0)] == ["sip:new@10.0.0.2"]
    assert len(await loc.list(None, 500.0)) == 2
    assert await loc.expire(2000.0) == 1
    assert [b.contact for b in await loc.list(None, 500.0)] == ["sip:new@10.0.0.2"]
    assert await loc.expire(2000.0) == 0


async def test_location_is_scoped_by_tenant(backend):
    loc = backend.locations
    await loc.save(_binding(1, "1001", "sip:a@10.0.0.1", 2000.0))
    await loc.save(_binding(2, "1001", "sip:b@10.0.0.2", 2000.0))
    assert [b.contact for b in await loc.lookup(1, "1001", 1000.0)] == ["sip:a@10.0.0.1"]
    assert [b.tenant_id for b in await loc.list(2, 1000.0)] == [2]
    await loc.remove_all(1, "1001")
    assert [b.contact for b in await loc.lookup(2, "1001", 1000.0)] == ["sip:b@10.0.0.2"]
    await loc.remove(1, "1001", "sip:b@10.0.0.2")  # wrong tenant: nothing happens
    assert len(await loc.lookup(2, "1001", 1000.0)) == 1


# ---------------------------------------------------------------- CdrStore


async def test_cdr_write_is_idempotent(cdr_backend):
    backend = cdr_backend
    first = _cdr("attempt-1", 1, 100.0, disposition="answered", answer=101.0)
    await backend.cdrs.write(first)
    await backend.cdrs.write(first)  # a replay (the spool after a crash) never duplicates
    assert await backend.cdrs.list(1) == [first]
    # (an id is unique per call attempt, so a *different* record under a written id never
    # happens; the contract does not ask backends to pay for detecting it)


async def test_cdr_list_newest_first_scoped_limited(cdr_backend):
    backend = cdr_backend
    for i, start in enumerate([100.0, 300.0, 200.0]):
        await backend.cdrs.write(_cdr(f"a{i}", 1, start))
    await backend.cdrs.write(_cdr("b0", 2, 400.0))
    assert [c.start for c in await backend.cdrs.list(1)] == [300.0, 200.0, 100.0]
    assert [c.start for c in await backend.cdrs.list(1, limit=2)] == [300.0, 200.0]
    assert [c.start for c in await backend.cdrs.list(1, since=200.0)] == [300.0, 200.0]
    assert [c.id for c in await backend.cdrs.list(2)] == ["b0"]
    assert await backend.cdrs.list(3) == []


async def test_cdr_write_many_replayed_batch_is_idempotent(cdr_backend):
    cdrs = cdr_backend.cdrs
    batch = [_cdr(f"m{i:02}", 1, 100.0 + i) for i in range(20)]
    await cdrs.write_many(batch)
    await cdrs.write_many(batch[5:] + [_cdr("m20", 1, 120.0)])  # a spool replays an acknowledged batch
    got = await cdrs.list(1, limit=100)
    assert [c.id for c in got] == [f"m{i:02}" for i in range(20, -1, -1)]
    assert got[-1] == batch[0]


async def test_cdr_list_spans_days_and_refuses_a_bad_limit(cdr_backend):
    cdrs = cdr_backend.cdrs
    day = 86_400.0
    starts = [1_700_000_000.25, 1_700_000_000.25 - 3 * day, 1_700_000_000.25 - 40 * day]
    for i, start in enumerate(starts):
        await cdrs.write(_cdr(f"d{i}", 1, start, answer=start + 2.5, trunk="carrier", caller_name="Zoë"))
    got = await cdrs.list(1)
    assert [c.start for c in got] == starts
    assert (got[0].answer, got[0].trunk, got[0].caller_name) == (starts[0] + 2.5, "carrier", "Zoë")
    assert [c.id for c in await cdrs.list(1, since=starts[1])] == ["d0", "d1"]
    with pytest.raises(ValueError):
        await cdrs.list(1, limit=0)


# ---------------------------------------------------------------- feature objects


async def test_feature_objects_round_trip_and_scope(backend):
    c = backend.config
    a = await c.create_tenant("obj-a", "a.objects.example")
    b = await c.create_tenant("obj-b", "b.objects.example")
    await c.put_object(a.id, "ivr", "main", {"prompt": "welcome", "keys": {"1": ["extension", "1001"]}})
    await c.put_object(a.id, "ivr", "after hours", {"prompt": "closed"})
    await c.put_object(b.id, "ivr", "main", {"prompt": "other tenant"})
    assert await c.get_object(a.id, "ivr", "main") == {"prompt": "welcome", "keys": {"1": ["extension", "1001"]}}
    assert list(await c.list_objects(a.id, "ivr")) == ["after hours", "main"]
    # another tenant's object of the same name is its own
    assert (await c.get_object(b.id, "ivr", "main"))["prompt"] == "other tenant"
    assert await c.get_object(a.id, "queue", "main") is None
    # replace
    await c.put_object(a.id, "ivr", "main", {"prompt": "new"})
    assert await c.get_object(a.id, "ivr", "main") == {"prompt": "new"}
    # what a caller gets is a copy
    got = await c.get_object(a.id, "ivr", "main")
    got["prompt"] = "mutated"
    assert (await c.get_object(a.id, "ivr", "main"))["prompt"] == "new"
    assert await c.delete_object(b.id, "ivr", "after hours") is False  # not b's
    assert await c.delete_object(a.id, "ivr", "after hours") is True
    assert list(await c.list_objects(a.id, "ivr")) == ["main"]
    await c.delete_tenant(a.id)
    assert await c.list_objects(a.id, "ivr") == {}
    assert list(await c.list_objects(b.id, "ivr")) == ["main"]


async def test_get_object_nowait_answers_like_get_object(backend):
    """The synchronous read (recording's policy on every answered call) sees every write the
    awaited one sees, scoped the same, and hands out a copy."""
    c = backend.config
    a = await c.create_tenant("now-a", "a.nowait.example")
    b = await c.create_tenant("now-b", "b.nowait.example")
    assert c.get_object_nowait(a.id, "recording", "1001") is None
    await c.put_object(a.id, "recording", "1001", {"mode": "always"})
    await c.put_object(b.id, "recording", "1001", {"mode": "never"})
    for tid, want in ((a.id, {"mode": "always"}), (b.id, {"mode": "never"})):
        assert c.get_object_nowait(tid, "recording", "1001") == want == await c.get_object(tid, "recording", "1001")
    assert c.get_object_nowait(a.id, "recording", "1002") is None
    assert c.get_object_nowait(a.id, "ivr", "1001") is None
    c.get_object_nowait(a.id, "recording", "1001")["mode"] = "mutated"
    assert c.get_object_nowait(a.id, "recording", "1001") == {"mode": "always"}
    await c.put_object(a.id, "recording", "1001", {"mode": "on_demand", "toggle": "*1"})
    assert c.get_object_nowait(a.id, "recording", "1001") == {"mode": "on_demand", "toggle": "*1"}
    assert await c.delete_object(a.id, "recording", "1001") is True
    assert c.get_object_nowait(a.id, "recording", "1001") is None
    assert c.get_object_nowait(b.id, "recording", "1001") == {"mode": "never"}
    await c.delete_tenant(b.id)
    assert c.get_object_nowait(b.id, "recording", "1001") is None


@pytest.mark.parametrize(
    "kind, name, data",
    [
        ("IVR", "main", {}),  # kind must be lower case
        ("ivr", "", {}),
        ("ivr", "x" * 65, {}),
        ("ivr", "main", ["not", "an", "object"]),
        ("ivr", "main", {"n": float("nan")}),
        ("ivr", "main", {"big": "x" * 70000}),
    ],
)
async def test_feature_objects_bad_input(backend, kind, name, data):
    c = backend.config
    t = await c.create_tenant("obj-bad", "bad.objects.example")
    with pytest.raises(ValueError):
        await c.put_object(t.id, kind, name, data)
    with pytest.raises(ValueError):
        await c.put_object(t.id + 1000, "ivr", "main", {})  # no such tenant
