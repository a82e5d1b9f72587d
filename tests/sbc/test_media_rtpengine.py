"""MediaAnchor against a real rtpengine (userspace): SDP rewrite, RTP really relayed,
hold/resume, late offer, delete, per-tenant relay sets and failover."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from node.rtp_engine.ng_client import NgClient, NgError
from node.sdp import parse as parse_sdp
from node.sip.message import Request, Response
from node.sip.parser import parse_datagram
from sbc.media import MediaAnchor, MediaUnavailable
from tests.peers.rtpengine import Rtpengine, rtp_ports

pytestmark = pytest.mark.interop


def sdp(port: int, direction: str = "sendrecv", version: int = 1) -> bytes:
    return (f"v=0\r\no=- 42 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a={direction}\r\n").encode()


def sip(start: str, call_id: str, cseq: str, from_tag: str = "A", to_tag: str | None = None,
        body: bytes = b"") -> Request | Response:
    a = f"<sip:alice@example.com>;tag={from_tag}"
    b = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [start, "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-" + cseq.replace(" ", ""),
             "Max-Forwards: 70", f"From: {a}", f"To: {b}", f"Call-ID: {call_id}", f"CSeq: {cseq}"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def port_of(body: bytes) -> int:
    return parse_sdp(body).media[0].port


def direction_of(body: bytes) -> str:
    return parse_sdp(body).media[0].direction


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    return s


def rtp(seq: int, payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + payload


def flows(src: socket.socket, to_port: int, dst: socket.socket, n: int = 5) -> int:
    """Send ``n`` RTP packets from ``src`` to rtpengine's ``to_port``; how many reach ``dst``."""
    got = 0
    for i in range(n):
        src.sendto(rtp(i + 1), ("127.0.0.1", to_port))
    dst.settimeout(1.0)
    try:
        for _ in range(n):
            data, addr = dst.recvfrom(2048)
            assert addr[0] == "127.0.0.1" and addr[1] in rtp_ports()  # from rtpengine, never the peer
            got += 1
    except socket.timeout:
        pass
    return got


@pytest.fixture
async def engine(tmp_path: Path):
    e = await Rtpengine(tmp_path / "rtpe").start()
    yield e
    await e.stop()


@pytest.fixture
async def anchor(engine: Rtpengine):
    a = MediaAnchor({"default": [engine.address]}, ping_interval=0)
    await a.start()
    yield a
    await a.close()


async def query(engine: Rtpengine, call_id: str) -> dict:
    c = NgClient(*engine.address)
    try:
        return await c.query(call_id)
    finally:
        c.close()


async def test_call_media_relayed_and_hold_resume_consistent(anchor: MediaAnchor, engine: Rtpengine) -> None:
    alice, bob = udp(), udp()
    a_port, b_port = alice.getsockname()[1], bob.getsockname()[1]
    try:
        invite = sip("INVITE sip:bob@example.com SIP/2.0", "call-1", "1 INVITE", body=sdp(a_port))
        await anchor.on_request(invite, tenant="t1")
        to_bob = port_of(invite.body)
        assert to_bob in rtp_ports() and str(a_port) not in invite.body.decode()
        assert f"Content-Length: {len(invite.body)}".encode() in invite.to_bytes()

        ok = sip("SIP/2.0 200 OK", "call-1", "1 INVITE", to_tag="B", body=sdp(b_port))
        await anchor.on_response(invite, ok)
        to_alice = port_of(ok.body)
        assert to_alice in rtp_ports() and to_alice != to_bob and str(b_port) not in ok.body.decode()

        # RTP goes through rtpengine, both ways
        assert flows(alice, to_alice, bob) == 5
        assert flows(bob, to_bob, alice) == 5

        # hold from alice: re-INVITE sendonly; ports stay, direction passes through
        hold = sip("INVITE sip:bob@example.com SIP/2.0", "call-1", "2 INVITE", to_tag="B",
                   body=sdp(a_port, "sendonly", 2))
        await anchor.on_request(hold)
        assert port_of(hold.body) == to_bob and direction_of(hold.body) == "sendonly"
        ok2 = sip("SIP/2.0 200 OK", "call-1", "2 INVITE", to_tag="B", body=sdp(b_port, "recvonly", 2))
        await anchor.on_response(hold, ok2)
        assert port_of(ok2.body) == to_alice and direction_of(ok2.body) == "recvonly"

        # resume, this time re-INVITE from bob (the other side offers)
        resume = sip("INVITE sip:alice@example.com SIP/2.0", "call-1", "1 INVITE", from_tag="B", to_tag="A",
                     body=sdp(b_port, "sendrecv", 3))
        await anchor.on_request(resume)
        assert port_of(resume.body) == to_alice and direction_of(resume.body) == "sendrecv"
        ok3 = sip("SIP/2.0 200 OK", "call-1", "1 INVITE", from_tag="B", to_tag="A", body=sdp(a_port, "sendrecv", 3))
        await anchor.on_response(resume, ok3)
        assert port_of(ok3.body) == to_bob
        assert flows(alice, to_alice, bob) == 5
        assert flows(bob, to_bob, alice) == 5

        await anchor.on_request(sip("BYE sip:bob@example.com SIP/2.0", "call-1", "3 BYE", to_tag="B"))
        with pytest.raises(NgError):
            await query(engine, "call-1")
        assert anchor.instance_of("call-1") is None
        assert flows(alice, to_alice, bob, n=2) == 0  # the ports are closed
    finally:
        alice.close()
        bob.close()


