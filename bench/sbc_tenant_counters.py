"""CPU cost of the Guard's per-tenant call accounting per call: ``admit_call`` (policy check
+ count), the 2xx (``answered``), ``call_ended`` (release + usage), for an external outgoing
call of a tenant with max calls and daily usage limits, with 500 calls always live.

Compared: the counters in this process's memory (a private table, one worker), the table
shared by forked workers (a real multiprocessing lock, uncontended here), and the same in a
state-dir file (MAP_SHARED file pages: same code, the page cache instead of anonymous memory).

With several SBC hosts on one etcd (sbc/protection/cluster_counts.py) the call path only
adds a check of the host's reserved cap (the "reserved" row); the background round that
publishes and reads the counts is measured apart, per round, for 1000 limited tenants
(etcd itself left out: an in-memory store that still encodes the JSON).

For scale: the per-process dicts this replaced cost about 3.2 µs per call (2.2 µs for a
tenant without limits) measured the same way, and the SBC spends 300-420 µs per call
(bench/sbc_inproc.py).

Run: .venv/bin/python bench/sbc_tenant_counters.py [N]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbc.protection import Guard, GuardConfig  # noqa: E402
from sbc.protection.cluster_counts import ClusterCounts  # noqa: E402
from sbc.protection.counters import RESERVED, CounterTable  # noqa: E402
from sbc.protection.tenants import TenantLimits, TenantPolicy  # noqa: E402

PHONE = ("203.0.113.10", 5060)


def per_call(table: CounterTable, n: int, limited: bool = True) -> float:
    wall = [1_800_000_000.0]
    policy = {"max_calls": 100000, "max_daily_usage": 1e12} if limited else {}
    g = Guard(GuardConfig(tenants={"acme.example": policy}), wall_clock=lambda: wall[0])
    g.tenants.use_table(table)
    live = [f"live-{i}@198.51.100.7" for i in range(500)]
    for cid in live:
        g.admit_call("acme.example", cid, PHONE, outbound=True)
    ids = [f"{i:08x}-4c1d-bench@198.51.100.7" for i in range(n)]
    t0 = time.process_time()
    for cid in ids:
        g.admit_call("acme.example", cid, PHONE, outbound=True)
        g.tenants.answered(cid, wall[0])
        wall[0] += 0.001
        g.call_ended(cid)
    return (time.process_time() - t0) / n


def reserved(table: CounterTable) -> CounterTable:
    """The table as a host of a cluster sees it: a cap far above the bench's calls."""
    table.set_view(RESERVED, {table.key("acme.example"): 10**6}, {})
    return table


class _MemoryStore:
    host_id, ttl, _lease_id = "bench", 10, 1

    def __init__(self) -> None:
        self.rev = 1

    async def publish_calls(self, values, expect):
        self.rev += 1
        json.dumps(values, separators=(",", ":"), sort_keys=True)
        return True, self.rev, {"bench": values, "other": {d: [1, 1, 0] for d in values}}

    async def read_calls(self):
        return self.rev, {}

    async def read_usage(self):
        return {}

    async def publish_usage(self, date, m):
        json.dumps(m)

    async def forget_before(self, date):
        return 0


def publish_round(tenants: int = 1000, rounds: int = 200) -> float:
    limits = TenantLimits(table=CounterTable.open(shared=True))
    for i in range(tenants):
        limits.policies[f"t{i}.example"] = TenantPolicy(max_calls=50, max_daily_usage=3600)
        limits.start(f"c{i}", f"t{i}.example", True, True, 1_800_000_000.0)
    sync = ClusterCounts(_MemoryStore(), limits)

    async def run() -> float:
        await sync.sync(force=True)
        t0 = time.process_time()
        for _ in range(rounds):
            await sync._publish(0)
        return (time.process_time() - t0) / rounds

    return asyncio.run(run())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    with tempfile.TemporaryDirectory() as d:
        rows = [
            ("private (1 worker)", CounterTable.open()),
            ("shared, forked workers' lock", CounterTable.open(shared=True)),
            ("shared + state-dir file", CounterTable.open(d, shared=True)),
            ("shared, several hosts (reserved)", reserved(CounterTable.open(shared=True))),
        ]
        for name, table in rows:
            best = min(per_call(table, n) for _ in range(3))
            print(f"{name:32s} {best * 1e6:6.2f} µs per call (admit + 2xx + end)")
            table.close()
        best = min(per_call(CounterTable.open(shared=True), n, False) for _ in range(3))
        print(f"{'a tenant without limits':32s} {best * 1e6:6.2f} µs per call (not counted, only looked up)")
        print(f"{'cluster publish round':32s} {publish_round() * 1e3:6.2f} ms per round, 1000 limited tenants "
              "(once per 0.25 s when counts changed, or at once when a cap is used up)")


if __name__ == "__main__":
    main()
