#!/usr/bin/env python3
"""The durable CDR spool at a busy node's CDR rate: what a batch's fsync'd commit costs, how
far it is from the event loop, and how many CDRs/s one spool takes. Prints figures; asserts
nothing.

    .venv/bin/python bench/cdr_spool.py [--rate 1000] [--seconds 5] [--dir /var/tmp]

The spool file goes to --dir (default: a temp dir under /var/tmp, i.e. on disk, not tmpfs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.model import Cdr  # noqa: E402
from node.pbx.cdr import CdrRecorder  # noqa: E402
from node.pbx.cdr_spool import SpooledCdrStore  # noqa: E402


class NullStore:
    async def write_many(self, cdrs):
        pass

    async def list(self, tenant_id, limit=100, since=None):
        return []


def _cdr(i: int) -> Cdr:
    return Cdr(id=f"{i:012x}-bench", tenant_id=1 + i % 50, call_id=f"call-{i}@10.0.0.1", caller="1001",
               callee="+4930123456", direction="outbound", start=1.7e9 + i, end=1.7e9 + i + 60,
               answer=1.7e9 + i + 5, trunk="carrier", disposition="answered", sip_code=200,
               hangup_cause="caller-bye", caller_name="Alice")


async def main(rate: int, seconds: float, directory: str, interval: float) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as d:
        spool = SpooledCdrStore(NullStore(), Path(d) / "cdr-spool.db")
        await spool.start()
        commits: list[float] = []
        orig = spool._file.append

        def timed(rows):
            t0 = time.perf_counter()
            n = orig(rows)
            commits.append(time.perf_counter() - t0)
            return n

        spool._file.append = timed
        rec = CdrRecorder(spool, interval=interval)
        lags: list[float] = []
        loop = asyncio.get_running_loop()
        t_start = loop.time()
        i = 0
        tick = 0.01
        while loop.time() - t_start < seconds:
            due = int((loop.time() - t_start) * rate)
            while i < due:
                rec.record(_cdr(i))
                i += 1
            before = loop.time()
            await asyncio.sleep(tick)
            lags.append(loop.time() - before - tick)
        await rec.close()
        await spool.close()
        print(f"spool file dir        : {directory}")
        print(f"offered               : {i} CDRs in {seconds:g}s ({rate}/s), recorder interval {interval * 1e3:g} ms")
        print(f"recorded (durable)    : {rec.written}")
        print(f"commits (fsyncs)      : {len(commits)}  ({len(commits) / seconds:.1f}/s, "
              f"{i / max(1, len(commits)):.0f} CDRs each)")
        print(f"commit time ms        : median {statistics.median(commits) * 1e3:.2f}  "
              f"max {max(commits) * 1e3:.2f}")
        print(f"event-loop lag ms     : median {statistics.median(lags) * 1e3:.2f}  max {max(lags) * 1e3:.2f}")

        # ceiling: one writer appending 500-CDR batches as fast as the disk allows
        spool = SpooledCdrStore(NullStore(), Path(d) / "ceiling.db")
        await spool.start()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            await spool.write_many([_cdr(10_000_000 + n + k) for k in range(500)])
            n += 500
        dt = time.perf_counter() - t0
        await spool.close(10)
        print(f"ceiling (500/batch)   : {n / dt:,.0f} CDRs/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--interval", type=float, default=SpooledCdrStore.batch_interval,
                    help="recorder batch interval, seconds (default: what the node uses with a spool)")
    a = ap.parse_args()
    asyncio.run(main(a.rate, a.seconds, a.dir, a.interval))