async def test_late_offer_in_200_answer_in_ack(anchor: MediaAnchor) -> None:
    alice, bob = udp(), udp()
    a_port, b_port = alice.getsockname()[1], bob.getsockname()[1]
    try:
        invite = sip("INVITE sip:bob@example.com SIP/2.0", "call-late", "1 INVITE")
        await anchor.on_request(invite)
        assert invite.body == b""
        ok = sip("SIP/2.0 200 OK", "call-late", "1 INVITE", to_tag="B", body=sdp(b_port))
        await anchor.on_response(invite, ok)
        to_alice = port_of(ok.body)
        ack = sip("ACK sip:bob@example.com SIP/2.0", "call-late", "1 ACK", to_tag="B", body=sdp(a_port))
        await anchor.on_request(ack)
        to_bob = port_of(ack.body)
        assert {to_alice, to_bob} <= set(rtp_ports()) and to_alice != to_bob
        assert flows(alice, to_alice, bob) == 5
        assert flows(bob, to_bob, alice) == 5
        await anchor.on_request(sip("BYE sip:bob@example.com SIP/2.0", "call-late", "2 BYE", to_tag="B"))
    finally:
        alice.close()
        bob.close()


async def test_failed_or_cancelled_call_frees_media(anchor: MediaAnchor, engine: Rtpengine) -> None:
    for call_id, end in (("busy", "486"), ("cancel", "CANCEL")):
        invite = sip("INVITE sip:bob@example.com SIP/2.0", call_id, "1 INVITE", body=sdp(30000))
        await anchor.on_request(invite)
        assert "result" in await query(engine, call_id)
        if end == "CANCEL":
            await anchor.on_request(sip("CANCEL sip:bob@example.com SIP/2.0", call_id, "1 CANCEL"))
        else:
            await anchor.on_response(invite, sip("SIP/2.0 486 Busy Here", call_id, "1 INVITE", to_tag="B"))
        with pytest.raises(NgError):
            await query(engine, call_id)
    # a failed re-INVITE keeps the call
    invite = sip("INVITE sip:bob@example.com SIP/2.0", "keep", "1 INVITE", body=sdp(30000))
    await anchor.on_request(invite)
    await anchor.on_response(invite, sip("SIP/2.0 200 OK", "keep", "1 INVITE", to_tag="B", body=sdp(30002)))
    reinvite = sip("INVITE sip:bob@example.com SIP/2.0", "keep", "2 INVITE", to_tag="B", body=sdp(30000, "sendonly", 2))
    await anchor.on_request(reinvite)
    await anchor.on_response(reinvite, sip("SIP/2.0 491 Request Pending", "keep", "2 INVITE", to_tag="B"))
    assert "result" in await query(engine, "keep")
    await anchor.delete("keep")
    await anchor.delete("keep")  # idempotent


async def test_relay_sets_per_tenant_and_failover(tmp_path: Path) -> None:
    e1 = await Rtpengine(tmp_path / "e1", port_min=40000, port_max=40299).start()
    e2 = await Rtpengine(tmp_path / "e2", port_min=40300, port_max=40599).start()
    e3 = await Rtpengine(tmp_path / "e3", port_min=40600, port_max=40999).start()
    anchor = MediaAnchor({"default": [e1.address], "eu": [e2.address, e3.address]},
                         ping_interval=0, timeout=0.5, retries=1, down_time=30)
    try:
        await anchor.start()
        anchor.assign("tenant-eu", "eu")
        with pytest.raises(ValueError, match="unknown media relay set"):
            anchor.assign("x", "nowhere")
        out = await anchor.offer_sdp("c-default", "A", sdp(30000), tenant="tenant-other")
        assert anchor.instance_of("c-default") == e1.address and port_of(out) in e1.ports
        eu_instances = set()
        for i in range(8):
            out = await anchor.offer_sdp(f"c-eu-{i}", "A", sdp(30000), tenant="tenant-eu")
            eu_instances.add(anchor.instance_of(f"c-eu-{i}"))
            assert port_of(out) in rtp_ports(40300, 40999)
        assert eu_instances <= {e2.address, e3.address}

        # e2 hangs: the health check marks it down and every new eu call lands on e3
        e2.pause()
        await asyncio.sleep(0.2)  # SIGSTOP reaches every thread of it
        await anchor.check_health()
        for i in range(6):
            out = await anchor.offer_sdp(f"after-{i}", "A", sdp(30000), tenant="tenant-eu")
            assert anchor.instance_of(f"after-{i}") == e3.address and port_of(out) in e3.ports

        # a call whose command times out fails over at once (no health check in between)
        e2.resume()
        await anchor.check_health()
        e3.pause()
        await asyncio.sleep(0.2)
        calls = [f"fo-{i}" for i in range(6)]
        for c in calls:
            await anchor.offer_sdp(c, "A", sdp(30000), tenant="tenant-eu")
            assert anchor.instance_of(c) == e2.address
        # the whole set gone: a clear error (503), not a hang
        e2.pause()
        await asyncio.sleep(0.2)
        with pytest.raises(MediaUnavailable) as err:
            await anchor.offer_sdp("nobody", "A", sdp(30000), tenant="tenant-eu")
        assert err.value.status_hint == 503
    finally:
        for e in (e1, e2, e3):
            try:
                e.resume()
            except Exception:
                pass
        await anchor.close()
        for e in (e1, e2, e3):
            await e.stop()


