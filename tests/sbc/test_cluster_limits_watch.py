"""How fast a tenant's slots move between SBC hosts (sbc/protection/cluster_counts.py) with a
real etcd: all of a tenant's max_calls in use on host a, one of them ends, how long until
host b admits a call. Each host watches the calls keys, so b sees a's ended call (and a
sees b's ``want``, b a's release) within milliseconds. The poll ``interval`` is set to 30 s
here: b admits with no poll read on either host in between, so the watch is what moved
the slots. The same scenario polled (watch off, the default 0.25 s interval) is printed
for comparison; figures are printed, not asserted. A restarted etcd breaks the watch: it is
counted, logged and watched again."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid

import pytest

from cluster.etcd.client import Keys, connect
from cluster.etcd.tenant_usage import EtcdTenantUsage
from sbc.protection import metrics as PM
from sbc.protection.cluster_counts import ClusterCounts
from sbc.protection.counters import CounterTable
from sbc.protection.tenants import TenantLimits, TenantPolicy
from tests.peers.etcd import EtcdServer

pytestmark = pytest.mark.interop

T = "alpha.example"
N = 3
#: the poll, set far longer than the test runs: only the watch can move slots in time
LONG_POLL = 30.0


class SbcHost:
    """One SBC host: its counter table and ClusterCounts running in the background, on its
    own etcd client; counts its reads of the calls keys."""

    def __init__(self, endpoint: str, prefix: str, name: str, *, watch: bool, interval: float) -> None:
        self.endpoint, self.prefix, self.name = endpoint, prefix, name
        self.watch, self.interval = watch, interval
        self.limits = TenantLimits(table=CounterTable.open(tenants=64, calls=1024))
        self.limits.policies[T] = TenantPolicy(max_calls=N)
        self.reads = 0
        self.n = 0
        self.calls: list[str] = []

    async def __aenter__(self) -> "SbcHost":
        self.client = await connect(self.endpoint)
        self.store = EtcdTenantUsage(self.client, Keys(self.prefix), self.name, ttl=30, deadline=1.0)
        read = self.store.read_calls

        async def counted():
            self.reads += 1
            return await read()

        self.store.read_calls = counted
        self.sync = ClusterCounts(self.store, self.limits, interval=self.interval, heartbeat=60.0, watch=self.watch)
        await self.sync.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.sync.stop()
        await self.store.close()
        await self.client.close()

    def call(self) -> str:
        """'' admitted, else the refusal's cause."""
        self.n += 1
        cid = f"{self.name}-{self.n}"
        now = time.time()
        cause = self.limits.check(T, True, True, "192.0.2.1", None, now) or self.limits.start(cid, T, True, True, now)
        if not cause:
            self.calls.append(cid)
        return cause

    def hang_up(self) -> None:
        assert self.limits.end(self.calls.pop(), 0.0, time.time())


async def _admit(host: SbcHost, timeout: float) -> tuple[float, int]:
    """Try a call every millisecond until one is admitted: (seconds it took, refusals)."""
    t0 = time.monotonic()
    refused = 0
    while host.call():
        refused += 1
        assert time.monotonic() - t0 < timeout, f"{host.name} admitted nothing in {timeout} s"
        await asyncio.sleep(0.001)
    return time.monotonic() - t0, refused


async def _window(endpoint: str, *, watch: bool, interval: float) -> tuple[float, int, int]:
    """All N slots in use on a, one call ends there: (seconds until b admits, b's refusals
    meanwhile, reads of the calls keys by both hosts meanwhile)."""
    prefix = f"/test-{uuid.uuid4().hex}/"
    async with SbcHost(endpoint, prefix, "sbc-a", watch=watch, interval=interval) as a, \
            SbcHost(endpoint, prefix, "sbc-b", watch=watch, interval=interval) as b:
        for _ in range(N):
            await _admit(a, 10 if watch else 20 * interval)
        assert b.call() == "max_calls"  # the tenant is full: a holds every slot
        await asyncio.sleep(0.2 + random.random() * 0.25)  # idle; the call ends at any phase of the poll
        reads = a.reads + b.reads
        a.hang_up()
        took, refused = await _admit(b, 10)
        reads = a.reads + b.reads - reads
        assert len(a.calls) + len(b.calls) == N and b.call() == "max_calls"
        c = await connect(endpoint)
        try:
            await c.delete_prefix(prefix.encode())
        finally:
            await c.close()
    return took, refused, reads


async def test_slots_move_to_the_other_host_through_the_watch(etcd_server) -> None:
    polled, polled_refused, _ = await _window(etcd_server.endpoint, watch=False, interval=0.25)
    took, refused, reads = await _window(etcd_server.endpoint, watch=True, interval=LONG_POLL)
    print(f"\na call ends on host a (all {N} slots in use there); host b admits after: "
          f"polled every 0.25 s {polled * 1e3:.0f} ms ({polled_refused} refusals), "
          f"watched {took * 1e3:.0f} ms ({refused} refusals)")
    # no poll read on either host meanwhile (the poll is 30 s): the watch moved the slots
    assert reads == 0


async def test_a_broken_watch_is_counted_logged_and_watched_again(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "hivepbx.sbc")
    server = EtcdServer(str(tmp_path)).start()
    broke = PM.CLUSTER_ERRORS.labels("watch")._value.get()
    try:
        prefix = f"/test-{uuid.uuid4().hex}/"
        async with SbcHost(server.endpoint, prefix, "sbc-a", watch=True, interval=LONG_POLL) as a, \
                SbcHost(server.endpoint, prefix, "sbc-b", watch=True, interval=LONG_POLL) as b:
            for _ in range(N):
                await _admit(a, 10)
            server.stop(keep_data=True)  # every watch stream breaks
            await asyncio.sleep(0.3)
            server.start()
            end = time.monotonic() + 20
            while not (a.sync.watching and b.sync.watching) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert PM.CLUSTER_ERRORS.labels("watch")._value.get() >= broke + 2
            assert any("etcd watch of the hosts' calls broke" in r.getMessage() for r in caplog.records), caplog.text
            assert any("etcd watch works again" in r.getMessage() for r in caplog.records), caplog.text
            # watched again: slots still move with no poll
            reads = a.reads + b.reads
            a.hang_up()
            took, _refused = await _admit(b, 10)
            print(f"\nafter the etcd restart: host b admits {took * 1e3:.0f} ms after a's call ended")
            assert a.reads + b.reads == reads
    finally:
        server.stop()
