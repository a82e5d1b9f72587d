"""Membership and leader election on etcd leases: a dead node (no leave, its keep-alive just
stops) disappears within a few seconds and a new leader takes over; the embedded single node
is the only member and always leads."""

from __future__ import annotations

import asyncio

import pytest

from cluster.etcd import connect
from cluster.etcd.client import Keys
from cluster.etcd.membership import EtcdMembership
from node.embedded.membership import EmbeddedMembership


@pytest.fixture
async def nodes(etcd_server, etcd_prefix):
    """``await nodes(node_id)``: a member on its own client; crashed or closed at teardown."""
    made: list[tuple[EtcdMembership, object]] = []

    async def _make(node_id: str, ttl: int = 2) -> EtcdMembership:
        client = await connect(etcd_server.endpoint)
        m = EtcdMembership(client, Keys(etcd_prefix), node_id, ttl=ttl)
        await m.start()
        made.append((m, client))
        return m

    yield _make
    for m, client in made:
        try:
            await m.close()
        except Exception:
            pass
        await client.close()
    client = await connect(etcd_server.endpoint)
    await client.delete_prefix(etcd_prefix.encode())
    await client.close()


async def _crash(m: EtcdMembership) -> None:
    """What a killed process does to etcd: nothing. Its keep-alive just stops."""
    m._keepalive.cancel()
    m._keepalive = None
    m._lease_id = None  # close() must not revoke it either


async def _until(predicate, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        assert loop.time() - start < timeout, f"not within {timeout}s"
        await asyncio.sleep(0.02)
    return loop.time() - start


async def test_members_see_each_other_and_a_dead_node_disappears(nodes):
    a, b = await nodes("node-a"), await nodes("node-b")
    events: list[tuple[str, str]] = []
    a.watch(lambda ev, node, info: events.append((ev, node)))
    await a.join({"sip": ["udp:127.0.0.1:5060"]})
    await b.join({"sip": ["udp:127.0.0.1:5062"]})
    await _until(lambda: set(a.members()) == {"node-a", "node-b"}, 1.0)
    await _until(lambda: set(b.members()) == {"node-a", "node-b"}, 1.0)
    assert a.members()["node-b"]["sip"] == ["udp:127.0.0.1:5062"]
    assert ("joined", "node-b") in events
    # staying alive past the TTL: the keep-alive works
    await asyncio.sleep(2.5)
    assert set(a.members()) == {"node-a", "node-b"}
    await _crash(b)
    took = await _until(lambda: set(a.members()) == {"node-a"}, 5.0)
    assert ("left", "node-b") in events
    assert took <= 5.0
    # a clean leave is seen at once
    c = await nodes("node-c")
    await c.join()
    await _until(lambda: "node-c" in a.members(), 1.0)
    await c.leave()
    await _until(lambda: "node-c" not in a.members(), 1.0)


async def test_one_leader_at_a_time_and_takeover_when_it_dies(nodes):
    a, b = await nodes("node-a"), await nodes("node-b")
    await a.join()
    await b.join()
    order: list[str] = []

    async def lead(m: EtcdMembership, hold: asyncio.Event) -> None:
        async with m.campaign("node-events") as leadership:
            order.append(m.node_id)
            assert m.is_leader("node-events")
            await asyncio.wait([asyncio.ensure_future(hold.wait()), asyncio.ensure_future(leadership.lost.wait())],
                               return_when=asyncio.FIRST_COMPLETED)

    hold_a, hold_b = asyncio.Event(), asyncio.Event()
    ta = asyncio.create_task(lead(a, hold_a))
    await _until(lambda: order == ["node-a"], 2.0)
    tb = asyncio.create_task(lead(b, hold_b))
    await asyncio.sleep(0.5)
    assert order == ["node-a"] and not b.is_leader("node-events")  # b waits its turn
    await _crash(a)  # the leader dies without resigning
    await _until(lambda: order == ["node-a", "node-b"], 6.0)
    assert b.is_leader("node-events")
    hold_b.set()
    await tb
    assert not b.is_leader("node-events")
    ta.cancel()


async def test_resigning_hands_over_at_once(nodes):
    a, b = await nodes("node-a"), await nodes("node-b")
    await a.join()
    await b.join()
    async with a.campaign("cdr-sweep"):
        waiting = asyncio.create_task(_lead_once(b, "cdr-sweep"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    await asyncio.wait_for(waiting, 2.0)


async def _lead_once(m: EtcdMembership, job: str) -> None:
    async with m.campaign(job):
        pass


async def test_embedded_node_is_its_only_member_and_always_leads():
    m = EmbeddedMembership("solo")
    seen: list[tuple[str, str]] = []
    m.watch(lambda ev, node, info: seen.append((ev, node)))
    assert m.members() == {}
    await m.join({"sip": ["udp:127.0.0.1:5060"]})
    assert list(m.members()) == ["solo"] and m.members()["solo"]["sip"] == ["udp:127.0.0.1:5060"]
    async with m.campaign("node-events") as lead:
        assert m.is_leader("node-events") and not lead.lost.is_set()
        await m.leave()
        assert lead.lost.is_set() and not m.is_leader("node-events")
    assert seen == [("joined", "solo"), ("left", "solo")]


async def test_a_node_id_held_by_a_live_node_is_refused(nodes):
    from cluster.etcd.membership import MemberIdInUse

    a = await nodes("node-a")
    await a.join()
    twin = await nodes("node-a")
    with pytest.raises(MemberIdInUse, match="in use by a live node"):
        await twin.join()
    assert set(a.members()) == {"node-a"}
    # once the holder is dead (lease run out) the id is free again: a restart after a crash
    await _crash(a)
    again = await nodes("node-a")
    await again.join()
    await _until(lambda: set(again.members()) == {"node-a"}, 1.0)