async def test_pipeline_hooks_decide_offer_or_answer_from_state(anchor: MediaAnchor, engine: Rtpengine) -> None:
    """The proxy's form: offer(msg, direction)/answer(msg, direction) with the message alone."""
    invite = sip("INVITE sip:bob@example.com SIP/2.0", "hooks", "1 INVITE", body=sdp(30000))
    body = await anchor.offer(invite, "inbound")
    assert body is not None and invite.body == body and port_of(body) in rtp_ports()
    ringing = sip("SIP/2.0 183 Session Progress", "hooks", "1 INVITE", to_tag="B", body=sdp(30002))
    early = await anchor.answer(ringing, "outbound")
    ok = sip("SIP/2.0 200 OK", "hooks", "1 INVITE", to_tag="B", body=sdp(30002))
    final = await anchor.answer(ok, "outbound")
    assert early is not None and final is not None and port_of(early) == port_of(final) != port_of(body)
    # a re-INVITE that fails keeps the call; the response alone tells it is not the initial one
    re = sip("INVITE sip:bob@example.com SIP/2.0", "hooks", "2 INVITE", to_tag="B", body=sdp(30000, "sendonly", 2))
    await anchor.offer(re, "inbound")
    assert await anchor.rewrite(sip("SIP/2.0 488 Not Acceptable Here", "hooks", "2 INVITE", to_tag="B")) is None
    assert anchor.instance_of("hooks") == engine.address
    # no SDP: nothing to do
    assert await anchor.rewrite(sip("OPTIONS sip:bob@example.com SIP/2.0", "hooks", "3 OPTIONS")) is None
    # an initial INVITE that fails frees the media, from the response alone
    inv2 = sip("INVITE sip:bob@example.com SIP/2.0", "hooks-2", "1 INVITE", body=sdp(30000))
    await anchor.offer(inv2, "inbound")
    await anchor.rewrite(sip("SIP/2.0 603 Decline", "hooks-2", "1 INVITE", to_tag="B"))
    assert anchor.instance_of("hooks-2") is None
    with pytest.raises(NgError):
        await query(engine, "hooks-2")
    await anchor.delete("hooks", "A")


def test_media_config_from_the_sbc_toml_table() -> None:
    a = MediaAnchor.from_config({"rtpengine": ["127.0.0.1:2223"], "sets": {"eu": ["[::1]:2224", "10.0.0.2"]},
                                 "timeout": 0.3, "retries": 1})
    assert a is not None and a.default_set == "default"
    assert [(i.client.host, i.client.port) for i in a.sets["eu"].instances] == [("::1", 2224), ("10.0.0.2", 2223)]
    assert a.sets["eu"].instances[0].client.timeout == 0.3
    assert MediaAnchor.from_config({}) is None  # no rtpengine: SDP passes untouched
    t = MediaAnchor.from_config({"rtpengine": ["127.0.0.1"], "sets": {"eu": ["127.0.0.2"]},
                                 "tenants": {"acme.example": "eu"}})
    assert t.set_for("acme.example").name == "eu" and t.set_for("other.example").name == "default"
    with pytest.raises(ValueError, match="media.tenants.acme.example: unknown media relay set"):
        MediaAnchor.from_config({"rtpengine": ["127.0.0.1"], "tenants": {"acme.example": "asia"}})
    for bad, match in (({"rtpengine": []}, "media.rtpengine"), ({"sets": {"eu": ["host:99999"]}}, "media.sets.eu"),
                       ({"sets": {"eu": ["127.0.0.1:1"]}}, "default media relay set"),
                       ({"rtpengine": ["127.0.0.1"], "colour": 1}, "colour"),
                       ({"rtpengine": ["127.0.0.1"], "timeout": "fast"}, "media.timeout"),
                       ({"rtpengine": ["127.0.0.1:0"]}, "media.rtpengine")):
        with pytest.raises(ValueError, match=match):
            MediaAnchor.from_config(bad)
