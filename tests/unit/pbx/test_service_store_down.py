"""A store that cannot be reached (etcd down) gives 503 + Retry-After, so phones retry or fail
over, instead of a 500 or a 200 for a registration that was never stored."""

from __future__ import annotations

import asyncio
import os

from node.embedded import open_embedded
from node.pbx.authn import Authenticator
from node.pbx.service import PbxService
from node.runtime.config import NodeConfig
from node.sip.auth import answer_challenge, choose_challenge
from node.sip.flow import Flow
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer
from node.transport.endpoint import SipEndpoint

PHONE = ("127.0.0.2", 5062)


class _Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flow: Flow) -> None:
        self.sent.append(data)

    def bound(self, *a):
        return None


class _DownLocations:
    def __init__(self, inner) -> None:
        self.inner = inner

    async def lookup(self, *a):
        raise ConnectionError("cannot reach etcd (test)")

    async def save(self, *a):
        raise ConnectionError("cannot reach etcd (test)")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _register(cseq: int, auth: str | None = None) -> bytes:
    lines = [
        "REGISTER sip:down.example SIP/2.0",
        f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-down{cseq};rport",
        "From: <sip:1001@down.example>;tag=f1", "To: <sip:1001@down.example>",
        "Call-ID: down-1", f"CSeq: {cseq} REGISTER", f"Contact: <sip:1001@{PHONE[0]}:{PHONE[1]}>",
        "Max-Forwards: 70", "Expires: 600",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def test_register_while_the_location_store_is_down_gets_503(tmp_path):
    backend = open_embedded(tmp_path)
    t = await backend.config.create_tenant("down", "down.example")
    await backend.config.create_extension(t.id, "1001", "secret-pw-1001")
    endpoint = SipEndpoint(TransactionLayer())
    sink = endpoint.transports = _Sink()
    service = PbxService(
        NodeConfig(data_dir=tmp_path, nat_ping_interval=0), endpoint, backend.config,
        _DownLocations(backend.locations), backend.cdrs, Authenticator(os.urandom(32)), media_factory=None,
    )
    endpoint.on_event = service.on_event
    flow = Flow("udp", PHONE, ("127.0.0.1", 5060))

    async def send(data: bytes):
        sink.sent.clear()
        endpoint.message_received(parse_datagram(data), flow)
        for _ in range(50):
            if sink.sent:
                break
            await asyncio.sleep(0.01)
        return parse_datagram(sink.sent[-1])

    challenge = await send(_register(1))
    assert challenge.status == 401
    ch = choose_challenge([v for k, v in challenge.headers if k == "WWW-Authenticate"])
    cred = answer_challenge(ch, "REGISTER", "sip:down.example", "1001", "secret-pw-1001", "0a0b0c0d", 1, b"")
    resp = await send(_register(2, cred))
    assert resp.status == 503
    assert resp.get("Retry-After") == "5"
    assert "unreachable" in resp.reason
    backend.close()
