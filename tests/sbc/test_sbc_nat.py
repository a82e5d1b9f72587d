"""A phone behind NAT, as the SBC sees it: a raw UDP socket whose Via and Contact name a
private address nobody can reach. Registration, then a call from the node to it must come
back over the socket it registered from, through the SBC, with the phone's own Contact as
Request-URI; the SBC keeps the NAT binding open with CRLF keep-alives."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from node.sip.auth import answer_challenge
from node.sip.message import Request, Response
from node.sip.parser import parse_datagram
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, PASSWORDS, stack, wait_for
from tests.sbc.test_sbc_calls import assert_hidden

pytestmark = pytest.mark.interop

PRIVATE = "10.9.9.9:5060"


class RawPhone:
    def __init__(self, sbc_addr: tuple[str, int]) -> None:
        self.sbc = sbc_addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.sbc)

    async def recv(self, timeout: float = 5.0, want=lambda m: True):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), max(0.01, deadline - loop.time()))
            self.seen.append(data)
            if data.strip(b"\r\n") == b"":
                if want(None):
                    return None
                continue
            msg = parse_datagram(data)
            if want(msg):
                return msg

    def register(self, cseq: int, auth: str | None = None, call_id: str = "nat-reg-1") -> bytes:
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP {PRIVATE};branch=z9hG4bK{os.urandom(6).hex()};rport",
            "Max-Forwards: 70",
            f"From: <sip:1002@{DOMAIN}>;tag=natphone",
            f"To: <sip:1002@{DOMAIN}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:1002@{PRIVATE}>",
            "Expires: 300",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def close(self) -> None:
        self.sock.close()


class _Captured:
    """Adapts raw datagrams to what assert_hidden reads."""

    def __init__(self, data: bytes) -> None:
        self.text = data.decode(errors="replace").replace("\r\n", "\n")


async def _register(phone: RawPhone) -> Response:
    phone.send(phone.register(1))
    ch = await phone.recv(want=lambda m: isinstance(m, Response) and m.status >= 200)
    assert ch.status == 401
    auth = answer_challenge(ch.get("WWW-Authenticate"), "REGISTER", f"sip:{DOMAIN}", "1002",
                            PASSWORDS["1002"], os.urandom(8).hex())
    phone.send(phone.register(2, auth))
    return await phone.recv(want=lambda m: isinstance(m, Response) and m.status >= 200)


async def test_phone_behind_nat_registers_and_is_called_over_its_flow(tmp_path):
    async with stack(tmp_path, names=("a",), keepalive_interval=0.3) as s:
        phone = RawPhone(s.sbc.address("udp"))
        try:
            ok = await _register(phone)
            assert ok.status == 200
            # its own (private) Contact comes back; the answer came to the real source port
            assert f"<sip:1002@{PRIVATE}>" in ok.get("Contact")
            via = ok.get("Via")
            assert f"rport={phone.port}" in via and "received=127.0.0.1" in via
            # the SBC keeps the NAT binding open: CRLF keep-alives arrive at the phone
            await phone.recv(timeout=3, want=lambda m: m is None)

            caller = Sipp("uac_call_expect_error.xml", s.target, workdir=tmp_path / "c", service="1002",
                          user="1001", domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"],
                          variables={"expected": 486}, timeout=20)
            await caller.start()
            invite = await phone.recv(timeout=10, want=lambda m: isinstance(m, Request) and m.method == "INVITE")
            # over the registration's flow, to the phone's own Contact, one Via: the SBC's
            assert invite.uri_text == f"sip:1002@{PRIVATE}"
            assert len(invite.vias) == 1
            sbc_host, sbc_port = s.sbc.address("udp")
            assert invite.top_via.host == sbc_host and invite.top_via.port == sbc_port
            lines = [("Via", v) for v in invite.get_all("Via")]
            busy = Response(486, "Busy Here", lines + [
                ("From", invite.get("From")), ("To", invite.get("To") + ";tag=natbusy"),
                ("Call-ID", invite.call_id), ("CSeq", invite.get("CSeq")),
            ])
            phone.send(busy.to_bytes())
            ack = await phone.recv(timeout=5, want=lambda m: isinstance(m, Request) and m.method == "ACK")
            assert ack.call_id == invite.call_id
            result = await caller.wait()
            result.assert_ok()
            assert_hidden(s, [_Captured(d) for d in phone.seen])
            assert_hidden(s, result.received())
        finally:
            phone.close()


async def test_tcp_phone_registers_and_calls_through_the_sbc(tmp_path):
    async with stack(tmp_path, names=("a",)) as s:
        callee = Sipp("uas_register_then_answer.xml", s.target, workdir=tmp_path / "p", user="1002", domain=DOMAIN,
                      auth_user="1002", auth_password=PASSWORDS["1002"], ooc_scenario="uas_answer.xml",
                      duration_ms=15000, timeout=40, transport="t1")
        await callee.start()
        try:
            node = s.nodes["a"]
            assert await wait_for(lambda: node.wait_registered(s.tenants["a"].id, "1002", 0.1))
            caller = await Sipp("uac_call.xml", s.target, workdir=tmp_path / "c", service="1002", user="1001",
                                domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"],
                                duration_ms=300, transport="t1").run()
            caller.assert_ok()
        finally:
            cres = await callee.stop()
        assert cres.received("INVITE") and cres.received("INVITE")[0].transport.upper() == "TCP"
        assert_hidden(s, cres.received())
        assert_hidden(s, caller.received())
