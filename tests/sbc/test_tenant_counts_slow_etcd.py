"""The SBC's cross-host tenant counts (sbc/protection/cluster_counts.py on
cluster/etcd/tenant_usage.py) when etcd is slow, not down: a real etcd the test starts
itself and pauses (SIGSTOP: connections stay open, nothing answers, as with an overloaded
or partitioned etcd). Every etcd call has a deadline (``[etcd] limits_timeout``), so a
round fails within it, counted and logged as for a down etcd, and after the lease TTL the
host admits on its own calls + the other hosts' last known ones; without the deadline each
call waited the client's 5 s. SIGCONT: reservations are back. The same flow against a
down etcd (in memory) is tests/sbc/test_cluster_counts.py."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from pathlib import Path

import pytest

from cluster.etcd.client import EtcdTimeout, Keys, connect
from cluster.etcd.tenant_usage import EtcdTenantUsage
from sbc.protection import metrics as PM
from sbc.protection.cluster_counts import ClusterCounts
from sbc.protection.counters import ETCD_LOST, RESERVED, CounterTable
from sbc.protection.tenants import TenantLimits, TenantPolicy
from tests.peers.etcd import EtcdServer

pytestmark = pytest.mark.interop

T = "alpha.example"
TTL = 2
DEADLINE = 0.3
#: what one etcd call could take before: aetcd's timeout as cluster.etcd.connect sets it
CLIENT_TIMEOUT = 5.0


class SbcHost:
    """One SBC host's counter table and ClusterCounts on its own etcd client."""

    def __init__(self, client, prefix: str, name: str, policy: TenantPolicy) -> None:
        self.limits = TenantLimits(table=CounterTable.open(tenants=64, calls=1024))
        self.limits.policies[T] = policy
        self.store = EtcdTenantUsage(client, Keys(prefix), name, ttl=TTL, deadline=DEADLINE)
        self.sync = ClusterCounts(self.store, self.limits)
        self.n = 0

    def call(self) -> str:
        """'' admitted, else the refusal's cause."""
        self.n += 1
        now = time.time()
        cid = f"{self.store.host_id}-{self.n}"
        refused = self.limits.check(T, True, True, "192.0.2.1", None, now)
        return refused or self.limits.start(cid, T, True, True, now)

    async def round(self, publish: bool = False) -> float:
        """One background round with its reads (and ``publish``) due; how long it took."""
        self.sync._read_at = self.sync._usage_at = -1e9
        if publish:
            self.sync._published_at = -1e9
        t0 = time.monotonic()
        await self.sync.sync()
        return time.monotonic() - t0


def _errors(op: str) -> float:
    return PM.CLUSTER_ERRORS.labels(op)._value.get()


def _pause(proc) -> None:
    """SIGSTOP, then wait until every thread of etcd is stopped: the signal is delivered
    asynchronously, and on a loaded machine a thread already running could still answer the
    first request sent right after it (seen once: the test's first call got its answer)."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            states = [Path(t, "stat").read_text().rsplit(")", 1)[1].split()[0]
                      for t in Path(f"/proc/{proc.pid}/task").iterdir()]
        except OSError:  # a thread ended while read: look again
            continue
        if states and all(st in ("T", "t") for st in states):
            return
        time.sleep(0.005)
    raise AssertionError("etcd did not stop within 5 s of SIGSTOP")


@pytest.fixture
def own_etcd(tmp_path):
    """An etcd of this test alone (the session's is shared: it is never paused)."""
    server = EtcdServer(str(tmp_path)).start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)  # a paused etcd ignores the SIGTERM of stop()
        server.stop()


