"""Load figures for the RTP relay: N G.711 calls (20 ms, 160-byte payload, both ways) on loopback.

    .venv/bin/python bench/rtp_relay.py --calls 100 300 600 --seconds 10
    .venv/bin/python bench/rtp_relay.py --target both --calls 200 400 700 1000 1400 --seconds 10

The element under test runs pinned to one core with ``taskset`` (the way a node would be
deployed per core); this process is the load generator, pinned to another core, with one UDP
socket per phone. ``--target`` picks the element: ``relay`` is the node's own RtpRelay in a
child process; ``rtpengine`` is a real rtpengine (Debian rtpengine-daemon) in userspace mode
(``--table=-1``, one worker thread) with its calls set up over the ng protocol (offer/answer,
each phone's SDP pointing at the generator's sockets, the rewritten SDP giving the ports to
send to) and deleted afterwards; ``both`` runs the two at each size, the way the comparison
is meant to be read. Each size is also run phone to phone directly (the baseline), so
"added" latency and jitter are the element's own share and not the generator's, and so the
generator's own limit shows: where the direct run loses packets (or cannot offer the nominal
2 x 50 x N packets/s), the generator is saturated and no figure above that size is claimed.
Not a test: it prints figures, it asserts nothing.

Columns: "+" figures are through-the-element minus direct. "el pps" is packets/s the element
itself counted (the relay's packets in, rtpengine's ``relayedpackets``). "µs CPU/pkt" is the
element's CPU time (utime+stime of every thread, /proc/<pid>/stat) per such packet: the
figure least disturbed by other load; "sys%" is the kernel's share of that CPU time. "rq-wait%" is the share of the run the element's and
the generator's threads spent runnable but not running; when it is more than a few percent,
other load shared the cores and latency figures measure that rather than the element.

Bounded: at most 2000 calls and 120 s of load per run, 127.0.0.1 only. The element's RTP ports
come from 42000-50999, the phones' from 52000 up; rtpengine is stopped at the end of each run,
also on error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
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


ROOT = Path(__file__).resolve().parent.parent
# Fixed, disjoint port ranges for the element (4 ports a call: RTP + RTCP each side) and the
# generator's phones (2 a call), so neither runs out of the other's ports. Both lie in the
# kernel's ephemeral range, where other processes get random ports (a taken one is skipped);
# not in 20000-32000, where the test suite's free_port() hands out ports it expects to get.
ELEMENT_PORTS = (42000, 50999)
PHONE_PORT_MIN = 52000
SETUP_TIMEOUT = 60.0  # ng offer/answer for every call, and again for the deletes
LOSS_LIMIT_PCT = 0.1
PKTS_PER_CALL_S = 2 / PTIME  # both ways, 50 packets/s each


# ---------------------------------------------------------------------------- elements under test
def _die_with_parent() -> None:
    """preexec_fn: the element gets SIGTERM when this generator dies, however it dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, kept across exec


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] + cmd if cpu is not None else cmd


