"""Phones over TLS (RFC 3261 §26, port 5061 style) and over WebSocket (RFC 7118) at the SBC's
edge: registration with digest auth, and a call from a UDP caller that reaches them over
their own connection, with nothing of the inside in what they receive."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.sip.auth import answer_challenge
from node.sip.message import Request, Response
from node.sip.parser import StreamParser, parse_datagram
from node.transport.sockets import Listen
from tests.peers.net import free_port
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, OUTSIDE_IP, PASSWORDS, stack, wait_for
from tests.sbc.test_sbc_calls import assert_hidden

pytestmark = pytest.mark.interop


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sbc.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("sbc.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def client_ctx(cert_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cert_file)
    ctx.check_hostname = False  # the test certificate names sbc.test, we dial 127.0.0.1
    return ctx


class StreamPhone:
    """A phone on one connection: TLS (framed by Content-Length) or WebSocket (a message each)."""

    def __init__(self, transport: str, ext: str) -> None:
        self.transport = transport
        self.ext = ext
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.seen: list[bytes] = []
        self.parser = StreamParser()

    async def connect_tls(self, host, port, ctx) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="sbc.test")
        self.local = self.writer.get_extra_info("sockname")
        self._task = asyncio.create_task(self._read_tls())

    async def _read_tls(self) -> None:
        while data := await self.reader.read(65536):
            self.seen.append(data)
            for m in self.parser.feed(data):
                await self.inbox.put(m)

    async def connect_ws(self, url, ctx=None) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, protocols=("sip",), ssl=ctx if ctx is not None else True)
        assert self.ws.protocol == "sip"
        self.local = ("df7jal23ls0d.invalid", 0)
        self._task = asyncio.create_task(self._read_ws())

    async def _read_ws(self) -> None:
        async for msg in self.ws:
            data = msg.data.encode() if isinstance(msg.data, str) else msg.data
            self.seen.append(data)
            await self.inbox.put(parse_datagram(data))

    async def send(self, data: bytes) -> None:
        if self.transport == "tls":
            self.writer.write(data)
            await self.writer.drain()
        else:
            await self.ws.send_str(data.decode())

    async def recv(self, want, timeout: float = 8.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = await asyncio.wait_for(self.inbox.get(), max(0.01, deadline - loop.time()))
            if want(m):
                return m

    def register(self, cseq: int, auth: str | None = None) -> bytes:
        t = self.transport.upper()
        host = self.local[0]
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/{t} {host};branch=z9hG4bK{os.urandom(6).hex()}",
            "Max-Forwards: 70",
            f"From: <sip:{self.ext}@{DOMAIN}>;tag=streamphone",
            f"To: <sip:{self.ext}@{DOMAIN}>",
            f"Call-ID: stream-{self.transport}-1",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:{self.ext}@{host};transport={self.transport}>",
            "Expires: 300",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    async def close(self) -> None:
        self._task.cancel()
        if self.transport == "tls":
            self.writer.close()
        else:
            await self.ws.close()
            await self.session.close()


def _password(ext: str) -> str:
    return PASSWORDS.get(ext) or f"pw-{ext}-secret"


class _Captured:
    def __init__(self, data: bytes) -> None:
        self.text = data.decode(errors="replace").replace("\r\n", "\n")


async def _register_and_take_a_call(s, phone: StreamPhone, tmp_path) -> None:
    final = lambda m: isinstance(m, Response) and m.status >= 200  # noqa: E731
    await phone.send(phone.register(1))
    ch = await phone.recv(final)
    assert ch.status == 401, ch
    auth = answer_challenge(ch.get("WWW-Authenticate"), "REGISTER", f"sip:{DOMAIN}", phone.ext, _password(phone.ext),
                            os.urandom(8).hex())
    await phone.send(phone.register(2, auth))
    ok = await phone.recv(final)
    assert ok.status == 200 and ok.get_all("Contact") == [
        f"<sip:{phone.ext}@{phone.local[0]};transport={phone.transport}>;expires={ok.get('Contact').rsplit('=', 1)[1]}"]
    caller = Sipp("uac_call_expect_error.xml", s.target, workdir=tmp_path / f"c-{phone.transport}", service=phone.ext,
                  user="1001", domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"],
                  variables={"expected": 486}, timeout=20)
    await caller.start()
    invite = await phone.recv(lambda m: isinstance(m, Request) and m.method == "INVITE", timeout=10)
    assert invite.top_via.transport == phone.transport.upper() and len(invite.vias) == 1
    busy = Response(486, "Busy Here", [("Via", v) for v in invite.get_all("Via")] + [
        ("From", invite.get("From")), ("To", invite.get("To") + ";tag=busy"),
        ("Call-ID", invite.call_id), ("CSeq", invite.get("CSeq"))])
    await phone.send(busy.to_bytes())
    await phone.recv(lambda m: isinstance(m, Request) and m.method == "ACK")
    result = await caller.wait()
    result.assert_ok()
    assert_hidden(s, [_Captured(d) for d in phone.seen])


async def test_tls_and_websocket_phones(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port(OUTSIDE_IP)
    tls_port, ws_port, wss_port = free_port(OUTSIDE_IP), free_port(OUTSIDE_IP), free_port(OUTSIDE_IP)
    listens = (Listen("udp", OUTSIDE_IP, port), Listen("tcp", OUTSIDE_IP, port), Listen("tls", OUTSIDE_IP, tls_port),
               Listen("ws", OUTSIDE_IP, ws_port), Listen("wss", OUTSIDE_IP, wss_port))
    async with stack(tmp_path, names=("a",), listens=listens, tls_cert=cert, tls_key=key) as s:
        node = s.nodes["a"]
        for ext in ("1003", "1004"):
            await node.config.create_extension(s.tenants["a"].id, ext, _password(ext))
        for transport, ext in (("tls", "1002"), ("ws", "1003"), ("wss", "1004")):
            phone = StreamPhone("tls" if transport == "tls" else "ws", ext)
            if transport == "tls":
                await phone.connect_tls(OUTSIDE_IP, tls_port, client_ctx(cert))
            elif transport == "ws":
                await phone.connect_ws(f"ws://{OUTSIDE_IP}:{ws_port}/")
            else:
                phone.transport = "wss"
                await phone.connect_ws(f"wss://{OUTSIDE_IP}:{wss_port}/", client_ctx(cert))
            try:
                await _register_and_take_a_call(s, phone, tmp_path)
            finally:
                await phone.close()
        # a plain HTTP request to the WebSocket port is refused, not crashed on
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{OUTSIDE_IP}:{ws_port}/") as r:
                assert r.status == 426