async def test_a_stalled_etcd_is_treated_as_down_within_the_deadline(own_etcd, caplog):
    caplog.set_level(logging.INFO, "hivepbx.sbc")
    prefix = f"/test-{uuid.uuid4().hex}/"
    clients = [await connect(own_etcd.endpoint), await connect(own_etcd.endpoint)]
    a, b = (SbcHost(c, prefix, f"sbc-{n}", TenantPolicy(max_calls=3)) for c, n in zip(clients, "ab"))
    try:
        for h in (a, b):
            await h.sync.sync(force=True)
        for h in (a, b):
            await h.round()
        # b takes 2 of the 3 slots (its fair share is 1: it says it wants more, a gives way)
        assert b.call() == "" and b.call() == "max_calls"
        for h in (b, a, b, a):
            await h.round()
        assert b.call() == ""
        for h in (b, a):
            await h.round()
        assert a.sync._others(T)[0] == 2 and a.limits.table.mode() == RESERVED

        read_errors, publish_errors = _errors("read"), _errors("publish")
        _pause(own_etcd.proc)
        paused = time.monotonic()
        took = await a.round(publish=True)
        print(f"one round against the stalled etcd took {took:.2f} s (deadline {DEADLINE} s a call)")
        # the read and the publish each gave up after DEADLINE, not after the client's 5 s
        assert took < CLIENT_TIMEOUT / 2
        assert _errors("read") == read_errors + 1 and _errors("publish") == publish_errors + 1
        assert any("etcd read failed" in r.getMessage() and "did not answer within 0.3 s" in r.getMessage()
                   for r in caplog.records), caplog.text
        # within the TTL the reservation holds; after it, a admits on its own calls + b's last known 2
        while a.limits.table.mode() != ETCD_LOST and time.monotonic() - paused < TTL + 4 * CLIENT_TIMEOUT:
            await a.round(publish=True)
            await asyncio.sleep(0.1)
        lost_after = time.monotonic() - paused
        print(f"admitting on the last known counts {lost_after:.2f} s after etcd stalled (lease TTL {TTL} s)")
        assert a.limits.table.mode() == ETCD_LOST
        assert lost_after < TTL + CLIENT_TIMEOUT  # one 5 s call alone would have taken a round past it
        assert a.call() == "" and a.call() == "max_calls"

        own_etcd.proc.send_signal(signal.SIGCONT)
        back = time.monotonic()
        # both leases ran out meanwhile: b's calls count again once b published on a new one
        while ((a.limits.table.mode(), a.sync._others(T)[0]) != (RESERVED, 2)
               and time.monotonic() - back < 4 * CLIENT_TIMEOUT):
            await b.round(publish=True)
            await a.round(publish=True)
            await asyncio.sleep(0.1)
        assert a.limits.table.mode() == RESERVED and a.sync._others(T)[0] == 2
        assert any("etcd read works again" in r.getMessage() for r in caplog.records), caplog.text
        assert a.call() == "max_calls"  # 1 here + 2 on b: the limit, now by reservation again
    finally:
        own_etcd.proc.send_signal(signal.SIGCONT)
        for h in (a, b):
            await h.store.close()
        for c in clients:
            await c.close()


async def test_each_call_of_the_store_has_the_deadline(own_etcd):
    client = await connect(own_etcd.endpoint)
    store = EtcdTenantUsage(client, Keys(f"/test-{uuid.uuid4().hex}/"), "sbc-x", ttl=TTL, deadline=DEADLINE)
    try:
        assert (await store.publish_calls({T: [0, 1, 0]}, 0))[0]
        _pause(own_etcd.proc)
        for call in (store.read_calls(), store.read_usage(), store.publish_usage("2026-01-01", {T: 1.0}),
                     store.forget_before("2026-01-01"), store.publish_calls({T: [0, 1, 0]}, 0)):
            t0 = time.monotonic()
            with pytest.raises(EtcdTimeout, match="did not answer within 0.3 s"):
                await call
            assert time.monotonic() - t0 < CLIENT_TIMEOUT / 2
    finally:
        own_etcd.proc.send_signal(signal.SIGCONT)
        await store.close()
        await client.close()


def test_the_deadline_is_the_sbc_config_limits_timeout() -> None:
    from sbc.config import SbcConfigError, from_dict

    base = {"nodes": [{"id": "n1", "address": "127.0.0.1:5070"}]}
    assert from_dict(base).limits_timeout == 1.0
    cfg = from_dict({**base, "etcd": {"endpoints": ["127.0.0.1:2379"], "limits_timeout": 0.25}})
    assert cfg.limits_timeout == 0.25
    for bad in (0, "1", True):
        with pytest.raises(SbcConfigError, match="limits_timeout"):
            from_dict({**base, "etcd": {"endpoints": ["127.0.0.1:2379"], "limits_timeout": bad}})
    with pytest.raises(ValueError, match="deadline"):
        EtcdTenantUsage(None, Keys(), "sbc-x", deadline=0)