class RelayChild:
    """The node's RtpRelay in a child process (``serve`` above), one session per call."""

    name = "relay"

    def __init__(self, cpu: int | None, loop_name: str) -> None:
        self.proc = subprocess.Popen(_pinned([sys.executable, __file__, "--serve", "--loop", loop_name], cpu),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def open(self, phones: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Ports phone A and phone B of each call send to."""
        self._send({"phones": phones})
        return [tuple(x) for x in self._recv()["legs"]]

    def counters(self) -> tuple[int, int]:
        """(packets through the element, packets it dropped) since it started."""
        self._send({"cmd": "stats"})
        r = self._recv()
        return r["in"], r["dropped"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"cmd": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def _send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"relay child exited with {self.proc.wait()}")
        return json.loads(line)


def _phone_sdp(port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n")


def _sdp_port(sdp: str) -> int:
    """The audio port of rtpengine's rewritten SDP (its address must be ours: loopback only)."""
    m = re.search(r"^m=audio (\d+) ", sdp, re.M)
    c = re.search(r"^c=IN IP4 (\S+)", sdp, re.M)
    if not m or not c or c.group(1) != HOST:
        raise RuntimeError(f"rtpengine's SDP has no audio port on {HOST}:\n{sdp}")
    return int(m.group(1))


class Rtpengine:
    """rtpengine (Debian rtpengine-daemon) in userspace mode on loopback, driven over ng."""

    name = "rtpengine"

    def __init__(self, cpu: int | None, workdir: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from node.rtp_engine.ng_client import NgClient

        exe = shutil.which("rtpengine")
        if exe is None:
            raise SystemExit("rtpengine not found: install Debian rtpengine-daemon (scripts/install-deps --test)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            ng_port = s.getsockname()[1]
        self.log_path = workdir / f"rtpengine-{ng_port}.log"
        argv = [exe, "--config-file=none", "--foreground", "--log-stderr", "--table=-1", f"--interface={HOST}",
                f"--listen-ng={HOST}:{ng_port}", f"--port-min={ELEMENT_PORTS[0]}",
                f"--port-max={ELEMENT_PORTS[1]}", "--num-threads=1", "--log-level=4", "--delete-delay=0",
                "--timeout=120"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(_pinned(argv, cpu), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.call_ids: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ng = NgClient(HOST, ng_port, timeout=1.0, retries=3)
        try:
            self._run(self._ready(), 10.0)
        except BaseException:
            self.close()
            raise

    def _run(self, coro, timeout: float):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def _ready(self) -> None:
        while not await self.ng.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited with {self.proc.returncode}:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def open(self, phones: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """One call per phone pair: A offers its socket, B answers with its own."""
        sem = asyncio.Semaphore(32)

        async def one(i: int, pa: int, pb: int) -> tuple[int, int]:
            async with sem:
                call_id = f"bench-{i}"
                offer = await self.ng.offer(call_id, "a", _phone_sdp(pa))
                self.call_ids.append(call_id)
                answer = await self.ng.answer(call_id, "a", "b", _phone_sdp(pb))
                return _sdp_port(answer["sdp"]), _sdp_port(offer["sdp"])  # A sends to the answer's port

        async def all_calls():
            return await asyncio.gather(*(one(i, pa, pb) for i, (pa, pb) in enumerate(phones)))

        return self._run(all_calls(), SETUP_TIMEOUT)

    def counters(self) -> tuple[int, int]:
        t = self._run(self.ng.command("statistics"), 5.0)["statistics"]["totalstatistics"]
        return int(t["relayedpackets"]), int(t["relayedpacketerrors"])

    def close(self) -> None:
        """Delete the calls (best effort), then stop rtpengine: always, also after an error."""
        try:
            if self.call_ids and self.proc.poll() is None:
                sem = asyncio.Semaphore(32)

                async def delete(call_id: str) -> None:
                    async with sem:
                        await self.ng.delete(call_id, "a")

                async def all_deletes():
                    await asyncio.gather(*(delete(c) for c in self.call_ids), return_exceptions=True)

                self._run(all_deletes(), SETUP_TIMEOUT)
                self.call_ids.clear()
        except Exception as e:  # noqa: BLE001 - stopping it below matters more
            print(f"       rtpengine: deleting calls failed: {e!r}", file=sys.stderr)
        finally:
            self.ng.close()
            self.loop.close()
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------- generator (parent)
def runqueue_wait(pid: int | str) -> float:
    """Seconds the process's threads sat runnable but not running (someone else had the core)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of ``pid``: user code, and the kernel's share (syscalls,
    loopback delivery), which a relay in C pays just the same."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


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


def run_load(calls: int, seconds: float, target: str, cpu: int | None, loop_name: str, workdir: Path) -> dict:
    """One run: ``target`` is "direct" (phone to phone, the baseline), "relay" or "rtpengine"."""
    socks: list[socket.socket] = []
    element: RelayChild | Rtpengine | None = None
    ep = select.epoll()
    try:
        streams: list[Stream] = []
        port = PHONE_PORT_MIN
        while len(socks) < 2 * calls:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((HOST, port))
            except OSError:
                s.close()  # someone else's: the next one
                port += 1
                if port > 60999:
                    raise RuntimeError(f"no free ports for {2 * calls} phones from {PHONE_PORT_MIN}") from None
                continue
            port += 1
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            s.setblocking(False)
            streams.append(Stream(s, 0x10000 + len(streams)))
        ports = [s.getsockname()[1] for s in socks]
        phones = [(ports[2 * i], ports[2 * i + 1]) for i in range(calls)]
        t0 = time.monotonic()
        if target == "direct":
            legs = [(pb, pa) for pa, pb in phones]
        else:
            element = RelayChild(cpu, loop_name) if target == "relay" else Rtpengine(cpu, workdir)
            legs = element.open(phones)
        setup_s = time.monotonic() - t0
        for i, (la, lb) in enumerate(legs):
            streams[2 * i].dest = (HOST, la)  # phone A sends to leg a
            streams[2 * i + 1].dest = (HOST, lb)
        for s in socks:
            ep.register(s.fileno(), select.EPOLLIN)
        r = _measure(streams, seconds, ep, element)
        r.update(target=target, calls=calls, setup_s=setup_s)
        return r
    finally:
        if element is not None:
            element.close()
        ep.close()
        for s in socks:
            s.close()


def _measure(streams: list[Stream], seconds: float, ep, element) -> dict:
    by_fd = {s.sock.fileno(): s for s in streams}
    transits = array("q")
    lags = array("q")  # how late the generator was for a send: its own saturation shows here
    n = len(streams)
    period_ns = int(PTIME * 1e9)
    pid = element.pid if element else None
    stats0 = element.counters() if element else (0, 0)
    cpu0 = cpu_seconds(pid) if pid else (0.0, 0.0)
    wait0 = runqueue_wait(pid) if pid else 0.0
    gwait0 = runqueue_wait("self")
    gen0 = time.process_time()
    wall0 = time.monotonic()
    start = time.monotonic_ns() + 50_000_000
    # stream k sends at start + k*period/n + j*period: spread evenly over the 20 ms
    offsets = [k * period_ns // n for k in range(n)]
    end = start + int(seconds * 1e9)
    k = 0
    cycle = start
    recv_into = bytearray(2048)

    def drain(events) -> None:
        # one datagram per ready socket and poll: epoll is level-triggered, so a socket with more
        # waiting comes back on the next poll, and the generator saves the recv that would end in
        # BlockingIOError (a third of its receive cost: it is the limit at high N)
        now = time.monotonic_ns()
        for fd, _ in events:
            st = by_fd[fd]
            try:
                nbytes = st.sock.recv_into(recv_into)
            except BlockingIOError:
                continue
            if nbytes < 20:
                continue
            transit = now - _STAMP.unpack_from(recv_into, 12)[0]
            st.received += 1
            transits.append(transit)
            if st.last_transit >= 0:
                st.jitter += (abs(transit - st.last_transit) - st.jitter) / 16
            st.last_transit = transit

    while True:
        now = time.monotonic_ns()
        if now >= cycle + offsets[k] and cycle < end:
            lags.append(now - cycle - offsets[k])
        # at most a batch before receiving again: a generator that fell behind must not stop
        # reading its sockets (they would overflow and its own lag would count as loss)
        batch = 256
        while now >= cycle + offsets[k] and cycle < end and batch:
            batch -= 1
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
    sending = (time.monotonic_ns() - start) / 1e9  # longer than asked when the generator fell behind
    gen_cpu = time.process_time() - gen0
    cpu1 = cpu_seconds(pid) if pid else (0.0, 0.0)
    sys_cpu = cpu1[1] - cpu0[1]
    cpu = cpu1[0] - cpu0[0] + sys_cpu
    waited = (runqueue_wait(pid) - wait0) if pid else 0.0
    gwaited = runqueue_wait("self") - gwait0
    stats1 = element.counters() if element else (0, 0)
    # let packets in flight land
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        drain(ep.poll(0.05))
    sent = sum(s.sent for s in streams)
    received = sum(s.received for s in streams)
    through = stats1[0] - stats0[0]
    srt = sorted(transits)
    slags = sorted(lags)

    def pct(p: float) -> float:
        return srt[min(len(srt) - 1, int(p * len(srt)))] / 1e3 if srt else float("nan")

    return {
        "streams": n,
        "sent": sent,
        "received": received,
        "loss_pct": 100.0 * (sent - received) / sent if sent else 0.0,
        "pps_offered": sent / sending,
        "offered_pct": 100.0 * sent / sending / (n / PTIME),
        "el_pps": through / wall,
        "el_dropped": stats1[1] - stats0[1],
        "el_cpu_pct": 100.0 * cpu / wall,
        "el_sys_pct": 100.0 * sys_cpu / cpu if cpu > 0 else float("nan"),  # kernel share of it
        # CPU time per packet through the element: the figure least disturbed by other load
        "el_us_per_pkt": 1e6 * cpu / through if through > 0 else float("nan"),
        "gen_cpu_pct": 100.0 * gen_cpu / wall,
        "gen_lag_p99_ms": slags[min(len(slags) - 1, int(0.99 * len(slags)))] / 1e6 if slags else 0.0,
        # time runnable but not running: > a few % means other load shared the cores and the
        # latency figures measure that, not the element
        "el_rq_wait_pct": 100.0 * waited / wall,
        "gen_rq_wait_pct": 100.0 * gwaited / wall,
        "transit_p50_us": pct(0.50),
        "transit_p99_us": pct(0.99),
        "transit_max_us": srt[-1] / 1e3 if srt else float("nan"),
        "jitter_us": sum(s.jitter for s in streams) / n / 1e3,
    }


def offered_in_full(r: dict) -> bool:
    """The generator kept to the schedule (>= 99 % of 2 x 50 x N packets/s): else the run says
    nothing about the element (the generator fell behind, being saturated or starved)."""
    return r["offered_pct"] >= 99.0


def passed(r: dict) -> bool:
    return r["loss_pct"] < LOSS_LIMIT_PCT and offered_in_full(r)


def largest_clean(rows: dict[int, dict], gen_ok: dict[int, bool] | None) -> tuple[int, str]:
    """Largest size that passed with every smaller size of the sweep, and what stopped it."""
    best = 0
    for calls in sorted(rows):
        if (gen_ok is not None and not gen_ok[calls]) or not offered_in_full(rows[calls]):
            return best, "generator"
        if not passed(rows[calls]):
            return best, "element"
        best = calls
    return best, "sweep end"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["relay", "rtpengine", "both"], default="relay",
                    help="element under test: the node's relay, rtpengine (userspace), or both at each size")
    ap.add_argument("--calls", type=int, nargs="+", default=[100, 300, 600])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--relay-cpu", type=int, default=0,
                    help="core for the element under test, relay or rtpengine (taskset); -1 = no pinning")
    ap.add_argument("--gen-cpu", type=int, default=1, help="core for this generator; -1 = no pinning")
    ap.add_argument("--no-baseline", action="store_true", help="skip the direct phone-to-phone run")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port-min", type=int, default=ELEMENT_PORTS[0], help=argparse.SUPPRESS)
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
    # a SIGTERM (timeout, CI) unwinds through the finally blocks that stop the elements
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.gen_cpu >= 0:
        os.sched_setaffinity(0, {args.gen_cpu})
    cpu = None if args.relay_cpu < 0 else args.relay_cpu
    targets = ["relay", "rtpengine"] if args.target == "both" else [args.target]
    sizes = sorted(set(args.calls))
    print(f"RTP relay bench: G.711 20 ms, {PAYLOAD}-byte payload, both ways, {args.seconds:g} s per run, "
          f"targets {'+'.join(targets)}, relay loop={args.loop}, element on cpu {cpu}, generator on cpu "
          f"{args.gen_cpu}, {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'target':>9} {'calls':>5} {'streams':>7} {'pps offered':>11} {'off%':>5} {'el pps':>7} {'loss %':>7} "
          f"{'p50 µs':>7} {'p99 µs':>7} {'jit µs':>7} {'+p50 µs':>7} {'+p99 µs':>7} {'+jit µs':>7} "
          f"{'el CPU%':>7} {'sys%':>4} {'µs CPU/pkt':>10} {'gen CPU%':>8} {'lag p99 ms':>10} {'rq-wait% el/gen':>15} "
          f"{'setup s':>7}")
    results: dict[str, dict[int, dict]] = {t: {} for t in ["direct"] + targets}
    with tempfile.TemporaryDirectory(prefix="rtp-bench-") as tmp:
        for calls in sizes:
            base = None
            for target in ([] if args.no_baseline else ["direct"]) + targets:
                r = run_load(calls, args.seconds, target, cpu, args.loop, Path(tmp))
                results[target][calls] = r
                if target == "direct":
                    base = r
                add = (lambda k: r[k] - base[k]) if base and target != "direct" else (lambda k: float("nan"))
                print(f"{target:>9} {calls:>5} {r['streams']:>7} {r['pps_offered']:>11.0f} {r['offered_pct']:>5.1f} "
                      f"{r['el_pps']:>7.0f} {r['loss_pct']:>7.3f} {r['transit_p50_us']:>7.0f} "
                      f"{r['transit_p99_us']:>7.0f} {r['jitter_us']:>7.1f} {add('transit_p50_us'):>7.0f} "
                      f"{add('transit_p99_us'):>7.0f} {add('jitter_us'):>7.1f} {r['el_cpu_pct']:>7.1f} "
                      f"{r['el_sys_pct']:>4.0f} {r['el_us_per_pkt']:>10.2f} {r['gen_cpu_pct']:>8.1f} {r['gen_lag_p99_ms']:>10.2f} "
                      f"{r['el_rq_wait_pct']:>7.1f}/{r['gen_rq_wait_pct']:<7.1f} {r['setup_s']:>7.2f}", flush=True)
                if r["el_dropped"]:
                    print(f"          {target} dropped {r['el_dropped']} packets itself")
    print_summary(results, targets, args.no_baseline)
    return 0


def print_summary(results: dict[str, dict[int, dict]], targets: list[str], no_baseline: bool) -> None:
    gen_ok = None if no_baseline else {c: passed(r) for c, r in results["direct"].items()}
    print(f"\nLargest size with < {LOSS_LIMIT_PCT} % loss (it and every smaller size of the sweep); figures at that size")
    print(f"{'target':>9} {'max calls':>9} {'stopped by':>10} {'el CPU%':>7} {'µs CPU/pkt':>10} {'+p50 µs':>7} "
          f"{'+p99 µs':>7} {'+jit µs':>7} {'calls/core from CPU':>19}")
    if gen_ok is not None:
        gmax, why = largest_clean(results["direct"], None)
        print(f"{'generator':>9} {gmax:>9} {'itself' if why != 'sweep end' else why:>10}   (direct phone-to-phone runs)")
    for target in targets:
        best, why = largest_clean(results[target], gen_ok)
        if not best:
            print(f"{target:>9} {0:>9} {why:>10}")
            continue
        r = results[target][best]
        b = results["direct"].get(best)
        add = (lambda k: r[k] - b[k]) if b else (lambda k: float("nan"))
        # packets/s per call both ways; the CPU-based capacity is an estimate, not a measured size
        per_core = 1e6 / (r["el_us_per_pkt"] * PKTS_PER_CALL_S) if r["el_us_per_pkt"] > 0 else float("nan")
        shown = f"≥{best}" if why != "element" else str(best)
        print(f"{target:>9} {shown:>9} {why:>10} {r['el_cpu_pct']:>7.1f} {r['el_us_per_pkt']:>10.2f} "
              f"{add('transit_p50_us'):>7.0f} {add('transit_p99_us'):>7.0f} {add('jitter_us'):>7.1f} {per_core:>19.0f}")


if __name__ == "__main__":
    sys.exit(main())
