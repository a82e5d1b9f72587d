#!/usr/bin/env python3
"""The SBC Guard's cost per message (sbc.protection.Guard.check_request), in process.

Figures, not a test. Patterns: ordinary traffic from a few sources; a spoofed flood from a
new source every packet (the LRU table evicting at capacity); a banned source's packets
(what a flood costs once it is banned); scanners (User-Agent match then ban); parse cost of
the same datagram for scale. Also the table memory at capacity.

    bench/sbc_guard.py [--messages 300000] [--sources 65536]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.sip.parser import parse_datagram  # noqa: E402
from sbc.protection import Guard, GuardConfig  # noqa: E402

RAW = (
    "OPTIONS sip:100@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:x@pbx.example.com>;tag=1\r\nTo: <sip:100@pbx.example.com>\r\n"
    "Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: Yealink SIP-T46S\r\nContent-Length: 0\r\n\r\n"
).encode()


def per_msg(label: str, n: int, fn) -> None:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    print(f"{label:<48} {dt / n * 1e6:7.2f} us/msg  {n / dt:12,.0f} msg/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--sources", type=int, default=65_536)
    a = ap.parse_args()
    n = a.messages
    msg = parse_datagram(RAW)
    scanner = parse_datagram(RAW.replace(b"Yealink SIP-T46S", b"friendly-scanner"))

    per_msg("parse_datagram (for scale)", n // 5, lambda: [parse_datagram(RAW) for _ in range(n // 5)])

    g = Guard(GuardConfig(density=10**9, max_sources=a.sources))
    srcs = [(f"10.0.{i // 256}.{i % 256}", 5060) for i in range(16)]
    per_msg("ordinary traffic, 16 sources", n, lambda: [g.check_request(msg, srcs[i & 15]) for i in range(n)])

    g = Guard(GuardConfig(max_sources=a.sources))
    spoofed = [(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 5060) for i in range(n)]
    per_msg("spoofed flood, new source each packet", n, lambda: [g.check_request(msg, s) for s in spoofed])

    g = Guard(GuardConfig())
    g.ban("192.0.2.1", 600)
    per_msg("banned source (dropped)", n, lambda: [g.check_request(msg, ("192.0.2.1", 5060)) for _ in range(n)])

    g = Guard(GuardConfig(max_bans=a.sources))
    scan = [(f"172.16.{(i >> 8) & 255}.{i & 255}", 5060) for i in range(min(n, 60000))]
    per_msg("scanner User-Agent (ban each new source)", len(scan), lambda: [g.check_request(scanner, s) for s in scan])

    tracemalloc.start()
    g = Guard(GuardConfig(max_sources=a.sources, max_bans=a.sources, density=1))
    for i in range(a.sources):
        s = (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 5060)
        g.check_request(msg, s)
        g.check_request(msg, s)  # banned too: both tables full
    cur, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"tables full ({a.sources:,} sources + {a.sources:,} bans): {cur / 2**20:.1f} MiB, "
          f"{cur / a.sources:.0f} B per source")


if __name__ == "__main__":
    main()
