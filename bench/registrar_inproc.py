"""In-process benchmark of the registrar path: REGISTER → 401 → REGISTER with digest → 200,
through the real parser, transaction layer, PbxService, Authenticator and embedded store:
datagrams enter through the node's own UDP protocol object (as from a socket, flows and all)
and answers go to a list. Figures are CPU seconds of this thread (not wall time),
so they hold on a busy machine; the SIPp figure in bench/README.md adds the socket cost.

REGISTERs arrive in bursts (default 50, like a loaded socket's backlog), so per-turn work such
as the location store's group commit is shared the way it is under load.

Run: .venv/bin/python bench/registrar_inproc.py [N [BURST]] [--profile[=FILE]] [--rounds=R] [--memory] [--extensions=E]
[--late-timers] [--callgrind]

``--rounds=R`` repeats N registrations R times in one process and prints the best and the
median (the machine is shared: take the best). ``--memory`` registers N distinct users
(default 10,000) under tracemalloc and prints traced bytes and GC-tracked objects per
registration, while the transactions linger (Timer J) and after every timer has fired.

Instruction counts (deterministic on a busy machine): ``--late-timers`` pushes the node's
timers an hour out, so a run slowed down by valgrind fires none (Timer J would otherwise fire
for more or fewer transactions depending on the load); ``--callgrind`` runs the phones' side
(building REGISTERs, parsing the 401 and 200, answering the challenge) inside
``sys.call_tracing``, which nothing else calls, so ``callgrind --toggle-collect=sys_call_tracing``
counts the phones alone; the node's share is the whole process (cachegrind, or callgrind
without the toggle) minus that. Per registration, the difference of two runs::

    for n in 1000 4000; do PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no \\
      --cachegrind-out-file=/tmp/reg.$n .venv/bin/python bench/registrar_inproc.py $n \\
      --extensions=2000 --late-timers --callgrind; done    # (Ir(4000) - Ir(1000)) / 3000
    # the phones: the same with --tool=callgrind --toggle-collect=sys_call_tracing
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time

from node.compiled import describe
from node.embedded import open_embedded
from node.pbx.authn import Authenticator
from node.pbx.service import PbxService
from node.runtime.config import NodeConfig
from node.sip.auth import answer_challenge, choose_challenge
from node.sip.flow import Flow
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer
from node.transport.endpoint import SipEndpoint
from node.transport.sockets import SipTransports, _UdpProtocol

DOMAIN = "bench.example"
#: the issue's memory target is per 10,000 registered; each has one phone (one contact)
EXTENSIONS = 10000


class _Sink:
    """Stands in for SipTransports: keeps what the node sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flow: Flow) -> None:
        self.sent.append(data)

    def bound(self, *a):
        return None


class _LateLoop:
    """The event loop as the endpoint sees it with ``--late-timers``: every timer an hour
    out (the same work to arm it), so none fires however much valgrind slows the run."""

    def __init__(self, loop) -> None:
        self._loop = loop
        self.time = loop.time

    def call_at(self, when, callback, *args):
        return self._loop.call_at(when + 3600.0, callback, *args)

    def call_later(self, delay, callback, *args):
        return self._loop.call_later(delay + 3600.0, callback, *args)


