"""The etcd backend's figures, against a real etcd on loopback (tests/peers/etcd.py starts it):
registrations saved per second (each waits until its own view has it), leases they cost,
lookups per second from the in-memory view, and how long a change made through one node takes
to be in force on another.

Run: .venv/bin/python bench/etcd_stores.py [REGISTRATIONS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from cluster.etcd import open_etcd
from node.model import Binding
from tests.peers.etcd import EtcdServer


async def main(endpoint: str, n: int) -> None:
    a, b = await open_etcd(endpoint, "/bench/"), await open_etcd(endpoint, "/bench/")
    try:
        now = time.time()
        sem = asyncio.Semaphore(64)

        async def save(i: int) -> None:
            async with sem:
                await a.locations.save(Binding(
                    1, str(100000 + i), f"sip:{i}@10.0.0.1:5060", "10.0.0.1", 5060, "udp",
                    now + 60 + (i * 3540 / n), f"call-{i}", 1, node_id="a",
                ))

        t0 = time.perf_counter()
        await asyncio.gather(*(save(i) for i in range(n)))
        took = time.perf_counter() - t0
        print(f"registrations: {n} saved in {took:.2f}s = {n / took:,.0f}/s (64 in flight), "
              f"{a.locations.leases_granted} leases")

        t0 = time.perf_counter()
        rounds = 200_000
        for i in range(rounds):
            await b.locations.lookup(1, str(100000 + i % n), now)
        took = time.perf_counter() - t0
        print(f"lookups on another node: {rounds / took:,.0f}/s (in memory)")

        t = await a.config.create_tenant("bench", "bench.example")
        lags = []
        for i in range(200):
            t0 = time.perf_counter()
            await a.config.create_extension(t.id, str(1000 + i), "secret-pw")
            while await b.config.get_extension(t.id, str(1000 + i)) is None:
                await asyncio.sleep(0)
            lags.append((time.perf_counter() - t0) * 1000)
        lags.sort()
        print(f"config change through A in force on B: median {statistics.median(lags):.1f} ms, "
              f"p99 {lags[int(len(lags) * 0.99) - 1]:.1f} ms (write + watch, 200 changes)")
        await a.client.delete_prefix(b"/bench/")
    finally:
        await a.aclose()
        await b.aclose()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with EtcdServer() as server:
        asyncio.run(main(server.endpoint, count))
