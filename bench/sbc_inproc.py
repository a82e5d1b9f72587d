"""In-process benchmark of the SBC's signalling path: a phone's INVITE → the SBC → a node
that answers 100/180/200 → ACK → BYE → 200, every message through ``sbc.proxy.Proxy`` with
its Guard (the phone trusted, as in bench/sbc_load.py) and no media anchoring.

The phone and the node are scripted in this process and the sockets replaced by a list;
figures are CPU seconds of the SBC's own work only (thread time around parsing the
datagrams it receives, its transaction layer, the proxy and the serialisation of what it
sends; not the peers, not the sockets), so they hold on a busy machine. bench/sbc_load.py
adds the sockets and SIPp.

Calls arrive in bursts (default 50), as from a loaded socket.

The cyclic GC is run as the SBC process runs it (sbc/heap.py: a freeze every
``FREEZE_EVERY`` s, clocked here by the SBC's CPU time, as on a saturated core);
``--no-freeze`` keeps what this bench did before (one freeze at the start, young threshold
10,000), whose figures bench/README.md compares with.

Run: .venv/bin/python bench/sbc_inproc.py [N [BURST]] [--profile] [--domain] [--late-timers] [--no-freeze]
[--callgrind]

``--late-timers`` pushes every timer (the transactions' and the proxy's) an hour out, with
the same work to arm them: no retransmission fires even when the run is slowed down, so
instruction counts under ``valgrind --tool=cachegrind`` are repeatable (a call finishes in
a millisecond without it, far inside T1, so the timing figures are the same).

``--callgrind`` runs the SBC's part of each burst (the parse, the proxy, its transactions and
what it serialises; not the scripted peers) inside ``sys.call_tracing``, a C function nothing
else calls, so ``valgrind --tool=callgrind --toggle-collect=sys_call_tracing`` counts the
SBC's instructions alone (``--inclusive=yes``: ``_operator_call`` is the parse's share):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=sys_call_tracing \
        .venv/bin/python bench/sbc_inproc.py 1000 --late-timers --no-freeze --callgrind
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import gc
import operator
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.sip.flow import Flow  # noqa: E402
from node.sip.message import Request, Response  # noqa: E402
from node.sip.parser import parse_datagram  # noqa: E402
from node.sip.transaction import TransactionLayer  # noqa: E402
from node.transport.endpoint import SipEndpoint  # noqa: E402
from node.transport.sockets import Listen  # noqa: E402
from sbc.config import NodeTarget, SbcConfig  # noqa: E402
from node.runtime.process import settle_heap  # noqa: E402
from sbc import heap  # noqa: E402
from sbc.dispatch import Dispatcher  # noqa: E402
from sbc.health import Health  # noqa: E402
from sbc.proxy import Proxy, SideAddresses  # noqa: E402
from sbc.runtime import load_guard  # noqa: E402
from sbc.topology import Sealer  # noqa: E402

SBC = ("127.0.0.1", 5060)
PHONE = ("127.0.0.2", 5062)
NODE = ("127.0.0.3", 5070)
DOMAIN = "bench.example"
DOMAIN_URIS = "--domain" in sys.argv
LATE_TIMERS = "--late-timers" in sys.argv
NO_FREEZE = "--no-freeze" in sys.argv
CALLGRIND = "--callgrind" in sys.argv
LATE = 3600.0
#: the calls are timed in this many rounds: the best and the median resist a busy machine
ROUNDS = 10


def _sdp(host: str, port: int) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()


def _msg(start: str, headers: list[str], body: bytes = b"") -> bytes:
    ct = ["Content-Type: application/sdp"] if body else []
    return ("\r\n".join([start, *headers, *ct, f"Content-Length: {len(body)}", "", ""])).encode() + body


def _host(addr=None) -> str:
    """The host part of the phone's URIs: the SBC's and its own address as SIPp writes them
    (bench/scenarios/uac_call.xml), or with --domain a tenant domain as a real phone would."""
    if DOMAIN_URIS:
        return DOMAIN
    h, p = addr or SBC
    return f"{h}:{p}"


def _invite(i: int) -> bytes:
    h, p = PHONE
    return _msg(
        f"INVITE sip:2000@{_host()} SIP/2.0",
        [
            f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-inv{i};rport",
            f'From: "Bench" <sip:15557770000@{_host(PHONE)}>;tag=c{i}',
            f"To: <sip:2000@{_host()}>",
            f"Call-ID: call-{i}@{h}",
            "CSeq: 1 INVITE",
            f"Contact: <sip:1000@{h}:{p}>",
            "Max-Forwards: 70",
            "User-Agent: bench-phone",
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS",
        ],
        _sdp(h, 40000 + 2 * (i % 1000)),
    )


def _reply(req: Request, status: int, reason: str, to_tag: str, body: bytes = b"", contact: str = "") -> bytes:
    heads = [f"Via: {v}" for v in req.get_all("Via")]
    to = req.get("To") or ""
    heads += [
        f"From: {req.get('From')}",
        f"To: {to};tag={to_tag}" if ";tag=" not in to and status > 100 else f"To: {to}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.get('CSeq')}",
    ]
    if contact:
        heads.append(f"Contact: {contact}")
    return _msg(f"SIP/2.0 {status} {reason}", heads, body)


class _Peers:
    """The phone and the node, and the SBC's sockets (a list): they answer outside the timed part."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, Flow]] = []
        self.to_sbc: list[tuple[bytes, Flow]] = []
        self.done = 0
        self.failed = 0

    # --- the SBC's transports
    def send(self, data: bytes, flow: Flow) -> None:
        self.outbox.append((data, flow))

    def bound(self, *a):
        return SBC

    def flow_to(self, transport: str, host: str, port: int) -> Flow:
        return Flow(transport, (host, port), SBC)

    # --- the peers
    def react(self) -> None:
        for data, flow in self.outbox:
            msg = parse_datagram(data)
            if flow.remote == NODE:
                self._node(msg)
            elif flow.remote == PHONE:
                self._phone(msg)
            else:
                raise AssertionError(f"sent to {flow.remote}")
        self.outbox.clear()

    def _node(self, msg) -> None:
        src = Flow("udp", NODE, SBC)
        if isinstance(msg, Request):
            assert "127.0.0.2" not in (msg.get("Via") or ""), "the phone's Via reached the node"
            if msg.method == "INVITE":
                tag = "n" + msg.call_id.split("@")[0]
                self.to_sbc.append((_reply(msg, 100, "Trying", ""), src))
                self.to_sbc.append((_reply(msg, 180, "Ringing", tag, contact=f"<sip:2000@{NODE[0]}:{NODE[1]}>"), src))
                self.to_sbc.append((_reply(msg, 200, "OK", tag, _sdp(NODE[0], 30000),
                                           f"<sip:2000@{NODE[0]}:{NODE[1]}>"), src))
            elif msg.method == "BYE":
                self.to_sbc.append((_reply(msg, 200, "OK", ""), src))

    def _phone(self, msg) -> None:
        if not isinstance(msg, Response):
            return
        src = Flow("udp", PHONE, SBC)
        method = msg.cseq.method
        if method == "INVITE" and msg.status == 200:
            assert NODE[0] not in msg.contacts[0].uri.host, "the node's Contact reached the phone"
            target = str(msg.contacts[0].uri)
            h, p = PHONE
            i = msg.call_id.split("-")[1].split("@")[0]
            common = [f"From: {msg.get('From')}", f"To: {msg.get('To')}", f"Call-ID: {msg.call_id}", "Max-Forwards: 70"]
            self.to_sbc.append((_msg(f"ACK {target} SIP/2.0",
                                     [f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-ack{i};rport", *common, "CSeq: 1 ACK"]), src))
            self.to_sbc.append((_msg(f"BYE {target} SIP/2.0",
                                     [f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-bye{i};rport", *common, "CSeq: 2 BYE"]), src))
        elif method == "INVITE" and msg.status >= 300:
            self.failed += 1
        elif method == "BYE":
            self.done += 1 if msg.status == 200 else 0
            self.failed += 1 if msg.status != 200 else 0


class _LateLoop:
    """The event loop as the endpoint sees it with ``--late-timers``."""

    def __init__(self, loop) -> None:
        self._loop = loop
        self.time = loop.time

    def call_at(self, when, callback, *args):
        return self._loop.call_at(when + LATE, callback, *args)

    def call_later(self, delay, callback, *args):
        return self._loop.call_later(delay + LATE, callback, *args)


def build(peers: _Peers, protection: dict | None = None, media=None):
    cfg = SbcConfig(
        listens=(Listen("udp", *SBC),), nodes=(NodeTarget("n1", NODE[0], NODE[1]),), http_port=0,
        probe_interval=0, keepalive_interval=0, secret=b"bench-secret-bench-secret",
        protection=protection if protection is not None else {"trusted": [PHONE[0]]},
    )
    layer = TransactionLayer()
    endpoint = SipEndpoint(layer)
    endpoint.transports = peers
    call_later = None
    if LATE_TIMERS:
        endpoint._loop = _LateLoop(endpoint._loop)
        call_later = endpoint._loop.call_later
    dispatcher = Dispatcher(cfg.nodes, cfg.mode, cfg.tenants)
    health = Health([n.id for n in cfg.nodes], interval=0, down_after=2, up_after=2)
    guard = load_guard(cfg.protection, lambda: layer.transaction_count)
    sides = SideAddresses({"udp": SBC})
    proxy = Proxy(cfg, endpoint, dispatcher, health, Sealer(cfg.secret), sides, sides, guard=guard, media=media,
                  call_later=call_later)
    endpoint.on_event = proxy.on_event
    return proxy, endpoint


async def main(n: int, burst: int, profile: bool) -> None:
    peers = _Peers()
    proxy, endpoint = build(peers)
    settle_heap()  # as sbc.runtime.serve does
    keeper = None
    if NO_FREEZE:
        gc.set_threshold(10000, 10, 10)
    else:
        heap.settle()
        keeper = heap.HeapKeeper(0.0)
    next_freeze = heap.FREEZE_EVERY
    layer = endpoint.layer
    prof = cProfile.Profile() if profile else None
    cpu = 0.0
    received = 0

    def sbc_work(items: list[tuple[bytes, Flow]]) -> None:
        for data, flow in items:
            try:
                item = parse(data)
            except Exception as e:  # as the socket adapter does
                item = e
            proxy.message_received(item, flow)

    # with --callgrind the parse runs inside operator.call (C, called by nothing else), so
    # callgrind_annotate --inclusive=yes tells the parse (operator_call) from the rest
    parse = functools.partial(operator.call, parse_datagram) if CALLGRIND else parse_datagram

    async def deliver(items: list[tuple[bytes, Flow]]) -> None:
        """Hand the SBC its input as its UDP socket would; count its CPU only."""
        nonlocal cpu, received, next_freeze
        received += len(items)
        c0 = time.thread_time()
        if prof:
            prof.enable()
        if CALLGRIND:
            sys.call_tracing(sbc_work, (items,))
        else:
            sbc_work(items)
        await asyncio.sleep(0)
        if keeper is not None and cpu + time.thread_time() - c0 >= next_freeze:
            keeper.tick(next_freeze, layer.transaction_count)  # sbc.runtime's _gc_loop
            next_freeze += heap.FREEZE_EVERY
        if prof:
            prof.disable()
        cpu += time.thread_time() - c0

    phone = Flow("udp", PHONE, SBC)
    rounds: list[float] = []
    per_round = max(burst, n // ROUNDS)
    for r0 in range(0, n, per_round):
        c_before = cpu
        for start in range(r0, min(n, r0 + per_round), burst):
            await deliver([(_invite(i), phone) for i in range(start, min(n, r0 + per_round, start + burst))])
            peers.react()
            for _ in range(8):  # 100/180/200 → phone; ACK + BYE → node; 200 → phone
                if not peers.to_sbc:
                    break
                batch, peers.to_sbc = peers.to_sbc, []
                await deliver(batch)
                peers.react()
        rounds.append((cpu - c_before) / (min(n, r0 + per_round) - r0))
    rounds.sort()
    print(f"calls: {n}, completed (BYE answered 200): {peers.done}, failed: {peers.failed}, "
          f"messages received by the SBC: {received} ({received / n:.0f} a call)")
    print(f"SBC CPU per call over {len(rounds)} rounds: best {rounds[0] * 1e6:.0f} µs, median "
          f"{rounds[len(rounds) // 2] * 1e6:.0f} µs, mean {cpu / n * 1e6:.0f} µs")
    print(f"SBC CPU per call (INVITE → 100/180/200 → ACK → BYE → 200, no media): median "
          f"{rounds[len(rounds) // 2] * 1e6:.0f} µs => {1 / rounds[len(rounds) // 2]:,.0f} calls/s per core (without sockets)")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
    if peers.done != n:
        raise SystemExit(f"only {peers.done} of {n} calls completed")


if __name__ == "__main__":
    import uvloop

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    uvloop.run(main(int(args[0]) if args else 5000, int(args[1]) if len(args) > 1 else 50, "--profile" in sys.argv))
