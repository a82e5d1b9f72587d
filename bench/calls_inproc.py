"""In-process benchmark of the call path: a carrier's INVITE to a DID → the node's B2BUA rings the
registered extension → 180, 200, ACK, BYE both ways, with media anchored (real RTP relay
sockets). The phones are scripted in this process and the SIP sockets replaced by a queue;
figures are CPU seconds of the node's work only (thread time around its code, not wall time),
so they hold on a busy machine. The SIPp figure in bench/README.md adds the sockets.

Calls arrive in bursts (default 50), as from a loaded socket. It also prints the garbage
collector's share of that CPU and how many relay sessions took port pairs kept bound from
earlier calls (none in the first second: the relay's quarantine).

Run: .venv/bin/python bench/calls_inproc.py [N [BURST]] [--profile] [--memory]
(with --profile, BENCH_SORT=cumulative and BENCH_TOP=60 change the listing of cProfile's stats.)

--memory adds two figures, with T1 = 10 ms for the node's transactions and calls so that what
an ended call leaves behind is released during the run (80 T1 later) as on a long-running node:
objects the cyclic collector had to free per call (0 when every ended call is freed by
reference counting), and tracemalloc's bytes per call in progress (INVITE, 180, 200, ACK done,
BYE not yet sent: the issue's target is at most 64 KiB). Its CPU figures are not comparable
with a run without --memory (the short T1 adds retransmissions).
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

from node.embedded import open_embedded
from node.model import Binding
from node.pbx.authn import Authenticator
from node.pbx.media import MediaAnchors
from node.pbx.service import PbxService
from node.rtp_engine.relay import PortPool, RtpRelay
from node.runtime.config import NodeConfig
from node.sip.flow import Flow
from node.sip.message import Request, Response
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer
from node.transport.endpoint import SipEndpoint

NODE = ("127.0.0.1", 5060)
CARRIER = ("127.0.0.2", 5061)
PHONE = ("127.0.0.1", 15090)
DOMAIN = "bench.example"
DID, CALLEE = "15550001", "2000"


def _sdp(host: str, port: int) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()


def _msg(start: str, headers: list[str], body: bytes = b"") -> bytes:
    ct = ["Content-Type: application/sdp"] if body else []
    return ("\r\n".join([start, *headers, *ct, f"Content-Length: {len(body)}", "", ""])).encode() + body


def _invite(i: int) -> bytes:
    h, p = CARRIER
    return _msg(
        f"INVITE sip:{DID}@{NODE[0]}:{NODE[1]} SIP/2.0",
        [
            f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-inv{i};rport",
            f'From: "Bench" <sip:15557770000@{h}:{p}>;tag=c{i}',
            f"To: <sip:{DID}@{NODE[0]}:{NODE[1]}>",
            f"Call-ID: call-{i}@{h}",
            "CSeq: 1 INVITE",
            f"Contact: <sip:15557770000@{h}:{p}>",
            "Max-Forwards: 70",
        ],
        _sdp(h, 40000 + 2 * (i % 1000)),
    )


def _reply(req: Request, status: int, reason: str, to_tag: str, body: bytes = b"", contact: str = "") -> bytes:
    heads = [f"Via: {v}" for v in req.get_all("Via")]
    heads += [
        f"From: {req.get('From')}",
        f"To: {req.get('To')};tag={to_tag}" if ";tag=" not in req.get("To") else f"To: {req.get('To')}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.get('CSeq')}",
    ]
    if contact:
        heads.append(f"Contact: {contact}")
    return _msg(f"SIP/2.0 {status} {reason}", heads, body)


class _Peers:
    """The carrier and the phone: answer what the node sends, outside the timed sections."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, Flow]] = []
        self.to_node: list[tuple[bytes, Flow]] = []
        self.answered: dict[str, Response] = {}  # carrier call-id -> the node's 200
        self.phone_dialogs: dict[str, Request] = {}  # call-id at the phone -> the node's INVITE
        self.held: dict[str, Response] = {}  # calls acked, not hung up yet
        self.done = 0

    def send(self, data: bytes, flow: Flow) -> None:
        self.outbox.append((data, flow))

    def bound(self, *a):
        return None

    def flow_to(self, transport: str, host: str, port: int) -> Flow:
        return Flow(transport, (host, port), NODE)

    def react(self) -> None:
        for data, flow in self.outbox:
            msg = parse_datagram(data)
            if os.environ.get("BENCH_TRACE"):
                print(flow.remote, data.split(b"\r\n", 1)[0])
            if flow.remote == PHONE:
                self._phone(msg, flow)
            else:
                self._carrier(msg, flow)
        self.outbox.clear()

    def _phone(self, msg, flow: Flow) -> None:
        if isinstance(msg, Request):
            if msg.method == "INVITE":
                tag = "p" + msg.call_id[-12:]
                self.to_node.append((_reply(msg, 180, "Ringing", tag), flow))
                self.to_node.append(
                    (_reply(msg, 200, "OK", tag, _sdp(*PHONE[:1], 50000), f"<sip:{CALLEE}@{PHONE[0]}:{PHONE[1]}>"), flow)
                )
            elif msg.method == "BYE":
                self.to_node.append((_reply(msg, 200, "OK", ""), flow))
            # ACK: nothing to do

    def _carrier(self, msg, flow: Flow) -> None:
        if isinstance(msg, Response) and msg.cseq.method == "INVITE" and msg.status == 200:
            self.answered[msg.call_id] = msg
        elif isinstance(msg, Response) and msg.cseq.method == "BYE":
            self.done += 1

    def ack_and_bye(self, flow_of, bye: bool = True) -> None:
        """ACK each answered call; with ``bye`` False the calls stay up (``held``)."""
        for call_id, resp in self.answered.items():
            i = call_id.split("-")[1].split("@")[0]
            h, p = CARRIER
            common = [
                f"From: {resp.get('From')}", f"To: {resp.get('To')}", f"Call-ID: {call_id}", "Max-Forwards: 70",
            ]
            self.to_node.append((_msg(
                f"ACK {resp.contacts[0].uri} SIP/2.0",
                [f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-ack{i};rport", *common, "CSeq: 1 ACK"],
            ), flow_of()))
            if not bye:
                self.held[call_id] = resp
                continue
            self.to_node.append((_msg(
                f"BYE {resp.contacts[0].uri} SIP/2.0",
                [f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-bye{i};rport", *common, "CSeq: 2 BYE"],
            ), flow_of()))
        self.answered.clear()

    def bye_held(self, flow_of) -> None:
        self.answered, self.held = self.held, {}
        acks = len(self.to_node)
        self.ack_and_bye(flow_of)
        del self.to_node[acks::2]  # their ACKs were sent already: only the BYEs


async def main(n: int, burst: int, profile: bool, memory: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        backend = open_embedded(tmp)
        t = await backend.config.create_tenant("bench", DOMAIN)
        await backend.config.create_extension(t.id, CALLEE, "bench-2000-pw")
        await backend.config.create_trunk(t.id, "carrier", CARRIER[0], port=CARRIER[1])
        await backend.config.create_did(t.id, DID, "extension", CALLEE)
        await backend.locations.save(Binding(
            tenant_id=t.id, extension=CALLEE, contact=f"sip:{CALLEE}@{PHONE[0]}:{PHONE[1]}",
            source_host=PHONE[0], source_port=PHONE[1], transport="udp", expires_at=time.time() + 3600,
            call_id="reg", cseq=1,
        ))
        cfg = NodeConfig(data_dir=tmp, nat_ping_interval=0)
        t1 = 0.01 if memory else 0.5
        layer = TransactionLayer(t1=t1)
        endpoint = SipEndpoint(layer, advertise_address=NODE[0])
        peers = _Peers()
        endpoint.transports = peers
        relay = RtpRelay(PortPool(16000, 31999), "127.0.0.1")  # as bench/sipp_load.py's node
        anchors = MediaAnchors(relay, NODE[0])
        service = PbxService(
            cfg, endpoint, backend.config, backend.locations, backend.cdrs,
            Authenticator(os.urandom(32)), anchors.open, t1=t1,
        )
        endpoint.on_event = service.on_event
        gc.collect()
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(10000, 10, 10)  # as node.runtime.app does
        prof = cProfile.Profile() if profile else None
        cpu = 0.0
        in_node = False
        gc_cpu, gc_runs, gc_started = 0.0, [0, 0, 0], 0.0
        collected = [0]

        def gc_clock(phase: str, info: dict) -> None:
            # the collector's share of the node's CPU (it runs inside whatever allocates)
            nonlocal gc_cpu, gc_started
            if phase == "stop":
                collected[0] += info["collected"]
            if not in_node:
                return
            if phase == "start":
                gc_started = time.thread_time()
            else:
                gc_cpu += time.thread_time() - gc_started
                gc_runs[info["generation"]] += 1

        gc.callbacks.append(gc_clock)

        def carrier_flow() -> Flow:
            return Flow("udp", CARRIER, NODE)

        async def deliver(items: list[tuple[bytes, Flow]]) -> None:
            """Hand the node its input, let it run until it is quiet; count its CPU only."""
            nonlocal cpu, in_node
            in_node = True
            c0 = time.thread_time()
            if prof:
                prof.enable()
            for data, flow in items:
                endpoint.message_received(parse_datagram(data), flow)
            quiet, seen = 0, len(peers.outbox)
            while quiet < 20:  # until the node has sent nothing for 20 loop turns (sockets open meanwhile)
                await asyncio.sleep(0)
                quiet = quiet + 1 if len(peers.outbox) == seen else 0
                seen = len(peers.outbox)
            if prof:
                prof.disable()
            cpu += time.thread_time() - c0
            in_node = False

        async def calls(first: int, last: int, bye: bool = True) -> None:
            for start in range(first, last, burst):
                await deliver([(_invite(i), carrier_flow()) for i in range(start, min(last, start + burst))])
                peers.react()  # phone rings and answers
                for _ in range(8):  # 180/200 → carrier; then ACK + BYE → phone; 200 for BYE
                    if not peers.to_node:
                        peers.ack_and_bye(carrier_flow, bye)
                    if not peers.to_node:
                        break
                    batch, peers.to_node = peers.to_node, []
                    await deliver(batch)
                    peers.react()
                await service.cdr_recorder.flush() if hasattr(service.cdr_recorder, "flush") else None

        await calls(0, n)
        for _ in range(20):
            await asyncio.sleep(0.01)
        cdrs = await backend.cdrs.list(t.id, limit=n + 10)
        result = {"us": cpu / n * 1e6, "gc_us": gc_cpu / n * 1e6}
        answered = sum(1 for c in cdrs if c.answer is not None)
        print(f"calls: {n}, completed (BYE answered): {peers.done}, CDRs: {len(cdrs)}, answered: {answered}, "
              f"still active: {len(service.calls)}")
        print(f"node CPU per call (INVITE → 180 → 200 → ACK → BYE, media anchored): {cpu / n * 1e6:.0f} µs "
              f"=> {n / cpu:,.0f} calls/s per core (without sockets)")
        print(f"of which the garbage collector: {gc_cpu / n * 1e6:.0f} µs per call "
              f"(collections of generation 0/1/2: {gc_runs[0]}/{gc_runs[1]}/{gc_runs[2]})")
        if memory:
            await asyncio.sleep(100 * t1)  # the ended calls' release (80 T1) and transactions' timers
            collected[0] += gc.collect()
            print(f"cyclic garbage freed by the collector: {collected[0] / n:.2f} objects per call "
                  f"(T1 = {t1 * 1000:.0f} ms: ended calls are released during the run)")
            import tracemalloc

            held = min(n, 1000)
            await calls(n, n + held)  # warm-up as many calls (the relay then has idle pairs)
            await asyncio.sleep(100 * t1)
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            await calls(n + held, n + 2 * held, bye=False)
            gc.collect()
            per_call = (tracemalloc.get_traced_memory()[0] - base) / held
            tracemalloc.stop()
            print(f"memory per call in progress (tracemalloc, {held} calls up): {per_call / 1024:.1f} KiB")
            peers.bye_held(carrier_flow)
            while peers.to_node:
                batch, peers.to_node = peers.to_node, []
                await deliver(batch)
                peers.react()
            await asyncio.sleep(0.2)  # the CDR recorder's batches
        gc.callbacks.remove(gc_clock)
        if hasattr(relay, "pairs_reused"):
            print(f"relay sessions: {relay.sessions_opened}, with both port pairs reused (bound in an earlier "
                  f"call, idle >= {relay.reuse_after} s): {relay.pairs_reused}, idle pairs kept at most: {relay.max_idle}")
        backend.close()
        relay.close() if hasattr(relay, "close") else None
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if prof:
        pstats.Stats(prof).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_TOP", "30")))
    return result


if __name__ == "__main__":
    import resource

    import uvloop

    try:  # as bench/sipp_load.py: room for the relay's sockets (it keeps idle ones by this limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (OSError, ValueError):
        pass

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    uvloop.run(main(int(args[0]) if args else 5000, int(args[1]) if len(args) > 1 else 50,
                    "--profile" in sys.argv, "--memory" in sys.argv))
