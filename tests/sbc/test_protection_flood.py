"""The Guard on real packets from many flooding sources at once (plus garbage), in front of
a minimal UDP responder that answers like a node does (401 challenge without credentials,
one 403 for a wrong password and an unknown user alike, 200 when right). The real SBC
with sipvicious and SIPp is in test_protection_sbc.py; this one can use many source
addresses and unparseable bytes cheaply.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from node.sip.auth import DigestServer, Verdict as AuthVerdict
from node.sip.errors import SipError
from node.sip.message import Request, make_response
from node.sip.parser import parse_datagram
from sbc.protection import Guard, GuardConfig
from tests.peers.net import LOOPBACK, free_port

pytestmark = pytest.mark.interop

REALM = "pbx.test"
USERS = {"100": "Tr0ub4dor&3-horse"}  # the only extension that exists


class GuardedNode(asyncio.DatagramProtocol):
    """Guard, then a registrar-like answer. Counts what reached the 'node'."""

    def __init__(self, guard: Guard, users: dict[str, str] = USERS) -> None:
        self.guard = guard
        self.users = users
        self.digest = DigestServer(b"0123456789abcdef0123", algorithms=("MD5",))
        self.reached = 0
        self.sources: set[str] = set()
        self.accepted_auth: list[str] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.sources.add(addr[0])
        try:
            msg = parse_datagram(data)
        except SipError as e:
            self.guard.check_request(e, addr)
            return
        verdict = self.guard.check_request(msg, addr)
        if not isinstance(msg, Request) or msg.method == "ACK":
            return
        if verdict.dropped:
            return
        if verdict.rejected:
            self.transport.sendto(make_response(msg, verdict.status, verdict.reason, to_tag="sbc",
                                                headers=list(verdict.headers)).to_bytes(), addr)
            return
        self.reached += 1
        resp = self.answer(msg)
        if msg.method in ("INVITE", "REGISTER"):
            self.guard.observe_response(msg, resp, addr)
        self.transport.sendto(resp.to_bytes(), addr)

    def answer(self, req: Request):
        if req.method not in ("REGISTER", "INVITE"):
            return make_response(req, 200 if req.method == "OPTIONS" else 405, to_tag="n1")
        auth = req.get("Authorization")
        if auth is None:
            hdrs = [("WWW-Authenticate", v) for v in self.digest.challenge(REALM, time.time())]
            return make_response(req, 401, to_tag="n1", headers=hdrs)
        try:
            user = req.from_.uri.user or ""
        except SipError:
            user = ""
        # an unknown user is checked like a wrong password (password None): same 403
        verdict = self.digest.verify(auth, req.method, REALM, self.users.get(user), time.time())
        if verdict is AuthVerdict.OK:
            self.accepted_auth.append(user)
            return make_response(req, 200 if req.method == "REGISTER" else 480, to_tag="n1")
        if verdict in (AuthVerdict.STALE, AuthVerdict.BAD_NONCE):
            hdrs = [("WWW-Authenticate", v) for v in self.digest.challenge(REALM, time.time(), verdict is AuthVerdict.STALE)]
            return make_response(req, 401, to_tag="n1", headers=hdrs)
        return make_response(req, 403, to_tag="n1")


async def serve(guard: Guard):
    port = free_port()
    node = GuardedNode(guard)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: node, local_addr=(LOOPBACK, port))
    return node, port, transport


def options(i: int, src: str, ua: str = "FloodPhone/1.0") -> bytes:
    return (f"OPTIONS sip:100@{LOOPBACK} SIP/2.0\r\nVia: SIP/2.0/UDP {src}:5060;branch=z9hG4bK-f{i}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:x@{src}>;tag=f{i}\r\nTo: <sip:100@{LOOPBACK}>\r\n"
            f"Call-ID: flood-{i}@{src}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n").encode()


async def test_flood_from_many_sources_while_a_phone_still_gets_through() -> None:
    """10 flooding addresses at about 10x the per-source capacity each, plus garbage, for
    about 1.5 s; a well-behaved phone keeps getting every answer."""
    cfg = GuardConfig(window=1.0, density=50, malformed_budget=5)
    guard = Guard(cfg)
    node, port, transport = await serve(guard)
    loop = asyncio.get_running_loop()

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.answers = 0

        def datagram_received(self, data: bytes, addr) -> None:
            self.answers += 1

    flooders = []
    for k in range(10):
        src = f"127.0.1.{k + 1}"
        t, p = await loop.create_datagram_endpoint(Client, local_addr=(src, 0), remote_addr=(LOOPBACK, port))
        flooders.append((src, t, p))
    phone_t, phone = await loop.create_datagram_endpoint(Client, local_addr=("127.0.2.1", 0),
                                                         remote_addr=(LOOPBACK, port))
    try:
        sent = 0
        phone_sent = 0
        end = loop.time() + 1.5
        i = 0
        while loop.time() < end:
            for src, t, _ in flooders:  # ~500 requests/s per source: 10x its capacity (50/s)
                t.sendto(options(i, src))
                if i % 10 == 0:
                    t.sendto(b"\x00garbage\r\n\r\n")
                sent += 1
            if i % 10 == 0:  # the phone: ~50 requests over the run, within its allowance
                phone_t.sendto(options(i, "127.0.2.1", "Yealink"))
                phone_sent += 1
            i += 1
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)
        answered_flood = sum(p.answers for _, _, p in flooders)
        assert sent >= 2000, sent  # the flood really happened
        assert phone.answers == phone_sent, (phone.answers, phone_sent)
        assert all(guard.banned(src) for src, _, _ in flooders)
        assert not guard.banned("127.0.2.1")
        # each flooder got at most its first window's worth of answers before the ban
        assert answered_flood <= 10 * cfg.density, answered_flood
        assert node.reached <= 10 * cfg.density + phone_sent
    finally:
        for _, t, _ in flooders:
            t.close()
        phone_t.close()
        transport.close()
