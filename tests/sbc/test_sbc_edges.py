"""The SBC against raw sockets on both sides (a fake phone and a fake node), for what only
the bytes show: what the node receives, forged tokens, injected internal headers, the
Guard seam, OPTIONS keep-alives, no live node, malformed input."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from node.sip.message import Request, Response
from node.sip.parser import parse_datagram
from node.transport.sockets import Listen
from sbc.config import NodeTarget, SbcConfig
from sbc.runtime import Sbc
from tests.peers.net import free_port

OUT_IP, IN_IP, NODE_IP = "127.0.0.1", "127.0.0.4", "127.0.0.2"


class Peer:
    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()

    def send(self, data: bytes, to) -> None:
        self.sock.sendto(data, to)

    async def recv(self, timeout: float = 3.0):
        loop = asyncio.get_running_loop()
        data, src = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), timeout)
        return parse_datagram(data), data, src

    async def silent(self, timeout: float = 0.5) -> bool:
        try:
            await self.recv(timeout)
        except asyncio.TimeoutError:
            return True
        return False


def invite(phone: Peer, *, uri="sip:1002@alpha.example", extra: str = "", to_tag: str = "") -> bytes:
    h, p = phone.addr
    return (
        f"INVITE {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.168.7.7:5060;branch=z9hG4bK{os.urandom(5).hex()};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@alpha.example>;tag=ph1\r\n"
        f"To: <sip:1002@alpha.example>{';tag=' + to_tag if to_tag else ''}\r\n"
        f"Call-ID: {os.urandom(6).hex()}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:1001@192.168.7.7:5060>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class RejectingGuard:
    """Stands in for sbc.protection.Guard: rejects one user agent, drops another."""

    def __init__(self) -> None:
        self.seen = 0
        self.observed: list[int] = []

    def check_request(self, msg, source):
        from sbc.protection.verdict import ACCEPT, drop, reject

        self.seen += 1
        ua = msg.get("User-Agent") or ""
        if ua == "reject-me":
            return reject("scanner", 403, "Forbidden", (("X-Reason", "test"),))
        if ua == "drop-me":
            return drop("scanner")
        return ACCEPT

    def observe_response(self, request, response, source):
        self.observed.append(response.status)


@pytest.fixture
async def edge():
    node, phone = Peer(NODE_IP), Peer(OUT_IP)
    guard = RejectingGuard()
    port = free_port(OUT_IP)
    cfg = SbcConfig(
        listens=(Listen("udp", OUT_IP, port),), internal_listens=(Listen("udp", IN_IP, free_port(IN_IP)),),
        nodes=(NodeTarget("n", node.addr[0], node.addr[1]),), http_port=0, probe_interval=0,
        node_timeout=0.5, secret=b"edge-secret-edge-secret", keepalive_interval=0,
    )
    async with Sbc(cfg, guard=guard) as sbc:
        yield sbc, node, phone, guard
    node.sock.close()
    phone.sock.close()


async def test_what_the_node_receives(edge):
    sbc, node, phone, guard = edge
    to = sbc.address("udp")
    phone.send(invite(phone, extra="X-Hive-Source: udp:6.6.6.6:1\r\nX-Hive-Tenant: beta\r\n"), to)
    trying, _, _ = await phone.recv()
    assert trying.status == 100  # the SBC's own server transaction
    req, raw, src = await node.recv()
    assert src == sbc.proxy.inside.bound["udp"]  # from the inside socket
    assert req.get_all("Via") == [req.get("Via")] and req.top_via.host == IN_IP  # one Via: the SBC's
    assert req.get_all("X-Hive-Source") == [f"udp:{phone.addr[0]}:{phone.addr[1]}"]  # the real source, once
    assert b"6.6.6.6" not in raw and b"X-Hive-Tenant" not in raw  # injected internal headers are gone
    contact = req.get("Contact")
    assert contact.startswith(f"<sip:1001@{IN_IP}:") and ";sbcf=" in contact
    assert req.get("Max-Forwards") == "69"
    # the node answers: the phone gets its own Via back and a masqueraded Contact
    resp = Response(486, "Busy Here", [("Via", v) for v in req.get_all("Via")] + [
        ("From", req.get("From")), ("To", req.get("To") + ";tag=n1"), ("Call-ID", req.call_id),
        ("CSeq", req.get("CSeq")), ("Contact", f"<sip:1002@{NODE_IP}:{node.addr[1]}>"), ("X-Hive-Node", "n")])
    node.send(resp.to_bytes(), src)
    ack, _, _ = await node.recv()  # hop-by-hop ACK of the non-2xx from the SBC's client transaction
    assert ack.method == "ACK"
    busy, raw, _ = await phone.recv()
    assert busy.status == 486 and "192.168.7.7:5060" in busy.get("Via") and len(busy.get_all("Via")) == 1
    assert NODE_IP.encode() not in raw and IN_IP.encode() not in raw and b"X-Hive" not in raw
    assert guard.observed == [486]


async def test_forged_or_foreign_tokens_go_nowhere(edge):
    sbc, node, phone, _ = edge
    to = sbc.address("udp")
    phone.send(invite(phone, uri=f"sip:1002@{OUT_IP};sbcn=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", to_tag="x"), to)
    resp = None
    while resp is None or resp.status < 200:
        resp, _, _ = await phone.recv()
    assert resp.status == 404
    assert await node.silent()


async def test_guard_rejects_and_drops_before_anything(edge):
    sbc, node, phone, guard = edge
    to = sbc.address("udp")
    phone.send(invite(phone, extra="User-Agent: reject-me\r\n"), to)
    resp, raw, _ = await phone.recv()
    assert resp.status == 403 and resp.get("X-Reason") == "test"  # not even a 100 first
    phone.send(invite(phone, extra="User-Agent: drop-me\r\n"), to)
    assert await phone.silent()
    assert await node.silent(0.2)
    assert guard.seen == 2


async def test_options_keepalive_is_answered_by_the_sbc(edge):
    sbc, node, phone, _ = edge
    h, p = sbc.address("udp")
    opt = (f"OPTIONS sip:{h}:{p} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKka1;rport\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:1001@alpha.example>;tag=k\r\nTo: <sip:ping@alpha.example>\r\n"
           "Call-ID: ka1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    phone.send(opt, (h, p))
    resp, _, _ = await phone.recv()
    assert resp.status == 200
    assert await node.silent(0.3)


async def test_a_silent_node_is_marked_down_at_once(edge):
    sbc, node, phone, _ = edge
    to = sbc.address("udp")
    phone.send(invite(phone), to)
    assert (await phone.recv())[0].status == 100
    await node.recv()  # the INVITE reaches the node, which says nothing
    await asyncio.sleep(0.8)
    assert not sbc.health.is_up("n")  # silence past node_timeout: down at once
    phone.send(invite(phone), to)  # no live node left: still tried (better than refusing)
    assert (await phone.recv())[0].status == 100
    assert (await node.recv())[0].method == "INVITE"


async def test_malformed_input_is_answered_or_dropped_never_crashes(edge):
    sbc, node, phone, _ = edge
    to = sbc.address("udp")
    phone.send(invite(phone).replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), to)
    data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(phone.sock, 65535), 3)
    assert data.startswith(b"SIP/2.0 400 ")  # answered by the SBC, never forwarded
    phone.send(b"\x00\x01garbage", to)
    phone.send(invite(phone, extra="Max-Forwards: 0\r\n").replace(b"Max-Forwards: 70\r\n", b""), to)
    resp, _, _ = await phone.recv()
    if resp.status == 100:
        resp, _, _ = await phone.recv()
    assert resp.status == 483
    # still serving
    phone.send(invite(phone), to)
    assert (await phone.recv())[0].status == 100
    assert (await node.recv())[0].method == "INVITE"


async def test_ipv6_phone_ipv4_node_dialog_both_ways():
    node = Peer(NODE_IP)
    phone = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    phone.bind(("::1", 0))
    phone.setblocking(False)
    pport = phone.getsockname()[1]
    cfg = SbcConfig(listens=(Listen("udp", "::1", 0),), internal_listens=(Listen("udp", IN_IP, 0),),
                    nodes=(NodeTarget("n", *node.addr),), http_port=0, probe_interval=0,
                    secret=b"edge-secret-edge-secret", keepalive_interval=0)
    loop = asyncio.get_running_loop()

    async def phone_recv() -> bytes:
        while True:
            d, _ = await asyncio.wait_for(loop.sock_recvfrom(phone, 65535), 3)
            if not d.startswith(b"SIP/2.0 100 "):
                return d

    try:
        async with Sbc(cfg) as sbc:
            to = sbc.address("udp")
            phone.sendto((
                f"INVITE sip:1002@alpha.example SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:{pport};branch=z9hG4bKv6;rport\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:1001@alpha.example>;tag=a\r\nTo: <sip:1002@alpha.example>\r\n"
                f"Call-ID: v6\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@[::1]:{pport}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(), to)
            req, _, src = await node.recv()
            assert req.get("X-Hive-Source") == f"udp:[::1]:{pport}"
            ok = Response(200, "OK", [("Via", v) for v in req.get_all("Via")] + [
                ("From", req.get("From")), ("To", req.get("To") + ";tag=n"), ("Call-ID", "v6"), ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:1002@{NODE_IP}:{node.addr[1]}>")])
            node.send(ok.to_bytes(), src)
            resp = parse_datagram(await phone_recv())
            assert resp.status == 200 and resp.get_all("Via") == [f"SIP/2.0/UDP [::1]:{pport};branch=z9hG4bKv6;rport={pport};received=::1"]
            target = resp.contacts[0].uri
            assert target.host == "[::1]" and target.port == to[1]
            # the phone's in-dialog ACK reaches the node, the node's BYE reaches the phone over IPv6
            phone.sendto((
                f"ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:{pport};branch=z9hG4bKv6ack\r\nMax-Forwards: 70\r\n"
                "From: <sip:1001@alpha.example>;tag=a\r\nTo: <sip:1002@alpha.example>;tag=n\r\nCall-ID: v6\r\n"
                "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode(), to)
            ack, _, _ = await node.recv()
            assert ack.method == "ACK" and ack.uri_text == f"sip:1002@{NODE_IP}:{node.addr[1]}"
            bye = Request("BYE", req.contacts[0].uri, [
                ("Via", f"SIP/2.0/UDP {NODE_IP}:{node.addr[1]};branch=z9hG4bKbye"), ("Max-Forwards", "70"),
                ("From", "<sip:1002@alpha.example>;tag=n"), ("To", "<sip:1001@alpha.example>;tag=a"),
                ("Call-ID", "v6"), ("CSeq", "2 BYE")])
            node.send(bye.to_bytes(), src)
            got = parse_datagram(await phone_recv())
            assert got.method == "BYE" and got.uri_text == f"sip:1001@[::1]:{pport}"
            assert got.top_via.host == "[::1]" and len(got.vias) == 1
    finally:
        phone.close()
        node.sock.close()
