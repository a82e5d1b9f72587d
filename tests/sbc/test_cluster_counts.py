"""A tenant's max_calls and daily usage across several SBC hosts, on the sans-I/O side:
each host's counter table and ClusterCounts against an in-memory etcd that keeps etcd's
rules (a compare-and-swap over the calls prefix, revisions, a host's key gone with it).
The real-etcd, real-SIPp version is tests/sbc/test_cluster_limits_sbc.py."""

from __future__ import annotations

import copy
import random

import pytest

from sbc.protection.cluster_counts import ClusterCounts
from sbc.protection.counters import ETCD_LOST, RESERVED, CounterTable
from sbc.protection.tenants import TenantLimits, TenantPolicy

T = "alpha.example"
NOW = 1_780_000_000.0


class FakeEtcd:
    def __init__(self) -> None:
        self.rev = 1
        self.calls: dict[str, tuple[int, dict]] = {}  # host -> (mod revision, value)
        self.usage: dict[str, dict[str, dict]] = {}
        self.down = False

    def check(self) -> None:
        if self.down:
            raise ConnectionError("etcd unreachable")

    def snapshot(self) -> dict:
        return {h: copy.deepcopy(v) for h, (_r, v) in self.calls.items()}


class FakeStore:
    def __init__(self, etcd: FakeEtcd, host: str, ttl: int = 2) -> None:
        self.e, self.host_id, self.ttl, self._lease_id = etcd, host, ttl, 1
        self.publishes = 0

    async def publish_calls(self, values: dict, expect: int):
        self.e.check()
        if any(r > expect for r, _v in self.e.calls.values()):
            return False, self.e.rev, self.e.snapshot()
        self.e.rev += 1
        self.e.calls[self.host_id] = (self.e.rev, copy.deepcopy(values))
        self.publishes += 1
        return True, self.e.rev, self.e.snapshot()

    async def read_calls(self):
        self.e.check()
        return self.e.rev, self.e.snapshot()

    async def read_usage(self):
        self.e.check()
        return copy.deepcopy(self.e.usage)

    async def publish_usage(self, date: str, m: dict) -> None:
        self.e.check()
        self.e.usage.setdefault(date, {})[self.host_id] = dict(m)

    async def forget_before(self, date: str) -> int:
        self.e.check()
        old = [d for d in self.e.usage if d < date]
        for d in old:
            del self.e.usage[d]
        return len(old)


class Host:
    def __init__(self, etcd: FakeEtcd, name: str, policy: TenantPolicy) -> None:
        self.limits = TenantLimits(table=CounterTable.open(tenants=64, calls=1024))
        self.limits.policies[T] = policy
        self.sync = ClusterCounts(FakeStore(etcd, name), self.limits, clock=lambda: NOW)
        self.n = 0
        self.calls: list[str] = []

    def call(self) -> str:
        """'' admitted, else the refusal's cause."""
        self.n += 1
        cid = f"{self.sync.me}-{self.n}"
        cause = self.limits.check(T, True, True, "192.0.2.1", None, NOW) or self.limits.start(cid, T, True, True, NOW)
        if not cause:
            self.calls.append(cid)
        return cause

    def hang_up(self, rnd: random.Random, usage: float = 0.0) -> None:
        cid = self.calls.pop(rnd.randrange(len(self.calls)))
        assert self.limits.end(cid, usage, NOW)

    async def round(self) -> None:
        """One background round as the task runs it, with its timers due."""
        self.sync._read_at = self.sync._usage_at = -1e9
        await self.sync.sync()


async def _hosts(n: int, policy: TenantPolicy, etcd: FakeEtcd | None = None) -> list[Host]:
    etcd = etcd or FakeEtcd()
    hosts = [Host(etcd, f"sbc-{i}", policy) for i in range(n)]
    for h in hosts:
        await h.sync.sync(force=True)
    for h in hosts:
        await h.round()
    return hosts


async def test_two_hosts_admit_exactly_the_limit_between_them() -> None:
    a, b = await _hosts(2, TenantPolicy(max_calls=2))
    assert a.limits.table.mode() == RESERVED
    assert a.call() == "" and b.call() == ""
    assert a.call() == "max_calls" and b.call() == "max_calls"
    for _ in range(3):
        await a.round()
        await b.round()
    assert a.call() == "max_calls" and b.call() == "max_calls"  # both slots are in use: no shuffling helps
    assert len(a.calls) + len(b.calls) == 2


