"""Load figures for the RTP relay: N G.711 calls (20 ms, 160-byte payload, both ways) on loopback.

    .venv/bin/python bench/rtp_relay.py --calls 100 300 600 --seconds 10

The relay runs in a child process pinned to one core with ``taskset`` (the way a node would
be deployed per core); this process is the load generator, pinned to another core, with one
UDP socket per phone. Each size is run twice: once through the relay and once phone to
phone directly (the baseline), so "added" latency and jitter are the relay's own share and
not the generator's. Not a test: it prints figures, it asserts nothing.

Columns: "+" figures are through-the-relay minus direct. "rq-wait%" is the share of the run
each process spent runnable but not running; when it is more than a few percent, other load
shared the cores and latency figures measure that rather than the relay (CPU µs per packet
stays meaningful).

Bounded: at most 2000 calls and 120 s per run, 127.0.0.1 only.
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

MAX_CALLS = 2000
MAX_SECONDS = 120
PTIME = 0.020
PAYLOAD = 160
HOST = "127.0.0.1"
_HDR = struct.Struct("!BBHII")
_STAMP = struct.Struct("!Q")


# ---------------------------------------------------------------------------- relay side (child)
async def serve(loop_name: str, port_min: int) -> None:
    """Open one session per call, report its ports, then answer stats requests (JSON lines)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from node.rtp_engine import PortPool, RtpRelay

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    req = json.loads(await reader.readline())
    phones = req["phones"]
    relay = RtpRelay(PortPool(port_min, port_min + 4 * len(phones) + 400), HOST)
    sessions = []
    for i, (pa, pb) in enumerate(phones):
        s = await relay.open_session(f"bench-{i}", "bench")
        s.a.set_remote(HOST, pa)
        s.b.set_remote(HOST, pb)
        sessions.append(s)
    print(json.dumps({"legs": [[s.a.local_port, s.b.local_port] for s in sessions], "loop": type(loop).__module__}),
          flush=True)
    while True:
        line = await reader.readline()
        if not line or json.loads(line).get("cmd") == "quit":
            break
        t = relay.totals()
        print(json.dumps({"in": t.packets_in, "out": t.packets_out, "dropped":
                          t.dropped_source + t.dropped_no_destination + t.dropped_send}), flush=True)
    relay.close()
    await relay.wait_closed()


