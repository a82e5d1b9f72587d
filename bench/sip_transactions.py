"""Micro-benchmark of the transaction layer, printed, not asserted: CPU per transaction and
what a finished transaction leaves in the layer while its lingering timer runs.

Four kinds, each driven to where the layer holds it only to absorb retransmissions:

* ``invite-server``: receive INVITE → 100 → TU sends 180, 200 → receive ACK (Accepted, Timer L)
* ``register-server``: receive REGISTER → TU sends 200 (Completed, Timer J)
* ``invite-client``: send INVITE → receive 100, 180, 200 (Accepted, Timer M)
* ``bye-client``: send BYE → receive 200 (Completed, Timer K)

CPU is this thread's CPU time (not wall time: the machine is shared), best of ROUNDS, for the
layer plus ``make_response`` with messages parsed beforehand (parsing is bench/sip_parse.py's).
"lingering" is measured after a separate run of N transactions in which the test drops every
message and transaction it holds: GC-tracked objects and tracemalloc bytes per transaction
that only the layer keeps alive, then again once every timer has fired (must be 0).

Run: .venv/bin/python bench/sip_transactions.py [N [ROUNDS]]
"""

from __future__ import annotations

import collections
import gc
import sys
import time
import tracemalloc

from node.sip.flow import Flow
from node.sip.ids import new_branch
from node.sip.message import Request, make_response
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer

PHONE = Flow("udp", ("127.0.0.2", 5062), ("127.0.0.1", 5060))
TRUNK = Flow("udp", ("127.0.0.3", 5060), ("127.0.0.1", 5060))
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)
CHUNK = 500


def _wire(start: str, headers: list[str], body: bytes = b"") -> bytes:
    head = "\r\n".join([start, *headers, f"Content-Length: {len(body)}", "", ""])
    return head.encode() + body


def _invite_server(i: int) -> tuple:
    common = [f'From: "Alice" <sip:alice@example.com>;tag=ft{i}', f"Call-ID: bench-{i}@127.0.0.2", "Max-Forwards: 70"]
    inv = _wire("INVITE sip:bob@example.com SIP/2.0", [
        f"Via: SIP/2.0/UDP 127.0.0.2:5062;branch={new_branch()};rport", *common, "To: <sip:bob@example.com>",
        "CSeq: 1 INVITE", "Contact: <sip:alice@127.0.0.2:5062>", "User-Agent: bench", "Content-Type: application/sdp",
    ], SDP)
    ack = _wire("ACK sip:bob@example.com SIP/2.0", [
        f"Via: SIP/2.0/UDP 127.0.0.2:5062;branch={new_branch()};rport", *common,
        "To: <sip:bob@example.com>;tag=bench", "CSeq: 1 ACK",
    ])
    return parse_datagram(inv), parse_datagram(ack)


def _register_server(i: int) -> tuple:
    reg = _wire("REGISTER sip:example.com SIP/2.0", [
        f"Via: SIP/2.0/UDP 127.0.0.2:5062;branch={new_branch()};rport", f"From: <sip:{i}@example.com>;tag=f{i}",
        f"To: <sip:{i}@example.com>", f"Call-ID: reg-{i}@127.0.0.2", "CSeq: 2 REGISTER",
        f"Contact: <sip:{i}@127.0.0.2:5062>", "Max-Forwards: 70", "Expires: 3600",
    ])
    return (parse_datagram(reg),)


def _our_request(method: str, i: int, body: bytes = b"") -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()};rport"), ("Max-Forwards", "70"),
        ("From", f"<sip:node@example.com>;tag=nt{i}"), ("To", "<sip:carol@127.0.0.3>" + (";tag=tt" if method == "BYE" else "")),
        ("Call-ID", f"out-{i}@127.0.0.1"), ("CSeq", f"{2 if method == 'BYE' else 1} {method}"),
    ]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return Request(method, "sip:carol@127.0.0.3", headers, body)


def _answers(req: Request, statuses: tuple[int, ...]) -> list:
    return [parse_datagram(make_response(req, s, to_tag="tt", body=SDP if s == 200 and req.method == "INVITE" else b"").to_bytes())
            for s in statuses]


def _invite_client(i: int) -> tuple:
    req = _our_request("INVITE", i, SDP)
    return (req, *_answers(req, (100, 180, 200)))


def _bye_client(i: int) -> tuple:
    req = _our_request("BYE", i)
    return (req, *_answers(req, (200,)))


def _drive(layer: TransactionLayer, kind: str, msgs: tuple, now: float) -> None:
    if kind == "invite-server":
        inv, ack = msgs
        layer.receive(inv, PHONE, now)
        layer.next_event()
        layer.send_response(make_response(inv, 180, to_tag="bench"), now)
        layer.send_response(make_response(inv, 200, to_tag="bench", body=SDP), now)
        layer.receive(ack, PHONE, now)
        layer.next_event()
    elif kind == "register-server":
        (reg,) = msgs
        layer.receive(reg, PHONE, now)
        layer.next_event()
        layer.send_response(make_response(reg, 200, to_tag="bench", headers=[("Contact", "<sip:x@127.0.0.2:5062>;expires=3600")]), now)
    else:
        req, *answers = msgs
        layer.send_request(req, TRUNK, now)
        for resp in answers:
            layer.receive(resp, TRUNK, now)
            layer.next_event()
    layer.datagrams_to_send()


KINDS = {
    "invite-server": _invite_server,
    "register-server": _register_server,
    "invite-client": _invite_client,
    "bye-client": _bye_client,
}


def cpu_per_transaction(kind: str, n: int) -> float:
    """CPU seconds per transaction (messages built and parsed outside the timed part)."""
    make = KINDS[kind]
    layer = TransactionLayer()
    now = 0.0
    spent = 0.0
    i = 0
    while i < n:
        chunk = [make(j) for j in range(i, min(n, i + CHUNK))]
        c0 = time.thread_time()
        for msgs in chunk:
            _drive(layer, kind, msgs, now)
            now += 0.001  # 1000 transactions/s of virtual time: Timer J/L/M still hold 32,000
            at = layer.get_timer()
            if at is not None and at <= now:
                layer.handle_timer(now)
        spent += time.thread_time() - c0
        i += len(chunk)
    return spent / n


def lingering(kind: str, n: int) -> tuple[float, float, float, list[tuple[str, float]]]:
    """(objects, bytes) per transaction the layer keeps while it lingers, objects left once
    every timer fired, and the commonest types of what lingers."""
    make = KINDS[kind]
    layer = TransactionLayer()
    gc.collect()
    before = collections.Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        _drive(layer, kind, make(i), 0.0)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    after = collections.Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.stop()
    grown = after - before
    layer.handle_timer(1000.0)
    gc.collect()
    left = collections.Counter(type(o).__name__ for o in gc.get_objects()) - before
    left.pop("list", None)  # the Counter's own bookkeeping
    return (sum(grown.values()) / n, held / n, sum(left.values()) / n,
            [(t, c / n) for t, c in grown.most_common(6)])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for kind in KINDS:
        best = min(cpu_per_transaction(kind, n) for _ in range(rounds))
        objs, held, left, top = lingering(kind, min(n, 10_000))
        kinds = ", ".join(f"{t} {c:.1f}" for t, c in top)
        print(f"{kind:16s} {best * 1e6:6.1f} µs CPU each (best of {rounds}); lingering: {objs:4.1f} objects, "
              f"{held:5,.0f} B each ({kinds}); after the timers: {left:.1f}")


if __name__ == "__main__":
    main()
