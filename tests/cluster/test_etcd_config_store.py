"""The etcd ConfigStore as a cluster sees it: two nodes (two clients, one etcd), changes on one
in force on the other within a second, uniqueness that holds when nodes race, ids never
reused. The single-store behaviour is in tests/contract/test_store_contract.py."""

from __future__ import annotations

import asyncio

import pytest

from node.config_rules import ConfigError


async def _until(predicate, timeout: float = 1.0) -> float:
    """Seconds until ``await predicate()`` is true; fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"not seen within {timeout}s")
        await asyncio.sleep(0.01)
    return loop.time() - start


async def test_a_change_on_one_node_is_in_force_on_the_other_within_a_second(open_stores):
    a, b = (await open_stores()).config, (await open_stores()).config
    t = await a.create_tenant("acme", "acme.example")
    await _until(lambda: _eq(b.tenant_by_domain("acme.example"), t))
    e = await a.create_extension(t.id, "1001", "secret-1")
    await _until(lambda: _eq(b.get_extension(t.id, "1001"), e))
    d = await b.create_did(t.id, "+4930555", "extension", "1001")
    await _until(lambda: _eq(a.did_by_number("4930555"), d))
    tr = await b.create_trunk(t.id, "carrier", "192.0.2.7")
    r = await b.create_route(t.id, "0", "carrier")
    await _until(lambda: _eq(a.match_routes(t.id, "0301"), [(r, tr)]))
    await a.put_object(t.id, "ivr", "main", {"prompt": "hello"})
    await _until(lambda: _eq(b.get_object(t.id, "ivr", "main"), {"prompt": "hello"}))
    # deletes travel too
    assert await a.delete_did(t.id, "4930555")
    await _until(lambda: _eq(b.did_by_number("4930555"), None))
    assert await b.delete_tenant(t.id)
    await _until(lambda: _eq(a.tenant_by_domain("acme.example"), None))
    await _until(lambda: _eq(a.get_extension(t.id, "1001"), None))
    assert await a.list_objects(t.id, "ivr") == {}


async def _eq(awaitable, expected) -> bool:
    return (await awaitable) == expected


async def test_racing_nodes_cannot_both_take_a_domain_or_a_did(open_stores):
    nodes = [(await open_stores()).config for _ in range(3)]
    results = await asyncio.gather(
        *(n.create_tenant(f"t{i}{j}", "same.example") for i, n in enumerate(nodes) for j in range(3)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 8
    assert all(isinstance(e, ConfigError) and e.status_hint == 409 and "already used" in str(e) for e in lost)
    t = won[0]
    a = await nodes[0].create_tenant("a", "a.example")
    for tenant in (t, a):
        await nodes[0].create_extension(tenant.id, "1001", "secret-1")
    await _until(lambda: _eq(nodes[2].get_extension(a.id, "1001"), nodes[0]._v.exts[a.id]["1001"]))
    results = await asyncio.gather(
        *(n.create_did(tid, num, "extension", "1001")
          for n in nodes for tid in (t.id, a.id) for num in ("+4940111", "4940111")),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert all("already in use" in str(r) for r in results if isinstance(r, BaseException))
    for n in nodes:
        await _until(lambda n=n: _eq(n.did_by_number("4940111"), won[0]))


async def test_ids_are_unique_across_nodes_and_never_reused(open_stores):
    a, b = (await open_stores()).config, (await open_stores()).config
    tenants = await asyncio.gather(*(
        (a if i % 2 else b).create_tenant(f"t{i}", f"t{i}.example") for i in range(10)
    ))
    ids = [t.id for t in tenants]
    assert len(set(ids)) == 10
    exts = await asyncio.gather(*(
        (a if i % 2 else b).create_extension(tenants[0].id, str(1000 + i), "secret-1") for i in range(10)
    ))
    assert len({e.id for e in exts}) == 10
    top = max(ids)
    assert await a.delete_tenant(top)
    again = await b.create_tenant(f"t{top}", f"t{top}.example")
    assert again.id > top


async def test_extension_delete_refused_while_a_did_points_at_it(open_stores):
    a, b = (await open_stores()).config, (await open_stores()).config
    t = await a.create_tenant("acme", "acme.example")
    await a.create_extension(t.id, "1001", "secret-1")
    await b.create_did(t.id, "4930555", "extension", "1001")
    with pytest.raises(ConfigError, match="destination of DID 4930555"):
        await a.delete_extension(t.id, "1001")
    # racing: DIDs created while extension deletes run; an extension is never deleted under a DID
    await a.create_extension(t.id, "1002", "secret-2")
    await _until(lambda: _eq(b.get_extension(t.id, "1002") , a._v.exts[t.id]["1002"]))
    results = await asyncio.gather(
        b.create_did(t.id, "4930666", "extension", "1002"), a.delete_extension(t.id, "1002"),
        return_exceptions=True,
    )
    did_ok = not isinstance(results[0], BaseException)
    ext_deleted = results[1] is True
    assert did_ok != ext_deleted, results  # exactly one of them won
    if did_ok:
        assert await a.get_extension(t.id, "1002") is not None
    assert await a.delete_trunk(t.id, "none") is False


async def test_trunk_delete_refused_while_a_route_uses_it(open_stores):
    a = (await open_stores()).config
    t = await a.create_tenant("acme", "acme.example")
    await a.create_trunk(t.id, "carrier", "192.0.2.7")
    r = await a.create_route(t.id, "0", "carrier")
    with pytest.raises(ConfigError, match=f"used by route {r.id}"):
        await a.delete_trunk(t.id, "carrier")
    with pytest.raises(ConfigError, match="already exists"):
        await a.create_route(t.id, "0", "carrier")
    assert await a.delete_route(t.id, r.id)
    # the (prefix, trunk) guard went with the route
    r2 = await a.create_route(t.id, "0", "carrier")
    assert r2.id > r.id
    assert await a.delete_route(t.id, r2.id)
    assert await a.delete_trunk(t.id, "carrier")


async def test_tenant_isolation_on_etcd(open_stores):
    a, b = (await open_stores()).config, (await open_stores()).config
    t1 = await a.create_tenant("one", "one.example")
    t2 = await a.create_tenant("two", "two.example")
    await a.create_extension(t1.id, "1001", "secret-1")
    await a.create_trunk(t1.id, "carrier", "192.0.2.7")
    await a.put_object(t1.id, "ivr", "main", {"x": 1})
    await _until(lambda: _eq(b.get_tenant(t2.id), t2))
    # tenant two sees nothing of tenant one, and cannot reach or remove it
    assert await b.get_extension(t2.id, "1001") is None
    assert await b.list_extensions(t2.id) == []
    assert await b.get_object(t2.id, "ivr", "main") is None
    with pytest.raises(ConfigError, match="does not exist in this tenant"):
        await b.create_did(t2.id, "4930555", "extension", "1001")
    with pytest.raises(ConfigError, match="no trunk"):
        await b.create_route(t2.id, "0", "carrier")
    assert await b.delete_extension(t2.id, "1001") is False
    assert await b.delete_trunk(t2.id, "carrier") is False
    assert await b.delete_object(t2.id, "ivr", "main") is False
    d = await a.create_did(t1.id, "4930555", "extension", "1001")
    assert await b.delete_did(t2.id, "4930555") is False
    await _until(lambda: _eq(b.did_by_number("4930555"), d))
    assert await b.get_extension(t1.id, "1001") is not None


async def test_a_broken_watch_resyncs(open_stores):
    """A watch that breaks (etcd restart, compaction) reloads: no change is lost."""
    a, b = await open_stores(), await open_stores()
    t = await a.config.create_tenant("acme", "acme.example")
    await _until(lambda: _eq(b.config.get_tenant(t.id), t))
    watched = b.config._watched
    reloads = watched.reloads
    # the gRPC watch stream breaks under the store's feet (what aetcd does when it fails)
    await b.client._watcher._terminate_stream(ConnectionError("stream reset"))
    e = await a.config.create_extension(t.id, "1001", "secret-1")
    await _until(lambda: _eq(b.config.get_extension(t.id, "1001"), e), timeout=5)
    assert watched.reloads > reloads


async def test_etcd_down_reads_go_on_writes_fail_clearly_and_all_resumes(tmp_path):
    """etcd restarts under a node: lookups keep being served from memory, a write in between
    fails with an error (never hangs), and once etcd is back the views resync by themselves."""
    from cluster.etcd import open_etcd
    from tests.peers.etcd import EtcdServer

    server = EtcdServer(str(tmp_path)).start()
    a = b = None
    try:
        a, b = await open_etcd(server.endpoint, "/x/"), await open_etcd(server.endpoint, "/x/")
        t = await a.config.create_tenant("acme", "acme.example")
        await _until(lambda: _eq(b.config.get_tenant(t.id), t))
        server.stop(keep_data=True)
        assert await b.config.tenant_by_domain("acme.example") == t  # hot reads need no etcd
        with pytest.raises(Exception) as err:
            await asyncio.wait_for(a.config.create_extension(t.id, "1001", "secret-1"), 30)
        assert not isinstance(err.value, asyncio.TimeoutError)
        await asyncio.to_thread(server.start)
        e = None
        for _ in range(100):  # the client reconnects on its own; the first tries may still fail
            try:
                e = await a.config.create_extension(t.id, "1001", "secret-1")
                break
            except ConfigError:
                raise
            except Exception:
                await asyncio.sleep(0.1)
        assert e is not None
        await _until(lambda: _eq(b.config.get_extension(t.id, "1001"), e), timeout=15)
    finally:
        for stores in (a, b):
            if stores is not None:
                await stores.aclose()
        server.stop()