# ---------------------------------------------------------------------------- generator (parent)
def runqueue_wait(pid: int | str) -> float:
    """Seconds the process sat runnable but not running (someone else had its core)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    __slots__ = ("sock", "dest", "buf", "seq", "ts", "ssrc", "sent", "received", "last_transit", "jitter")

    def __init__(self, sock: socket.socket, ssrc: int) -> None:
        self.sock = sock
        self.dest: tuple[str, int] = (HOST, 9)
        self.buf = bytearray(12 + PAYLOAD)
        self.seq = 0
        self.ts = 0
        self.ssrc = ssrc
        self.sent = 0
        self.received = 0  # packets of the stream that *arrived* at this stream's socket
        self.last_transit = -1
        self.jitter = 0.0  # RFC 3550 §6.4.1 interarrival jitter estimate, ns


def run_load(calls: int, seconds: float, relay_cpu: int | None, loop_name: str, via_relay: bool) -> dict:
    socks = []
    streams: list[Stream] = []
    for i in range(2 * calls):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        s.bind((HOST, 0))
        s.setblocking(False)
        socks.append(s)
        streams.append(Stream(s, 0x10000 + i))
    ports = [s.getsockname()[1] for s in socks]
    proc = None
    if via_relay:
        cmd = [sys.executable, __file__, "--serve", "--loop", loop_name]
        if relay_cpu is not None:
            cmd = ["taskset", "-c", str(relay_cpu)] + cmd
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps({"phones": [[ports[2 * i], ports[2 * i + 1]] for i in range(calls)]}) + "\n")
        proc.stdin.flush()
        info = json.loads(proc.stdout.readline())
        for i, (la, lb) in enumerate(info["legs"]):
            streams[2 * i].dest = (HOST, la)  # phone A sends to leg a
            streams[2 * i + 1].dest = (HOST, lb)
    else:
        for i in range(calls):
            streams[2 * i].dest = (HOST, ports[2 * i + 1])
            streams[2 * i + 1].dest = (HOST, ports[2 * i])

    by_fd = {s.sock.fileno(): s for s in streams}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    transits = array("q")
    n = len(streams)
    period_ns = int(PTIME * 1e9)
    start = time.monotonic_ns() + 50_000_000
    # stream k sends at start + k*period/n + j*period: spread evenly over the 20 ms
    offsets = [k * period_ns // n for k in range(n)]
    end = start + int(seconds * 1e9)
    cpu0 = cpu_seconds(proc.pid) if proc else 0.0
    wait0 = runqueue_wait(proc.pid) if proc else 0.0
    gwait0 = runqueue_wait("self")
    gen0 = time.process_time()
    wall0 = time.monotonic()
    stats0 = _relay_stats(proc) if proc else None
    k = 0
    cycle = start
    recv_into = bytearray(2048)

    def drain(events) -> None:
        now = time.monotonic_ns()
        for fd, _ in events:
            st = by_fd[fd]
            sock = st.sock
            while True:
                try:
                    nbytes = sock.recv_into(recv_into)
                except BlockingIOError:
                    break
                if nbytes < 20:
                    continue
                sent_at = _STAMP.unpack_from(recv_into, 12)[0]
                transit = now - sent_at
                st.received += 1
                transits.append(transit)
                if st.last_transit >= 0:
                    d = abs(transit - st.last_transit)
                    st.jitter += (d - st.jitter) / 16
                st.last_transit = transit

    while True:
        now = time.monotonic_ns()
        while now >= cycle + offsets[k] and cycle < end:
            st = streams[k]
            buf = st.buf
            _HDR.pack_into(buf, 0, 0x80, 0, st.seq & 0xFFFF, st.ts & 0xFFFFFFFF, st.ssrc)
            _STAMP.pack_into(buf, 12, time.monotonic_ns())
            try:
                st.sock.sendto(buf, st.dest)
                st.sent += 1
            except BlockingIOError:
                pass
            st.seq += 1
            st.ts += PAYLOAD
            k += 1
            if k == n:
                k = 0
                cycle += period_ns
        if cycle >= end:
            break
        wait = (cycle + offsets[k] - time.monotonic_ns()) / 1e9
        drain(ep.poll(max(wait, 0)))
    wall = time.monotonic() - wall0
    gen_cpu = time.process_time() - gen0
    cpu = (cpu_seconds(proc.pid) - cpu0) if proc else 0.0
    waited = (runqueue_wait(proc.pid) - wait0) if proc else 0.0
    gwaited = runqueue_wait("self") - gwait0
    stats1 = _relay_stats(proc) if proc else None
    # let packets in flight land
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        drain(ep.poll(0.05))
    sent = sum(s.sent for s in streams)
    received = sum(s.received for s in streams)
    if proc:
        proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    ep.close()
    for s in socks:
        s.close()
    srt = sorted(transits)

    def pct(p: float) -> float:
        return srt[min(len(srt) - 1, int(p * len(srt)))] / 1e3 if srt else float("nan")

    return {
        "calls": calls,
        "streams": n,
        "sent": sent,
        "received": received,
        "loss_pct": 100.0 * (sent - received) / sent if sent else 0.0,
        "pps_offered": sent / wall,
        "relay_pps": ((stats1["in"] - stats0["in"]) / wall) if proc else 0.0,
        "relay_dropped": (stats1["dropped"] - stats0["dropped"]) if proc else 0,
        "relay_cpu_pct": 100.0 * cpu / wall,
        # CPU time per relayed packet: the figure least disturbed by other load on the machine
        "relay_us_per_pkt": 1e6 * cpu / (stats1["in"] - stats0["in"]) if proc and stats1["in"] > stats0["in"] else 0.0,
        "gen_cpu_pct": 100.0 * gen_cpu / wall,
        # time runnable but not running: > a few % means other load shared the cores and the
        # latency figures measure that, not the relay
        "relay_rq_wait_pct": 100.0 * waited / wall,
        "gen_rq_wait_pct": 100.0 * gwaited / wall,
        "transit_p50_us": pct(0.50),
        "transit_p99_us": pct(0.99),
        "transit_max_us": srt[-1] / 1e3 if srt else float("nan"),
        "jitter_us": sum(s.jitter for s in streams) / n / 1e3,
    }


def _relay_stats(proc) -> dict:
    proc.stdin.write(json.dumps({"cmd": "stats"}) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="+", default=[100, 300, 600])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--relay-cpu", type=int, default=0, help="core for the relay (taskset); -1 = no pinning")
    ap.add_argument("--gen-cpu", type=int, default=1, help="core for this generator; -1 = no pinning")
    ap.add_argument("--no-baseline", action="store_true", help="skip the direct phone-to-phone run")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port-min", type=int, default=30000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(serve(args.loop, args.port_min))
        else:
            asyncio.run(serve(args.loop, args.port_min))
        return 0
    if any(c < 1 or c > MAX_CALLS for c in args.calls) or not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"calls must be 1-{MAX_CALLS} and seconds 0-{MAX_SECONDS}")
    if args.gen_cpu >= 0:
        os.sched_setaffinity(0, {args.gen_cpu})
    relay_cpu = None if args.relay_cpu < 0 else args.relay_cpu
    print(f"RTP relay bench: G.711 20 ms, {PAYLOAD}-byte payload, both ways, {args.seconds:.0f} s per run, "
          f"loop={args.loop}, relay on cpu {relay_cpu}, generator on cpu {args.gen_cpu}, {os.cpu_count()} cpus")
    head = (f"{'calls':>6} {'streams':>7} {'pps offered':>11} {'relay pps':>10} {'loss %':>7} "
            f"{'p50 µs':>8} {'p99 µs':>8} {'jitter µs':>9} {'+p50 µs':>8} {'+p99 µs':>8} {'+jitter µs':>10} "
            f"{'relay CPU%':>10} {'µs CPU/pkt':>10} {'gen CPU%':>8} {'rq-wait% relay/gen':>18}")
    print(head)
    for calls in args.calls:
        base = None if args.no_baseline else run_load(calls, args.seconds, relay_cpu, args.loop, via_relay=False)
        r = run_load(calls, args.seconds, relay_cpu, args.loop, via_relay=True)
        add = (lambda k: r[k] - base[k]) if base else (lambda k: float("nan"))
        print(f"{calls:>6} {r['streams']:>7} {r['pps_offered']:>11.0f} {r['relay_pps']:>10.0f} {r['loss_pct']:>7.3f} "
              f"{r['transit_p50_us']:>8.0f} {r['transit_p99_us']:>8.0f} {r['jitter_us']:>9.1f} "
              f"{add('transit_p50_us'):>8.0f} {add('transit_p99_us'):>8.0f} {add('jitter_us'):>10.1f} "
              f"{r['relay_cpu_pct']:>10.1f} {r['relay_us_per_pkt']:>10.2f} {r['gen_cpu_pct']:>8.1f} "
              f"{r['relay_rq_wait_pct']:>10.1f}/{r['gen_rq_wait_pct']:<7.1f}", flush=True)
        if r["relay_dropped"]:
            print(f"       relay dropped {r['relay_dropped']} packets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
