"""Micro-benchmark of the SIP parser's hot path, printed, not asserted.

``parse_datagram`` on the messages of the hot paths — a REGISTER, the digest REGISTER with
Authorization, its 401 and 200; an INVITE with SDP, its 100, 180 and 200 (with SDP), the ACK,
a BYE and its 200 — alone and followed by the typed views read on every message: a request's
``call_id``, ``cseq``, ``top_via``, ``from_.tag``, ``to.tag``; a response's ``cseq`` and
``to.tag`` (the transaction layer matches a response on its Via's text). Streams:

* ``fresh``: every message has its own Call-ID, branch, From tag and CSeq number, as the
  first message of each new call from one phone has (the parser's memos of checked
  prefixes — "display <uri>", "SIP/2.0/UDP host:port" — still hit);
* ``cold``: on top of that every message comes from another phone to another user (new
  From/To/Contact URIs, Request-URI and Via host): no memo ever hits, the worst case;
* ``repeat``: the same bytes again and again, as retransmissions, and in part a
  transaction's responses and a dialog's requests, are.

(``cold`` only for the INVITE and the REGISTER.) Each figure is the best of several rounds of
this thread's CPU time (other processes on the machine only ever make a round slower), in µs
per message and messages per second.

Run: .venv/bin/python bench/sip_parse.py [--n 10000] [--rounds 9] [--only INVITE,ACK]
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


AUTH = (
    'Digest username="{a}", realm="pbx.example.com", nonce="AAAAAGsVqp4txfaloObZ2ODbHD4yNaE2", '
    'uri="sip:pbx.example.com", response="{i:032x}", algorithm=MD5, cnonce="{i:08x}", qop=auth, nc=00000001'
)


def register_auth(i: int, cold: bool = False) -> bytes:
    a, _, _ = _peer(i, cold)
    return register(i, cold).replace(
        b"Content-Length: 0", f"Authorization: {AUTH.format(a=a, i=i)}\r\nContent-Length: 0".encode()
    )


def _response(req: bytes, status: str, to_tag: str, extra: str = "", body: bytes = b"") -> bytes:
    """The UAS's answer: the request's Via (with received/rport filled), From, Call-ID, CSeq."""
    lines = req[: req.find(b"\r\n\r\n")].decode().split("\r\n")
    keep = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        keep[name] = value
    via = keep["Via"].replace(";rport", ";rport=5060;received=192.0.2.99")
    head = (
        f"SIP/2.0 {status}\r\nVia: {via}\r\nFrom: {keep['From']}\r\nTo: {keep['To']};tag={to_tag}\r\n"
        f"Call-ID: {keep['Call-ID']}\r\nCSeq: {keep['CSeq']}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def r401(i: int) -> bytes:
    www = 'WWW-Authenticate: Digest realm="pbx.example.com", nonce="AAAAAGsVqp4txfaloObZ2ODbHD4yNaE2", algorithm=MD5, qop="auth"\r\n'
    return _response(register(i), "401 Unauthorized", f"{i:08x}b1", www)


def r200_register(i: int) -> bytes:
    contact = f"Contact: <sip:2001@192.0.2.10:5060;transport=udp>;expires=3600\r\nDate: Sun, 06 Dec 2026 18:34:06 GMT\r\n"
    return _response(register_auth(i), "200 OK", f"{i:08x}b2", contact)


def r100(i: int) -> bytes:
    req = invite(i)
    return _response(req, "100 Trying", "x").replace(b";tag=x", b"")


def r180(i: int) -> bytes:
    return _response(invite(i), "180 Ringing", f"{i:08x}c3", "Contact: <sip:2002@192.0.2.20:5060>\r\n")


def r200_invite(i: int) -> bytes:
    extra = "Contact: <sip:2002@192.0.2.20:5060>\r\nContent-Type: application/sdp\r\n"
    return _response(invite(i), "200 OK", f"{i:08x}c3", extra, SDP.replace(b"192.0.2.10", b"192.0.2.20"))


def _in_dialog(i: int, method: str, cseq: int) -> bytes:
    return (
        f"{method} sip:2002@192.0.2.20:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{i:08x}{method[0]}d;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:2001@pbx.example.com>;tag={i:08x}9f3\r\n"
        f"To: <sip:2002@pbx.example.com>;tag={i:08x}c3\r\n"
        f"Call-ID: {i:08x}66710b3c@192.0.2.10\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def ack(i: int) -> bytes:
    return _in_dialog(i, "ACK", 1000 + i % 90000)


def bye(i: int) -> bytes:
    return _in_dialog(i, "BYE", 1001 + i % 90000)


def r200_bye(i: int) -> bytes:
    return _response(bye(i), "200 OK", "unused").replace(f";tag={i:08x}c3;tag=unused".encode(), f";tag={i:08x}c3".encode())


SHAPES = {
    "INVITE": invite, "100": r100, "180": r180, "200/INV": r200_invite, "ACK": ack, "BYE": bye,
    "200/BYE": r200_bye, "REGISTER": register, "REG+auth": register_auth, "401": r401, "200/REG": r200_register,
}
_COLD = {"INVITE", "REGISTER"}


def _round(stream: list[bytes], views: bool) -> float:
    t0 = time.thread_time()
    if views:
        m = parse_datagram(stream[0])
        if hasattr(m, "method"):
            for data in stream:
                m = parse_datagram(data)
                m.call_id
                m.cseq
                m.top_via
                m.from_.tag
                m.to.tag
        else:
            for data in stream:
                m = parse_datagram(data)
                m.cseq
                m.to.tag
    else:
        for data in stream:
            parse_datagram(data)
    return (time.thread_time() - t0) / len(stream)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="messages per round")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--only", default="", help="comma-separated shapes (default: all of " + ", ".join(SHAPES) + ")")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s] or list(SHAPES)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"parse_datagram, CPU time, best of {args.rounds} rounds of {args.n} messages (load average {load:.2f})")
    print(f"{'message':9} {'stream':7} {'views':6} {'µs/msg':>8} {'msg/s':>10}")
    for name in only:
        make = SHAPES[name]
        fresh = [make(i) for i in range(args.n)]
        repeat = [fresh[0]] * args.n
        streams = [("fresh", fresh), ("repeat", repeat)]
        if name in _COLD:
            streams.insert(1, ("cold", [make(i, True) for i in range(args.n)]))  # type: ignore[call-arg]
        for sname, stream in streams:
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
