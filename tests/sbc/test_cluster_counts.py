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
        #: every change of a calls key, as a watch delivers it: (revision, host, value or None)
        self.log: list[tuple[int, str, dict | None]] = []

    def check(self) -> None:
        if self.down:
            raise ConnectionError("etcd unreachable")

    def snapshot(self) -> dict:
        return {h: copy.deepcopy(v) for h, (_r, v) in self.calls.items()}


class FakeStore:
    def __init__(self, etcd: FakeEtcd, host: str, ttl: int = 2) -> None:
        self.e, self.host_id, self.ttl, self._lease_id = etcd, host, ttl, 1
        self.publishes = 0
        #: called as each call goes out: watched changes may arrive while a round awaits etcd
        self.meanwhile = lambda: None

    async def publish_calls(self, values: dict, expect: int):
        self.meanwhile()
        self.e.check()
        if any(r > expect for r, _v in self.e.calls.values()):
            return False, self.e.rev, self.e.snapshot()
        self.e.rev += 1
        self.e.calls[self.host_id] = (self.e.rev, copy.deepcopy(values))
        self.e.log.append((self.e.rev, self.host_id, copy.deepcopy(values)))
        self.publishes += 1
        return True, self.e.rev, self.e.snapshot()

    async def read_calls(self):
        self.meanwhile()
        self.e.check()
        return self.e.rev, self.e.snapshot()

    async def read_usage(self):
        self.meanwhile()
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

    def watch(self, etcd: FakeEtcd, rnd: random.Random | None = None) -> None:
        """From now on deliver() hands this host the calls keys' changes, as a watch started
        from its view's revision + 1 would (with ``rnd``, also at random while it awaits etcd)."""
        self.etcd = etcd
        if rnd is not None:
            self.sync.store.meanwhile = lambda: rnd.random() < 0.5 and self.deliver(rnd.randint(1, 3))
        self.seen = next((i for i, (rev, _h, _v) in enumerate(etcd.log) if rev > self.sync._rev), len(etcd.log))

    def deliver(self, n: int) -> bool:
        """The next ``n`` watched changes (in order; fewer when there are no more): True if any."""
        got = self.etcd.log[self.seen:self.seen + n]
        self.seen += len(got)
        for rev, host, value in got:
            self.sync._on_change(host, copy.deepcopy(value), rev)
        return bool(got)

    async def quick_round(self) -> None:
        """A round woken by the watch: no poll read due."""
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


@pytest.mark.parametrize("seed", range(25))
async def test_random_interleavings_with_watched_changes_never_exceed_the_limit(seed: int) -> None:
    """As above, with the hosts' views moved by watch events delivered late and in bursts
    (and the poll rare): events only ever land on an older view, so a publish's
    compare-and-swap still means what it says."""
    rnd = random.Random(1000 + seed)
    etcd = FakeEtcd()
    hosts_n, limit = rnd.randint(2, 4), rnd.randint(1, 30)
    hosts = await _hosts(hosts_n, TenantPolicy(max_calls=limit), etcd)
    for h in hosts:
        h.watch(etcd, rnd)
    peak = refused_then_admitted = 0
    for _ in range(800):
        r = rnd.random()
        h = rnd.choice(hosts)
        if r < 0.45:
            h.call()
        elif r < 0.7:
            h.deliver(rnd.randint(1, 4))
        elif r < 0.85:
            await h.quick_round()
        elif r < 0.88:
            await h.round()
        else:
            busy = [x for x in hosts if x.calls]
            if busy:
                rnd.choice(busy).hang_up(rnd)
        total = sum(len(x.calls) for x in hosts)
        assert total <= limit, (hosts_n, limit)
        peak = max(peak, total)
    assert peak >= min(limit, 2)
    # with the watch alone (no poll read), a short host gets a slot another holds unused
    for h in hosts:
        while h.calls:
            h.hang_up(rnd)
    a, others = hosts[0], hosts[1:]
    for _ in range(3 * limit + 2 * hosts_n):
        if a.call() == "":
            refused_then_admitted += 1
            continue
        for _ in range(3):  # a publishes want; the others see it and release; a sees that and takes
            for h in hosts:
                while h.deliver(100):
                    pass
                await h.quick_round()
    assert refused_then_admitted == limit, (hosts_n, limit)
    assert all(o.call() == "max_calls" for o in others)


async def test_a_change_watched_while_a_round_awaits_etcd_is_summed_before_reserving() -> None:
    """Host b takes slots while host a's round is waiting on etcd, and a's watch delivers it
    then: a's publish expects the revision of that change, so it must reserve on sums that
    include it (not on the sums of its last read), or the two caps would pass the limit."""
    etcd = FakeEtcd()
    a, b = await _hosts(2, TenantPolicy(max_calls=4), etcd)
    a.watch(etcd)
    rev, _ = await b.sync.store.read_calls()
    assert (await b.sync.store.publish_calls({T: [0, 0, 0]}, rev))[0]  # b holds nothing
    a.deliver(100)
    await a.quick_round()
    assert tuple(a.sync._others(T)) == (0, 0, False)
    calls, late = [], []

    def meanwhile() -> None:  # a's second etcd call (the usage read, after its calls read)
        calls.append(1)
        if len(calls) == 2:
            etcd.rev += 1
            etcd.calls["sbc-1"] = (etcd.rev, {T: [0, 2, 0]})
            etcd.log.append((etcd.rev, "sbc-1", {T: [0, 2, 0]}))
            late.append(etcd.rev)
            a.deliver(100)

    a.sync.store.meanwhile = meanwhile
    a.sync._want.add(T)  # a is short: it takes all that is free
    a.sync._again = True
    await a.round()
    assert late and a.sync._rev > late[0]  # a published after b's change, expecting it
    c, r, _w = a.sync._mine[T]
    assert c + r + 2 <= 4, a.sync._mine


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
