"""Port pairs the relay keeps bound between calls (node/rtp_engine/relay.py, "Sockets kept
between calls"): reused only after their quarantine, fresh state every session, dropped
traffic while idle, and every socket closed and every port back in the pool in the end."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from prometheus_client import REGISTRY

from node.rtp_engine import PortPool, PortsExhausted, RtpRelay
from tests.integration.test_rtp_relay import call, free_port_pair_range, phone, rtp, until

#: a pool big enough that parking is allowed (PortPool.low_water is 8 pairs at least)
PAIRS = 24


def bound(port: int) -> bool:
    """Whether some socket holds ``port`` on 127.0.0.1 (ours: the range was free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            assert e.errno == errno.EADDRINUSE
            return True
    return False


def ports_of(s) -> list[int]:
    return [s.a.local_port, s.a.local_port + 1, s.b.local_port, s.b.local_port + 1]


@pytest.fixture
async def relay():
    lo, hi = free_port_pair_range(PAIRS)
    r = RtpRelay(PortPool(lo, hi), "127.0.0.1", reuse_after=0.2, max_idle=16)
    yield r
    r.close()
    await r.wait_closed()
    assert r.pool.available == r.pool.capacity and r.pool.parked == 0
    assert r.idle_pairs == 0


async def test_a_closed_sessions_pairs_stay_bound_and_serve_a_later_session(relay: RtpRelay) -> None:
    s1, a, b = await call(relay)
    a.send(rtp(1), s1.a.local_port)
    assert (await b.recv())[0] == rtp(1)
    s1.a.add_tap(lambda data: None)  # recording on the old call: must not follow the port
    old_ports = ports_of(s1)
    idle_before = REGISTRY.get_sample_value("hivepbx_rtp_idle_pairs")
    s1.close()
    await s1.wait_closed()
    pool = relay.pool
    assert pool.in_use == 0 and pool.parked == 2 and relay.idle_pairs == 2
    assert REGISTRY.get_sample_value("hivepbx_rtp_idle_pairs") == idle_before + 2
    assert all(bound(p) for p in old_ports)  # kept open for the next call
    # the closed session can no longer send, but its figures stay readable
    assert s1.a.inject(rtp(2)) is False
    assert s1.stats().a.packets_in == 1
    # traffic reaching an idle pair goes nowhere
    dropped = relay.totals().dropped_no_destination
    a.send(rtp(3), old_ports[0])
    await until(lambda: relay.totals().dropped_no_destination == dropped + 1)
    assert b.queue.empty()

    s_fresh = await relay.open_session("c2", "acme")  # within the quarantine: fresh ports
    assert set(ports_of(s_fresh)).isdisjoint(old_ports)
    assert relay.pairs_reused == 0
    await asyncio.sleep(0.25)

    s2 = await relay.open_session("c3", "acme")
    assert sorted(ports_of(s2)) == sorted(old_ports) and relay.pairs_reused == 1
    assert relay.idle_pairs == 0 and pool.parked == 0
    assert s2.a.rtp.taps is None and s2.stats().a.packets_in == 0 and s2.a.remote is None
    # a new pair of phones: latching starts afresh and media flows both ways
    c, d = await phone(), await phone()
    s2.a.set_remote(c.host, c.port)
    s2.b.set_remote(d.host, d.port)
    for seq in range(3):
        c.send(rtp(seq, ssrc=0xC), s2.a.local_port)
        data, src = await d.recv()
        assert data == rtp(seq, ssrc=0xC) and src[1] == s2.b.local_port
        d.send(rtp(seq, ssrc=0xD), s2.b.local_port)
        data, src = await c.recv()
        assert data == rtp(seq, ssrc=0xD) and src[1] == s2.a.local_port
    assert s2.stats().a.latched == (c.host, c.port)
    assert s2.a.inject(rtp(9)) is True and (await c.recv())[0] == rtp(9)
    assert s1.stats().a.packets_in == 1  # the old session counted nothing of the new call
    for p in (a, b, c, d):
        p.close()
    for s in (s_fresh, s2):
        s.close()
        await s.wait_closed()
    assert pool.in_use == 0


async def test_close_and_expiry_close_idle_sockets() -> None:
    lo, hi = free_port_pair_range(PAIRS)
    relay = RtpRelay(PortPool(lo, hi), "127.0.0.1", reuse_after=0.0, max_idle=16, idle_ttl=0.2)
    sessions = [await relay.open_session(f"c{i}", "acme") for i in range(3)]
    ports = [p for s in sessions for p in ports_of(s)]
    for s in sessions:
        s.close()
        await s.wait_closed()
    assert relay.idle_pairs == 6 and all(bound(p) for p in ports)
    # nobody takes them: after idle_ttl they are closed and their ports are free again
    await until(lambda: relay.idle_pairs == 0 and relay.pool.parked == 0)
    await until(lambda: not any(bound(p) for p in ports))
    assert relay.pool.available == relay.pool.capacity

    s = await relay.open_session("c9", "acme")
    s.close()
    await s.wait_closed()
    assert relay.idle_pairs == 2
    relay.close()  # the relay's end closes what it kept
    await relay.wait_closed()
    assert relay.idle_pairs == 0 and relay.pool.available == relay.pool.capacity
    assert not any(bound(p) for p in ports_of(s))


async def test_no_parking_when_disabled_or_the_pool_runs_low() -> None:
    lo, hi = free_port_pair_range(PAIRS)
    relay = RtpRelay(PortPool(lo, hi), "127.0.0.1", max_idle=0)
    s = await relay.open_session("c", "acme")
    s.close()
    await s.wait_closed()
    assert relay.idle_pairs == 0 and not any(bound(p) for p in ports_of(s))
    relay.close()
    await relay.wait_closed()

    lo, hi = free_port_pair_range(PAIRS)
    pool = PortPool(lo, hi)
    relay = RtpRelay(pool, "127.0.0.1", reuse_after=0.0, max_idle=64)
    held = [await relay.open_session(f"c{i}", "acme") for i in range((PAIRS - pool.low_water) // 2)]
    assert not pool.can_park  # only low_water ports left free
    held[0].close()
    await held[0].wait_closed()
    assert relay.idle_pairs == 0 and pool.in_use == len(held) * 2 - 2
    relay.close()
    await relay.wait_closed()
    assert pool.available == pool.capacity


async def test_other_users_of_the_pool_get_ports_back_from_idle_pairs() -> None:
    lo, hi = free_port_pair_range(PAIRS)
    pool = PortPool(lo, hi)
    relay = RtpRelay(pool, "127.0.0.1", reuse_after=10.0, max_idle=64)
    sessions = [await relay.open_session(f"c{i}", "acme") for i in range(4)]
    for s in sessions:
        s.close()
        await s.wait_closed()
    assert pool.parked == 8
    # the media engine (same pool) takes ports until the free queue runs low: the relay
    # closes some idle pairs, whose ports come back once their sockets are closed
    taken = [pool.acquire() for _ in range(PAIRS - 8 - pool.low_water + 1)]
    assert relay.idle_pairs < 8
    await until(lambda: pool.parked == relay.idle_pairs)
    assert pool.available == PAIRS - len(taken)
    for p in taken:
        pool.release(p)
    relay.close()
    await relay.wait_closed()
    assert pool.available == pool.capacity and pool.in_use == 0


async def test_out_of_free_ports_a_session_takes_idle_pairs_in_quarantine() -> None:
    lo, hi = free_port_pair_range(PAIRS)
    pool = PortPool(lo, hi)
    relay = RtpRelay(pool, "127.0.0.1", reuse_after=10.0, max_idle=64)
    for i in range(2):
        s = await relay.open_session(f"c{i}", "acme")
        s.close()
        await s.wait_closed()
    assert pool.parked == 4
    reclaim, pool.reclaim = pool.reclaim, None  # someone else took every free port at once
    taken = [pool.acquire() for _ in range(PAIRS - 4)]
    pool.reclaim = reclaim
    s = await relay.open_session("late", "acme")
    assert relay.pairs_reused == 1
    # each failed acquire also closed an idle pair for the pool: those ports come back free
    assert relay.idle_pairs == 0
    await until(lambda: pool.parked == 0 and pool.available == 2)
    s2 = await relay.open_session("later", "acme")
    assert relay.pairs_reused == 1 and pool.available == 0
    with pytest.raises(PortsExhausted):
        await relay.open_session("latest", "acme")
    assert pool.in_use == len(taken) + 4
    for p in taken:
        pool.release(p)
    relay.close()
    await relay.wait_closed()
    assert pool.available == pool.capacity and pool.in_use == 0


def test_port_pool_parks_and_unparks() -> None:
    pool = PortPool(10000, 10009)  # five pairs
    p = pool.acquire()
    pool.park(p)
    assert (pool.parked, pool.in_use, pool.available, pool.capacity) == (1, 0, 5, 5)
    with pytest.raises(ValueError):
        pool.park(p)  # not in use
    pool.unpark(p)
    assert (pool.parked, pool.in_use) == (0, 1)
    with pytest.raises(ValueError):
        pool.unpark(p)  # not parked
    pool.park(p)
    pool.release(p)  # a parked port's sockets were closed
    assert (pool.parked, pool.in_use, pool.available) == (0, 0, 5)
    with pytest.raises(ValueError):
        pool.release(p)
    assert not pool.can_park  # five pairs: fewer than low_water stay free
