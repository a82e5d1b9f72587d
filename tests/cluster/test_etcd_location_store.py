"""Registrations in etcd: seen by every node, gone when they expire even with no node alive,
and a bounded number of leases however many phones register."""

from __future__ import annotations

import asyncio
import time

from node.model import Binding


def _binding(tenant_id: int, ext: str, contact: str, expires_at: float, node_id: str = "a") -> Binding:
    return Binding(
        tenant_id=tenant_id, extension=ext, contact=contact, source_host="127.0.0.1", source_port=5070,
        transport="udp", expires_at=expires_at, call_id="cid-" + contact, cseq=1, node_id=node_id,
    )


async def _until(predicate, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"not seen within {timeout}s"
        await asyncio.sleep(0.02)


async def test_registered_through_one_node_found_from_another(open_stores):
    a, b = (await open_stores()).locations, (await open_stores()).locations
    now = time.time()
    saved = _binding(1, "1001", "sip:1001@10.0.0.1:5060;transport=udp", now + 60, node_id="node-a")
    await a.save(saved)

    async def seen() -> bool:
        return await b.lookup(1, "1001", time.time()) == [saved]

    await _until(seen, 1.0)
    assert (await b.lookup(1, "1001", time.time()))[0].node_id == "node-a"  # who holds the flow
    assert await b.lookup(2, "1001", time.time()) == []  # another tenant's 1001 is not this one
    await b.remove(1, "1001", saved.contact)

    async def gone() -> bool:
        return await a.lookup(1, "1001", time.time()) == []

    await _until(gone, 1.0)


async def test_binding_vanishes_at_expiry_with_no_node_alive(open_stores, etcd_server, etcd_prefix):
    # one-second buckets and grace, so the test need not wait a real registration's minutes
    writer = await open_stores(lease_bucket=1, lease_grace=1)
    reader = await open_stores()
    now = time.time()
    await writer.locations.save(_binding(1, "1001", "sip:short@10.0.0.1", now + 1))
    await writer.locations.save(_binding(1, "1002", "sip:long@10.0.0.2", now + 60))

    async def both() -> bool:
        return len(await reader.locations.list(None, 0)) == 2

    await _until(both, 1.0)
    # the writer goes away without expiring anything; the reader never calls expire()
    await writer.aclose()

    async def short_gone() -> bool:
        return [b.extension for b in await reader.locations.list(None, 0)] == ["1002"]

    await _until(short_gone, 6.0)
    assert await reader.client.get(writer.keys.loc(1, "1001", "sip:short@10.0.0.1")) is None


async def test_ten_thousand_registrations_share_few_leases(open_stores):
    loc = (await open_stores()).locations
    now = time.time()
    sem = asyncio.Semaphore(64)

    async def save(i: int) -> None:
        async with sem:
            # expiries spread over an hour, like phones registering at random times
            await loc.save(_binding(1, str(10000 + i), f"sip:{i}@10.0.0.1", now + 60 + (i * 0.36)))

    await asyncio.gather(*(save(i) for i in range(10_000)))
    assert len(await loc.list(1, now)) == 10_000
    # one lease per 10 s of expiry: an hour of expiries needs at most ~362, not 10k
    assert loc.leases_granted <= 3600 // 10 + 2, loc.leases_granted
    assert loc.lease_count <= loc.leases_granted
    # a refresh re-uses the lease of its bucket: no new lease for the same expiry range
    before = loc.leases_granted
    await loc.save(_binding(1, "10000", "sip:0@10.0.0.1", now + 61))
    assert loc.leases_granted == before


async def test_expire_removes_only_what_is_still_expired(open_stores):
    a, b = (await open_stores()).locations, (await open_stores()).locations
    now = time.time()
    await a.save(_binding(1, "1001", "sip:x@10.0.0.1", now + 30))
    await a.save(_binding(1, "1002", "sip:y@10.0.0.1", now + 30))

    async def both() -> bool:
        return len(await b.list(None, 0)) == 2

    await _until(both, 1.0)
    await a.save(_binding(1, "1002", "sip:y@10.0.0.1", now + 3000))  # refreshed meanwhile on a
    await _until(lambda: _expires(b, "1002", now + 3000), 1.0)
    # both nodes sweep at once: each binding is removed once, the refreshed one stays
    n = sum(await asyncio.gather(a.expire(now + 60), b.expire(now + 60)))
    assert n == 1
    assert [x.extension for x in await a.list(None, 0)] == ["1002"]


async def _expires(store, ext: str, at: float) -> bool:
    got = await store.lookup(1, ext, 0)
    return bool(got) and got[0].expires_at == at