async def test_all_traffic_on_one_host_gets_every_slot_after_a_few_rounds() -> None:
    """The other host's idle reservation is released when this one says it wants it."""
    a, b = await _hosts(2, TenantPolicy(max_calls=4))
    got = 0
    for _ in range(10):
        while a.call() == "":
            got += 1
        await a.round()
        await b.round()
        await a.round()
    assert got == 4 and b.call() == "max_calls"


@pytest.mark.parametrize("seed", range(25))
async def test_random_interleavings_never_exceed_the_limit(seed: int) -> None:
    """Hosts run their rounds whenever (views as stale as it gets); calls come and go on
    all of them: the tenant's calls never pass max_calls, and enough free slots are found."""
    rnd = random.Random(seed)
    hosts_n, limit = rnd.randint(2, 4), rnd.randint(1, 30)
    hosts = await _hosts(hosts_n, TenantPolicy(max_calls=limit))
    peak = 0
    for _ in range(600):
        r = rnd.random()
        h = rnd.choice(hosts)
        if r < 0.55:
            h.call()
        elif r < 0.8:
            await h.round()
        else:
            busy = [x for x in hosts if x.calls]
            if busy:
                rnd.choice(busy).hang_up(rnd)
        total = sum(len(x.calls) for x in hosts)
        assert total <= limit, (hosts_n, limit)
        peak = max(peak, total)
    assert peak >= min(limit, 2)  # the reservations did let calls through


async def test_daily_usage_is_summed_over_hosts_and_a_restart_does_not_lose_it() -> None:
    etcd = FakeEtcd()
    policy = TenantPolicy(max_daily_usage=100)
    a, b = await _hosts(2, policy, etcd)
    assert a.call() == ""
    a.hang_up(random.Random(0), usage=60)
    assert b.call() == ""
    b.hang_up(random.Random(0), usage=50)
    assert a.call() == "" and b.call() == ""  # neither saw the other's usage yet: each 60 / 50
    for h in (a, b, a, b):
        h.sync._published_at = -1e9
        await h.round()
    assert a.limits.usage_today(T, NOW) == pytest.approx(110)
    assert a.call() == "daily_usage" and b.call() == "daily_usage"
    # host a restarts without its state dir: it takes its 60 back from etcd, publishes no less
    a2 = Host(etcd, "sbc-0", policy)
    await a2.sync.sync(force=True)
    assert a2.limits.table.usage(a2.limits._key(T), a2.limits._today(T, NOW)) == pytest.approx(110)
    date = next(iter(etcd.usage))
    assert etcd.usage[date]["sbc-0"][T] == pytest.approx(60)
    assert a2.call() == "daily_usage"


async def test_etcd_down_keeps_enforcing_on_the_last_view() -> None:
    etcd = FakeEtcd()
    a, b = await _hosts(2, TenantPolicy(max_calls=3), etcd)
    assert b.call() == "" and b.call() == "max_calls"  # its share is 1 of 3: it asks for more
    for h in (b, a, b, a):
        await h.round()
    assert b.call() == ""
    for h in (b, a):
        await h.round()
    etcd.down = True
    # within the TTL: a's reservation holds; after it, local + b's last known calls (2) < 3
    a.sync._confirmed_at -= a.sync.ttl + 1
    await a.round()
    assert a.limits.table.mode() == ETCD_LOST
    assert a.call() == "" and a.call() == "max_calls"
    assert a.sync._failing  # counted and logged
    etcd.down = False
    a.sync._published_at = -1e9  # (its retry is due)
    await a.round()
    assert a.limits.table.mode() == RESERVED


async def test_tenants_without_limits_publish_nothing() -> None:
    a, _b = await _hosts(2, TenantPolicy())
    before = a.sync.store.publishes
    for _ in range(20):
        assert a.call() == ""
    await a.round()
    assert a.sync._mine == {} and a.sync.store.publishes == before


def test_config_of_the_cross_host_counts() -> None:
    from sbc.config import SbcConfigError, from_dict

    base = {"nodes": [{"id": "n1", "address": "127.0.0.1:5070"}]}
    cfg = from_dict({**base, "etcd": {"endpoints": ["127.0.0.1:2379"], "host_id": "sbc-1", "limits_ttl": 3}})
    assert (cfg.host_id, cfg.limits_ttl) == ("sbc-1", 3)
    for bad, says in (({"host_id": "a/b"}, "host_id"), ({"limits_ttl": 0}, "limits_ttl"),
                      ({"lease": 3}, "unknown")):
        with pytest.raises(SbcConfigError, match=says):
            from_dict({**base, "etcd": {"endpoints": ["127.0.0.1:2379"], **bad}})