def _register(i: int, ext: str, cseq: int, auth: str | None, port: int) -> bytes:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bK-b{i}-{cseq};rport",
        f"From: <sip:{ext}@{DOMAIN}>;tag=f{i}",
        f"To: <sip:{ext}@{DOMAIN}>",
        f"Call-ID: reg-{i}@127.0.0.2",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{ext}@127.0.0.2:{port}>",
        "Max-Forwards: 70",
        "Expires: 3600",
        "User-Agent: bench",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def main(n: int, profile: bool, burst: int, rounds: int = 1, memory: bool = False, opts: dict | None = None) -> None:
    opts = opts or {}
    print(describe(), flush=True)  # compiled or not: the figures differ by about 1.4x
    with tempfile.TemporaryDirectory() as tmp:
        backend = open_embedded(tmp)
        t = await backend.config.create_tenant("bench", DOMAIN)
        for e in range(EXTENSIONS):
            await backend.config.create_extension(t.id, str(10000 + e), "secret-password")
        cfg = NodeConfig(data_dir=tmp, nat_ping_interval=0)
        layer = TransactionLayer()
        endpoint = SipEndpoint(layer)
        if "late-timers" in opts:
            endpoint._loop = _LateLoop(endpoint._loop)
        callgrind = "callgrind" in opts
        sink = _Sink()
        endpoint.transports = sink
        service = PbxService(
            cfg, endpoint, backend.config, backend.locations, backend.cdrs,
            Authenticator(os.urandom(32)), media_factory=None,
        )
        endpoint.on_event = service.on_event
        # datagrams go in through the node's own UDP protocol object (parse, flow), not a socket
        udp = _UdpProtocol(SipTransports(endpoint.message_received), ("127.0.0.1", 5060))
        gc.collect()
        gc.freeze()
        gc.set_threshold(10000, 10, 10)  # as node.runtime.app does

        prof = cProfile.Profile() if profile else None

        async def wave(msgs: list[tuple[bytes, int]]) -> tuple[float, list[bytes]]:
            """Deliver a burst the way a loaded socket does (many datagrams per loop turn);
            CPU seconds until every answer is out."""
            sink.sent.clear()
            c0 = time.thread_time()
            if prof:
                prof.enable()
            for data, port in msgs:
                udp.datagram_received(data, ("127.0.0.2", port))
            while len(sink.sent) < len(msgs):
                await asyncio.sleep(0)
            if prof:
                prof.disable()
            return time.thread_time() - c0, list(sink.sent)

        challenges: dict = {}

        def phone_first(idx: range) -> list[tuple[bytes, int]]:
            return [(_register(i, str(10000 + i % EXTENSIONS), 1, None, 20000 + i % EXTENSIONS), 20000 + i % EXTENSIONS) for i in idx]

        def phone_creds(idx: range, answers: list[bytes]) -> list[tuple[bytes, int]]:
            creds = []
            for i, raw in zip(idx, answers):
                r401 = parse_datagram(raw)
                assert r401.status == 401, r401.status
                values = tuple(v for k, v in r401.headers if k == "WWW-Authenticate")
                ch = challenges.get(values)
                if ch is None:  # the phones' side: one nonce per second, parsed once
                    ch = challenges[values] = choose_challenge(values)
                ext = str(10000 + i % EXTENSIONS)
                cred = answer_challenge(ch, "REGISTER", f"sip:{DOMAIN}", ext, "secret-password", f"{i:08x}", 1, b"")
                creds.append((_register(i, ext, 2, cred, 20000 + i % EXTENSIONS), 20000 + i % EXTENSIONS))
            return creds

        def phone_ok(answers: list[bytes]) -> int:
            return sum(parse_datagram(raw).status == 200 for raw in answers)

        def phone(fn, *args):
            """The phones' work; with --callgrind inside sys.call_tracing (see the docstring)."""
            return sys.call_tracing(fn, args) if callgrind else fn(*args)

        async def run(first_i: int, count: int) -> tuple[dict[int, float], int]:
            """``count`` registrations, Call-IDs from ``first_i`` on; CPU seconds per leg."""
            cpu = {401: 0.0, 200: 0.0}
            ok = 0
            for start in range(first_i, first_i + count, burst):
                idx = range(start, min(first_i + count, start + burst))
                dt, answers = await wave(phone(phone_first, idx))
                cpu[401] += dt
                dt, answers = await wave(phone(phone_creds, idx, answers))
                cpu[200] += dt
                ok += phone(phone_ok, answers)
            return cpu, ok

        if memory:
            # the memory figure: what n registrations (n distinct users) leave behind,
            # while their transactions still linger (Timer J) and once every timer has fired
            import tracemalloc

            gc.collect()
            objs0 = len(gc.get_objects())
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            _, ok = await run(0, n)
            gc.collect()
            held = layer.transaction_count
            lingering = tracemalloc.get_traced_memory()[0] - base
            snap1 = tracemalloc.take_snapshot() if "top" in opts else None
            objs1 = len(gc.get_objects())
            layer.handle_timer(asyncio.get_running_loop().time() + 3600.0)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] - base
            if snap1 is not None:
                snap2 = tracemalloc.take_snapshot()
                for st in snap1.statistics("lineno")[:12]:
                    print("lingering:", st)
                for st in snap2.statistics("lineno")[:12]:
                    print("after:", st)
            objs2 = len(gc.get_objects())
            tracemalloc.stop()
            backend.close()
            print(f"registrations: {n}, 200 OK: {ok}, transactions held (Timer J): {held}")
            print(f"traced Python memory per registration: {lingering / n:,.0f} B while the transactions "
                  f"linger, {after / n:,.0f} B once every timer has fired (bindings are in SQLite, not traced)")
            if held:
                print(f"  the lingering transactions: {(lingering - after) / held:,.0f} B and "
                      f"{(objs1 - objs2) / held:.1f} GC-tracked objects each")
            print(f"GC-tracked objects per registration: {(objs1 - objs0) / n:.1f} while they linger, "
                  f"{(objs2 - objs0) / n:.1f} after")
            return

        results = []
        for r in range(rounds):
            cpu, ok = await run(r * n, n)
            results.append((cpu[401] + cpu[200], cpu, ok))
        backend.close()
    for server_cpu, split, ok in results:
        print(f"registrations: {n}, 200 OK: {ok}; node CPU per registration (401 + 200): "
              f"{server_cpu / n * 1e6:.1f} µs (challenge {split[401] / n * 1e6:.1f} µs, "
              f"authenticated REGISTER → 200 {split[200] / n * 1e6:.1f} µs)")
    per = sorted(r[0] / n * 1e6 for r in results)
    print(f"best of {rounds}: {per[0]:.1f} µs per registration => {1e6 / per[0]:,.0f} registrations/s per core "
          f"(without sockets); median {per[len(per) // 2]:.1f} µs")
    if prof:
        if opts.get("profile"):  # --profile=FILE: the stats for pstats, nothing printed
            prof.dump_stats(opts["profile"])
        else:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].partition("=")[::2] for a in sys.argv[1:] if a.startswith("--"))
    import uvloop

    memory = "memory" in opts
    EXTENSIONS = int(opts.get("extensions") or EXTENSIONS)  # fewer: a quicker setup (valgrind runs)
    uvloop.run(main(
        int(args[0]) if args else (EXTENSIONS if memory else 20000), "profile" in opts,
        int(args[1]) if len(args) > 1 else 50, int(opts.get("rounds") or 1), memory, opts,
    ))
