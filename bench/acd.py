#!/usr/bin/env python3
"""ACD figures: how many log records/s one engine applies (a busy tenant's queue churn), and
the join -> offer latency through the bus (in-process, and Kafka on a local tansu broker).
Prints figures; asserts nothing.

    .venv/bin/python bench/acd.py [--calls 20000] [--agents 50] [--samples 200] [--no-kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.acd.config import QueueConfig  # noqa: E402
from node.acd.engine import AcdEngine  # noqa: E402
from node.acd.events import (  # noqa: E402
    AgentLoggedIn, CallEnded, CallJoined, Envelope, Offer, OfferAnswered, QueueConfigured, decode, encode,
)
from node.acd.service import AcdService  # noqa: E402


def engine_rate(calls: int, agents: int, strategy: str) -> None:
    rng = random.Random(1)
    members = [str(1000 + i) for i in range(agents)]
    e = AcdEngine()
    seq = 0
    ts = 1000.0
    records: list[Envelope] = []

    def rec(ev) -> None:
        nonlocal seq
        seq += 1
        records.append(Envelope("bench", seq, ts, ev))

    for q in range(5):
        rec(QueueConfigured(1, f"q{q}", QueueConfig(strategy=strategy, priority=q, members=tuple(members))))
    for m in members:
        rec(AgentLoggedIn(1, m))
    # build a realistic log by running it: joins, answers of the offers, call ends
    off = 0
    for r in records:
        e.apply(off, r)
        off += 1
    talking: list[str] = []
    pending: list[tuple[str, str]] = []
    peak = 0
    for i in range(calls):
        if i % 100 == 0:
            peak = max(peak, sum(len(e.queue_calls(1, f"q{q}")) for q in range(5)))
        ts += 0.01
        rec(CallJoined(1, f"q{rng.randrange(5)}", f"c{i}", "n1"))
        ds = e.apply(off, records[-1]); off += 1
        pending += [(d.call, d.agent) for d in ds if isinstance(d, Offer)]
        while pending and rng.random() < 0.9:
            c, a = pending.pop(0)
            rec(OfferAnswered(1, c, a)); ds = e.apply(off, records[-1]); off += 1
            pending += [(d.call, d.agent) for d in ds if isinstance(d, Offer)]
            talking.append(c)
        if len(talking) > agents // 2:
            rec(CallEnded(1, talking.pop(rng.randrange(len(talking)))))
            ds = e.apply(off, records[-1]); off += 1
            pending += [(d.call, d.agent) for d in ds if isinstance(d, Offer)]
    raw = [encode(r) for r in records]
    t0 = time.perf_counter()
    fresh = AcdEngine()
    for i, r in enumerate(records):
        fresh.apply(i, r)
    t1 = time.perf_counter()
    for i, b in enumerate(raw):
        decode(b)
    t2 = time.perf_counter()
    n = len(records)
    print(f"engine {strategy:13s}: {n} records ({calls} calls, {agents} agents, 5 queues) "
          f"applied in {t1 - t0:.3f} s = {n / (t1 - t0):,.0f} records/s (peak {peak} callers waiting); "
          f"decode {n / (t2 - t1):,.0f} records/s")


async def latency(make_bus, label: str, samples: int) -> None:
    topic = f"hivepbx.acd.bench.{uuid.uuid4().hex[:6]}"
    buses = [make_bus(), make_bus()]
    a = AcdService(buses[0], "A", topic=topic, partitions=4)
    b = AcdService(buses[1], "B", topic=topic, partitions=4)
    await a.start()
    await b.start()
    await a.configure_queue(1, "q", {"members": ["101"], "ring_timeout": 600})
    await b.login(1, "101")
    lat = []
    for i in range(samples):
        t0 = time.perf_counter()
        qc = await b.join(1, "q", f"c{i}")
        await qc.next_of(Offer, timeout=10)
        lat.append((time.perf_counter() - t0) * 1000)
        await b.answered(1, f"c{i}", "101")
        await b.ended(1, f"c{i}")
    lat.sort()
    print(f"join->offer via {label}: p50 {statistics.median(lat):.2f} ms, p99 {lat[int(len(lat) * 0.99) - 1]:.2f} ms "
          f"({samples} samples; the offer decision is made by every node's replica)")
    await a.close()
    await b.close()
    for x in set(buses):
        await x.close()


async def main_async(args) -> None:
    from node.embedded.bus import InMemoryBus

    shared = InMemoryBus()
    await latency(lambda: shared, "in-process bus", args.samples)
    if not args.no_kafka:
        from cluster.kafka import KafkaBus
        from tests.peers.kafka import Tansu

        broker = Tansu()
        broker.start()
        try:
            for wait in (10, 50):
                await latency(lambda: KafkaBus(broker.bootstrap, fetch_max_wait_ms=wait),
                              f"Kafka (tansu, fetch_max_wait_ms={wait})", args.samples)
        finally:
            broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--no-kafka", action="store_true")
    args = p.parse_args()
    for strategy in ("longest-idle", "ring-all", "random"):
        engine_rate(args.calls, args.agents, strategy)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
