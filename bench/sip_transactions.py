"""Micro-benchmark of the transaction layer's hot path: INVITE server transactions
(receive INVITE → 100 → TU sends 180 → TU sends 200 → receive ACK), printed, not asserted.

Run: .venv/bin/python bench/sip_transactions.py [N]
"""

from __future__ import annotations

import sys
import time

from node.sip.flow import Flow
from node.sip.ids import new_branch
from node.sip.message import make_response
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer

FLOW = Flow("udp", ("127.0.0.2", 5062), ("127.0.0.1", 5060))
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def invite_bytes(i: int) -> tuple[bytes, bytes]:
    branch = new_branch()
    common = (
        f"From: \"Alice\" <sip:alice@example.com>;tag=ft{i}\r\n"
        f"Call-ID: bench-{i}@127.0.0.2\r\n"
        "Max-Forwards: 70\r\n"
    )
    inv = (
        "INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:5062;branch={branch};rport\r\n"
        + common
        + "To: <sip:bob@example.com>\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.2:5062>\r\nUser-Agent: bench\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
    ).encode() + SDP
    ack = (
        "ACK sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:5062;branch={new_branch()};rport\r\n"
        + common
        + "To: <sip:bob@example.com>;tag=bench\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    return inv, ack


def run(n: int, parse: bool) -> tuple[float, float]:
    wires = [invite_bytes(i) for i in range(n)]
    pre = None if parse else [(parse_datagram(a), parse_datagram(b)) for a, b in wires]
    layer = TransactionLayer()
    now = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        if pre is None:
            inv = parse_datagram(wires[i][0])
        else:
            inv = pre[i][0]
        layer.receive(inv, FLOW, now)
        ev = layer.next_event()
        txn = ev.transaction  # type: ignore[union-attr]
        layer.send_response(make_response(inv, 180, to_tag="bench"), now)
        layer.send_response(make_response(inv, 200, to_tag="bench", body=SDP), now)
        ack = parse_datagram(wires[i][1]) if pre is None else pre[i][1]
        layer.receive(ack, FLOW, now)
        layer.next_event()
        layer.datagrams_to_send()
        if layer.get_timer() is not None and layer.get_timer() <= now:  # pragma: no cover
            layer.handle_timer(now)
        now += 0.001  # 1000 calls/s of virtual time
        assert txn is not None
    elapsed = time.perf_counter() - t0
    live = layer.transaction_count
    t1 = time.perf_counter()
    layer.handle_timer(now + 1000.0)  # Timer L of all of them
    cleanup = time.perf_counter() - t1
    assert layer.transaction_count == 0, live
    return elapsed, cleanup


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    for parse in (False, True):
        elapsed, cleanup = run(n, parse)
        what = "parse + layer + make_response" if parse else "layer + make_response (pre-parsed)"
        print(
            f"{what:38s}: {n / elapsed:9,.0f} INVITE server transactions/s "
            f"({elapsed / n * 1e6:6.1f} µs each; Timer L cleanup {cleanup / n * 1e6:4.2f} µs each)"
        )


if __name__ == "__main__":
    main()
