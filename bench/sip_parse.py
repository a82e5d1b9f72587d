"""Micro-benchmark of the SIP parser's hot path, printed, not asserted.

``parse_datagram`` on a typical INVITE with SDP and a typical REGISTER, alone and followed
by the typed views a B2BUA reads on every message (``call_id``, ``cseq``, ``top_via``,
``from_.tag``, ``to.tag``). Two streams per message type:

* ``fresh``: every message has its own Call-ID, branch, From tag and CSeq number, as the
  first message of each new call from one phone has (the parser's memos of checked
  prefixes — "display <uri>", "SIP/2.0/UDP host:port" — still hit);
* ``cold``: on top of that every message comes from another phone to another user (new
  From/To/Contact URIs, Request-URI and Via host): no memo ever hits, the worst case;
* ``repeat``: the same bytes again and again, as retransmissions, and in part a
  transaction's responses and a dialog's requests, are.

Each figure is the best of several rounds (other processes on the machine only ever make
a round slower), in µs per message and messages per second.

Run: .venv/bin/python bench/sip_parse.py [--n 20000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import time

from node.sip.parser import parse_datagram

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)


def _peer(i: int, cold: bool) -> tuple[str, str, str]:
    """(caller, callee, caller's address): one phone calling one user, or a new pair each time."""
    if not cold:
        return "2001", "2002", "192.0.2.10"
    return f"{10000 + i}", f"{20000 + i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def invite(i: int, cold: bool = False) -> bytes:
    a, b, ip = _peer(i, cold)
    head = (
        f"INVITE sip:{b}@pbx.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{i:08x}a7d;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:{a}@pbx.example.com>;tag={i:08x}9f3\r\n"
        f"To: <sip:{b}@pbx.example.com>\r\n"
        f"Call-ID: {i:08x}66710b3c@{ip}\r\n"
        f"CSeq: {1000 + i % 90000} INVITE\r\n"
        f"Contact: <sip:{a}@{ip}:5060;transport=udp>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY\r\n"
        "Supported: replaces, timer\r\n"
        "User-Agent: Softphone 1.0\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def register(i: int, cold: bool = False) -> bytes:
    a, _, ip = _peer(i, cold)
    return (
        "REGISTER sip:pbx.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{i:08x}c1;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{a}@pbx.example.com>;tag={i:08x}4c2\r\n"
        f"To: <sip:{a}@pbx.example.com>\r\n"
        f"Call-ID: {i:08x}reg@{ip}\r\n"
        f"CSeq: {1 + i % 90000} REGISTER\r\n"
        f"Contact: <sip:{a}@{ip}:5060;transport=udp>;expires=3600\r\n"
        "Expires: 3600\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY\r\n"
        "User-Agent: Softphone 1.0\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _round(stream: list[bytes], views: bool) -> float:
    t0 = time.perf_counter()
    if views:
        for data in stream:
            m = parse_datagram(data)
            m.call_id
            m.cseq
            m.top_via
            m.from_.tag
            m.to.tag
    else:
        for data in stream:
            parse_datagram(data)
    return (time.perf_counter() - t0) / len(stream)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="messages per round")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"parse_datagram, best of {args.rounds} rounds of {args.n} messages (load average {load:.2f})")
    print(f"{'message':9} {'stream':7} {'views':6} {'µs/msg':>8} {'msg/s':>10}")
    for name, make in (("INVITE", invite), ("REGISTER", register)):
        fresh = [make(i) for i in range(args.n)]
        cold = [make(i, True) for i in range(args.n)]
        repeat = [fresh[0]] * args.n
        for sname, stream in (("fresh", fresh), ("cold", cold), ("repeat", repeat)):
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.rounds):
                for views in (False, True):  # interleaved: noise hits both alike
                    best[views] = min(best[views], _round(stream, views))
            for views in (False, True):
                us = best[views] * 1e6
                print(f"{name:9} {sname:7} {'yes' if views else 'no':6} {us:8.2f} {1e6 / us:10,.0f}")
    print(f"({len(invite(0))}-byte INVITE with {len(SDP)}-byte SDP, {len(register(0))}-byte REGISTER)")


if __name__ == "__main__":
    main()
