"""Malformed and hostile input against a running node: answered with a clear error or
dropped, never a crash, and the node keeps serving."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from node.runtime.app import Node
from node.sip.parser import parse_datagram
from tests.interop.conftest import node_config
from tests.peers.net import free_port

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "rfc4475"

OPTIONS = (
    "OPTIONS sip:alpha.example SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{n};rport\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:probe@alpha.example>;tag=p{n}\r\nTo: <sip:alpha.example>\r\n"
    "Call-ID: probe-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait(data)


@pytest.fixture
async def node(tmp_path):
    port = free_port("127.0.0.1")
    async with Node(node_config(tmp_path, port)) as n:
        yield n, port


async def _client(port):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port))
    return transport, proto


async def _alive(transport, proto, n) -> bool:
    transport.sendto(OPTIONS.format(port=transport.get_extra_info("sockname")[1], n=n).encode())
    while True:
        data = await asyncio.wait_for(proto.queue.get(), 2.0)
        if f"probe-{n}".encode() in data:
            return data.startswith(b"SIP/2.0 200")


async def test_invalid_torture_requests_get_400_with_reason(node):
    n, port = node
    transport, proto = await _client(port)
    try:
        for name in ("badinv01", "clerr", "ncl", "scalar02", "mismatch01", "insuf"):
            data = (CORPUS / f"{name}.sip").read_bytes()
            transport.sendto(data)
            try:
                reply = await asyncio.wait_for(proto.queue.get(), 2.0)
            except asyncio.TimeoutError:
                reply = b""
            if reply:
                line = reply.split(b"\r\n", 1)[0].decode()
                assert line.startswith("SIP/2.0 4") or line.startswith("SIP/2.0 5"), (name, line)
        assert await _alive(transport, proto, 1)
    finally:
        transport.close()


async def test_garbage_and_oversize_never_kill_the_node(node):
    n, port = node
    transport, proto = await _client(port)
    try:
        rnd = os.urandom
        for i in range(300):
            transport.sendto(rnd(1 + (i * 37) % 1400))
        transport.sendto(b"INVITE sip:x@y SIP/2.0\r\n" + b"X-Pad: " + b"a" * 60000 + b"\r\n\r\n")
        transport.sendto(b"\r\n\r\n")  # keep-alive: ignored
        await asyncio.sleep(0.2)
        assert await _alive(transport, proto, 2)
    finally:
        transport.close()


async def test_unsupported_require_gets_420_and_unknown_method_501(node):
    n, port = node
    transport, proto = await _client(port)
    try:
        msg = OPTIONS.format(port=1, n=3).replace("CSeq: 1 OPTIONS\r\n", "CSeq: 1 OPTIONS\r\nRequire: nonsense\r\n")
        transport.sendto(msg.encode())
        reply = parse_datagram(await asyncio.wait_for(proto.queue.get(), 2.0))
        assert reply.status == 420 and reply.get("Unsupported") == "nonsense"
        msg = OPTIONS.format(port=1, n=4).replace("OPTIONS", "FROBNICATE")
        transport.sendto(msg.encode())
        reply = parse_datagram(await asyncio.wait_for(proto.queue.get(), 2.0))
        assert reply.status == 501 and "INVITE" in (reply.get("Allow") or "")
    finally:
        transport.close()


async def test_tcp_framing_error_closes_only_that_connection(node):
    n, port = node
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: nope\r\n\r\n")
    await w.drain()
    assert await asyncio.wait_for(r.read(), 3.0) is not None  # server closes (EOF)
    w.close()
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    w2.write(OPTIONS.format(port=1, n=5).replace("SIP/2.0/UDP", "SIP/2.0/TCP").encode())
    await w2.drain()
    head = await asyncio.wait_for(r2.readuntil(b"\r\n\r\n"), 3.0)
    assert head.startswith(b"SIP/2.0 200")
    # CRLF keep-alive ping is answered with a pong (RFC 5626 §3.5.1)
    w2.write(b"\r\n\r\n")
    await w2.drain()
    assert await asyncio.wait_for(r2.readexactly(2), 3.0) == b"\r\n"
    w2.close()
