"""Load figures for the media engine: how many streams one core plays or mixes in real time.

    .venv/bin/python bench/media_engine.py --mode play ivr mix --streams 200 500 1000 --seconds 6

The engine (node/media_engine) runs in a child process pinned to one core with ``taskset``,
as a node would run per core; this process, pinned to another core, is every phone: one UDP
socket that receives all streams (told apart by SSRC) and, in ``ivr`` and ``mix`` mode, sends
each endpoint 20 ms of PCMU every 20 ms.

* play: N endpoints each playing a 30 s prompt from the engine's encoded-prompt cache
  (what an IVR or announcement costs).
* ivr: the same, and every caller sends audio too (20 ms of PCMU each 20 ms), which each
  endpoint decodes and runs through the in-band DTMF detector, as an IVR waiting for keys does.
* mix: N endpoints in conferences of 4; every tick each conference takes one frame per member
  from its jitter buffer, mixes (each hears the others), encodes and sends (what conferences
  and call recording with mixing cost).

Columns: engine CPU% is the child's CPU time over wall time (100% = the core is full);
streams/core = N / CPU share; loss counts sequence gaps over the measured window; jitter is
the RFC 3550 interarrival jitter at the receiver (mean over streams / worst stream), which is
an upper bound for what the engine adds (the receiver's own scheduling is in it too); clock
late is the engine timer's worst lateness and "skipped" the frames it dropped after a stall
of more than 100 ms (on a shared machine, other processes on the engine's core show up
here). A size "holds" with loss < 0.1% on every stream. Not a test: it prints figures, it asserts nothing.

Bounded: at most 3000 streams and 60 s per size, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from array import array
from pathlib import Path

import numpy as np

MAX_STREAMS = 3000
MAX_SECONDS = 60
HOST = "127.0.0.1"
WARMUP = 1.0
_HDR = struct.Struct("!BBHII")
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- engine side (child)
async def serve(port_min: int) -> None:
    sys.path.insert(0, str(ROOT))
    from node.media.tones import sine
    from node.media.wav import write_wav
    from node.media_engine import Conference, MediaEngine
    from node.rtp_engine.port_pool import PortPool

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    req = json.loads(await reader.readline())
    n, mode, dest = req["n"], req["mode"], tuple(req["dest"])
    engine = MediaEngine(PortPool(port_min, port_min + 2 * n + 200), HOST)
    eps = [await engine.open_endpoint(f"bench-{i}", "bench") for i in range(n)]
    for ep in eps:
        ep.set_remote(dest[0], dest[1])
    if mode in ("play", "ivr"):
        prompt = Path(req["workdir"]) / "prompt.wav"
        rng = np.random.default_rng(1)
        audio = sine((300.0, 700.0, 1100.0), 8000 * 30, 0.15).astype(np.int32) + rng.normal(0, 800, 8000 * 30).astype(np.int32)
        write_wav(prompt, np.clip(audio, -32768, 32767).astype(np.int16))
        for ep in eps:
            ep.play([prompt])
    else:
        for i in range(0, n, 4):
            conf = Conference(engine, f"c{i}")
            for ep in eps[i:i + 4]:
                conf.add(ep)
    print(json.dumps({"ports": [ep.local_port for ep in eps]}), flush=True)
    await reader.readline()  # "start"
    c0, w0 = time.process_time(), time.monotonic()
    clock = engine.clock
    skipped0 = clock.skipped if clock else 0
    if clock is not None:
        clock.late_max = 0.0  # setting up hundreds of endpoints stalls the loop: not measured
    ticks0 = engine.ticks
    await reader.readline()  # "stop"
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    print(json.dumps({
        "cpu": cpu, "wall": wall, "ticks": engine.ticks - ticks0, "overruns": engine.overruns,
        "late_max": clock.late_max if clock else 0.0, "skipped": (clock.skipped - skipped0) if clock else 0,
        "dropped": engine.totals()["dropped"],
    }), flush=True)
    engine.close()


# ---------------------------------------------------------------------------- phones (parent)
def run_size(mode: str, n: int, seconds: float, engine_cpu: int, port_min: int, workdir: Path) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    argv = [sys.executable, __file__, "--serve", "--port-min", str(port_min)]
    if engine_cpu >= 0:
        argv = ["taskset", "-c", str(engine_cpu)] + argv
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin and child.stdout
    try:
        child.stdin.write(json.dumps({"n": n, "mode": mode, "dest": sock.getsockname(), "workdir": str(workdir)}) + "\n")
        child.stdin.flush()
        ports = json.loads(child.stdout.readline())["ports"]
        arrival, ssrcs, seqs, stamps = array("d"), array("I"), array("H"), array("I")
        payload = bytes([0xFF]) * 160
        tone = bytes((0x80 + i) % 256 for i in range(160))  # some non-silent PCMU
        t0 = time.monotonic()
        start_measure, end = t0 + WARMUP, t0 + WARMUP + seconds
        next_send = t0
        seq = 0
        started = False
        gen_late = 0.0  # how far this process fell behind its own 20 ms sending schedule
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if not started and now >= start_measure:
                child.stdin.write("start\n")
                child.stdin.flush()
                started = True
            wait = end - now
            if mode != "play":
                wait = min(wait, max(0.0, next_send - now))
            select.select([sock], [], [], wait)
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                t = time.monotonic()
                if t >= start_measure and len(data) >= 12:
                    _, _, sq, ts, ssrc = _HDR.unpack_from(data)
                    arrival.append(t)
                    ssrcs.append(ssrc)
                    seqs.append(sq)
                    stamps.append(ts)
            if mode != "play" and time.monotonic() >= next_send:
                gen_late = max(gen_late, time.monotonic() - next_send)
                seq = (seq + 1) & 0xFFFF
                body = tone if seq % 2 else payload
                for i, p in enumerate(ports):
                    sock.sendto(_HDR.pack(0x80, 0, seq, seq * 160, 0x1000 + i) + body, (HOST, p))
                next_send += 0.020
        child.stdin.write("stop\n")
        child.stdin.flush()
        eng = json.loads(child.stdout.readline())
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        sock.close()
    return {"mode": mode, "n": n, "engine": eng, "gen_late": gen_late, **_analyse(arrival, ssrcs, seqs, stamps, n)}


def _analyse(arrival, ssrcs, seqs, stamps, n: int) -> dict:
    t = np.frombuffer(arrival, dtype=np.float64)
    s = np.frombuffer(ssrcs, dtype=np.uint32)
    q = np.frombuffer(seqs, dtype=np.uint16).astype(np.int64)
    ts = np.frombuffer(stamps, dtype=np.uint32).astype(np.int64)
    if t.size == 0:
        return {"loss": 1.0, "jitter_mean_ms": 0.0, "jitter_max_ms": 0.0, "streams_seen": 0, "packets": 0}
    order = np.lexsort((t, s))
    t, s, q, ts = t[order], s[order], q[order], ts[order]
    bounds = np.flatnonzero(np.diff(s)) + 1
    expected = received = 0
    jitters = []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, s.size]):
        sq = np.unwrap(q[lo:hi], period=65536)
        expected += int(sq.max() - sq.min() + 1)
        received += hi - lo
        transit = t[lo:hi] - np.unwrap(ts[lo:hi], period=1 << 32) / 8000.0
        d = np.abs(np.diff(transit))
        j = 0.0
        for x in d:  # RFC 3550 §6.4.1 running estimate
            j += (x - j) / 16.0
        jitters.append(j * 1000)
    return {
        "loss": max(0, expected - received) / max(expected, 1),
        "jitter_mean_ms": float(np.mean(jitters)), "jitter_max_ms": float(np.max(jitters)),
        "streams_seen": len(jitters), "packets": int(received),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", nargs="+", choices=["play", "ivr", "mix"], default=["play", "ivr", "mix"])
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 300, 600, 1000])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--engine-cpu", type=int, default=0, help="core for the engine (taskset); -1 = no pinning")
    ap.add_argument("--gen-cpu", type=int, default=1, help="core for the phones; -1 = no pinning")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port-min", type=int, default=36000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        try:
            import uvloop

            uvloop.run(serve(args.port_min))
        except ImportError:
            asyncio.run(serve(args.port_min))
        return 0
    if any(not 1 <= n <= MAX_STREAMS for n in args.streams) or not 1 <= args.seconds <= MAX_SECONDS:
        ap.error(f"streams 1-{MAX_STREAMS}, seconds 1-{MAX_SECONDS}")
    if args.gen_cpu >= 0:
        os.sched_setaffinity(0, {args.gen_cpu})
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="bench-media-"))
    print(f"media engine, {args.seconds:g} s per size (engine on cpu {args.engine_cpu}, phones on cpu {args.gen_cpu})")
    print(f"{'mode':5} {'streams':>7} {'engine CPU%':>11} {'streams/core':>12} {'loss%':>7} "
          f"{'jitter ms':>9} {'worst ms':>8} {'clock late ms':>13} {'skipped':>7} {'holds':>5}")
    best: dict[str, int] = {}
    for mode in args.mode:
        for n in args.streams:
            n = n - n % 4 if mode == "mix" else n
            r = run_size(mode, n, args.seconds, args.engine_cpu, args.port_min, workdir)
            e = r["engine"]
            if r["gen_late"] > 0.1:
                print(f"{mode:5} {n:7d}  -- the phones (this process) fell {r['gen_late']:.1f} s behind: no figure", flush=True)
                continue
            share = e["cpu"] / e["wall"] if e["wall"] else 0.0
            # a stream "holds" with <0.1% loss; the core must not be over-full either
            holds = r["loss"] < 0.001 and r["streams_seen"] == n and share < 0.95
            if holds:
                best[mode] = max(best.get(mode, 0), n)
            per_core = n / share if share else float("inf")
            print(f"{mode:5} {n:7d} {100 * share:10.1f}% {per_core:12.0f} {100 * r['loss']:6.3f}% "
                  f"{r['jitter_mean_ms']:9.2f} {r['jitter_max_ms']:8.2f} {1000 * e['late_max']:13.1f} {e['skipped']:7d} "
                  f"{'yes' if holds else 'NO':>5}", flush=True)
    for mode, n in best.items():
        print(f"{mode}: {n} concurrent streams held on one core with <0.1% loss")
    return 0


if __name__ == "__main__":
    sys.exit(main())
