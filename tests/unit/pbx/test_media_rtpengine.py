"""RtpengineAnchor against a scripted ng server on loopback (tags, offer/answer direction,
failover, fallback to the local relay, delete after an in-flight command, which calls stay
local). The real rtpengine is in tests/interop/pbx/test_media_rtpengine_sipp.py."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest

from node.pbx import media_rtpengine as mr
from node.pbx.media_rtpengine import NeedsLocalRelay, RtpengineAnchors, ng_addresses
from node.rtp_engine.errors import RelayError
from node.rtp_engine.ng_client import bdecode, bencode

OFFER = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
         b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
ANSWER = OFFER.replace(b"10.0.0.1", b"10.0.0.2").replace(b"4000", b"5000")


class NgServer(asyncio.DatagramProtocol):
    """Answers like rtpengine: SDP with its own address and a port per from-tag."""

    def __init__(self, *, delay: float = 0.0, silent: bool = False) -> None:
        self.delay = delay
        self.silent = silent
        self.log: list[dict] = []  # every distinct command, in arrival order
        self.replied: list[str] = []
        self.transport = None
        self.port = 0

    @classmethod
    async def start(cls, **kw) -> "NgServer":
        s = cls(**kw)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: s, local_addr=("127.0.0.1", 0))
        s.port = s.transport.get_extra_info("sockname")[1]
        return s

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        cookie, _, payload = data.partition(b" ")
        msg = {k.decode(): (v.decode() if isinstance(v, bytes) else v) for k, v in bdecode(payload).items()}
        msg["_cookie"] = cookie
        if any(m["_cookie"] == cookie for m in self.log):
            return  # a resend
        self.log.append(msg)
        if self.silent:
            return
        asyncio.get_running_loop().call_later(self.delay, self._reply, cookie, msg, addr)

    def _reply(self, cookie, msg, addr) -> None:
        reply: dict = {"result": "pong" if msg["command"] == "ping" else "ok"}
        if msg["command"] in ("offer", "answer"):
            port = {"a": 41000, "b": 41002}[msg["to-tag"] if msg["command"] == "answer" else msg["from-tag"]]
            # what the other side gets: rtpengine's address, the port facing the sender's peer
            port = 41002 if port == 41000 else 41000
            sdp = re.sub(r"c=IN IP4 \S+", "c=IN IP4 127.0.0.9", msg["sdp"])
            reply["sdp"] = re.sub(r"m=audio \d+", f"m=audio {port}", sdp)
        self.replied.append(msg["command"])
        self.transport.sendto(cookie + b" " + bencode(reply), addr)

    def commands(self) -> list[tuple]:
        return [(m["command"], m.get("from-tag"), m.get("to-tag")) for m in self.log]

    def close(self) -> None:
        self.transport.close()


class LocalStub:
    """The local relay's factory (MediaAnchors) as far as the rtpengine factory uses it."""

    advertise = None

    def __init__(self) -> None:
        self.opened: list[str] = []

    async def open(self, call_id, tenant, call=None, *, reason="plain"):
        self.opened.append(call_id)
        return SimpleNamespace(where="local", needs_await=False, session="relay-session", closed=False,
                               rewrite=lambda side, body, ip: b"local:" + side.encode(),
                               initial_offer=lambda body, ip: b"local-offer", close=lambda: None)


def _call(docs: dict | None = None, body: bytes = OFFER, callee="1002"):
    docs = docs or {}

    async def get_object(tid, kind, name):
        assert kind == "recording"
        return docs.get(name)

    target = SimpleNamespace(kind="extension", to_value=f"<sip:{callee}@alpha.example>")
    return SimpleNamespace(
        host=SimpleNamespace(config=SimpleNamespace(get_object=get_object)),
        tenant=SimpleNamespace(id=1), caller=SimpleNamespace(extension=SimpleNamespace(number="1001")),
        plan=SimpleNamespace(callee_ext=None, attempts=[[target]]), invite=SimpleNamespace(body=body),
    )


async def _factory(*servers, timeout=0.2, retries=0):
    local = LocalStub()
    f = RtpengineAnchors(local, ng_addresses([s.address for s in servers]), timeout=timeout, retries=retries)
    return f, local


async def test_offer_answer_tags_reinvite_from_the_callee_and_delete():
    srv = await NgServer.start()
    f, _ = await _factory(srv)
    try:
        anchor = await f.open("cid-1", "alpha", _call())
        assert anchor.where == "rtpengine" and anchor.needs_await and anchor.session is None
        offer_b = anchor.initial_offer(OFFER, "192.0.2.1")
        assert b"c=IN IP4 127.0.0.9" in offer_b and b"m=audio 41002" in offer_b and b"o=hivepbx " in offer_b
        assert anchor.initial_offer(OFFER, "192.0.2.1") == offer_b  # every fork: no new ng offer
        ans_a = await anchor.rewrite_async("b", ANSWER, "192.0.2.1")  # 183 or 200 of the callee
        assert b"m=audio 41000" in ans_a
        await anchor.rewrite_async("b", ANSWER, "192.0.2.1")  # its 200 after a 183: answered again
        reoffer = await anchor.rewrite_async("b", ANSWER.replace(b"PCMU", b"PCMU"), "x", offer=True)
        assert b"127.0.0.9" in reoffer
        await anchor.rewrite_async("a", OFFER, "x")  # the caller's 200: the answer to it
        with pytest.raises(NeedsLocalRelay):
            anchor.rewrite("a", OFFER, "x")  # transfer & co. need the node's relay
        anchor.close()
        await f.close()
        assert srv.commands() == [("offer", "a", None), ("answer", "a", "b"), ("answer", "a", "b"),
                                  ("offer", "b", "a"), ("answer", "b", "a"), ("delete", None, None)]
        ids = {m["call-id"] for m in srv.log}
        assert len(ids) == 1 and ids.pop().startswith("cid-1-hp")  # its own id: no clash with an SBC
        assert not f.live
    finally:
        srv.close()


async def test_late_offer_the_callee_offers_in_its_200_the_caller_answers_in_its_ack():
    srv = await NgServer.start()
    f, _ = await _factory(srv)
    try:
        anchor = await f.open("cid-8", "alpha", _call(body=b""))  # INVITE without SDP
        assert srv.commands() == []
        offer_a = await anchor.rewrite_async("b", ANSWER, "x")  # the 200's offer
        await anchor.rewrite_async("a", OFFER, "x")  # the ACK's answer
        assert b"127.0.0.9" in offer_a
        anchor.close()
        await f.close()
        assert srv.commands() == [("offer", "b", None), ("answer", "b", "a"), ("delete", None, None)]
    finally:
        srv.close()


async def test_hangup_during_an_inflight_command_deletes_after_it():
    srv = await NgServer.start(delay=0.2)
    f, _ = await _factory(srv, timeout=1.0)
    try:
        anchor = await f.open("cid-2", "alpha", _call())
        pending = asyncio.create_task(anchor.rewrite_async("b", ANSWER, "x"))
        await asyncio.sleep(0.05)
        anchor.close()  # CANCEL / BYE while rtpengine still works on the answer
        await pending
        await f.close()
        assert [c for c, *_ in srv.commands()] == ["offer", "answer", "delete"]
        assert srv.replied == ["offer", "answer", "delete"]  # the delete left only after the answer
        with pytest.raises(RelayError):
            await anchor.rewrite_async("b", ANSWER, "x")  # closed: nothing more goes to rtpengine
    finally:
        srv.close()


async def test_an_instance_that_does_not_answer_is_skipped_and_marked_down():
    dead, live = await NgServer.start(silent=True), await NgServer.start()
    f, local = await _factory(dead, live, timeout=0.1)
    try:
        # find a call id whose own instance is the dead one
        cid = next(f"c{i}" for i in range(100) if f.instances.candidates(f"c{i}")[0].port == dead.port)
        anchor = await f.open(cid, "alpha", _call())
        assert anchor.where == "rtpengine" and anchor.client.port == live.port and not local.opened
        assert not f.instances.is_up(f.instances.clients[0] if f.instances.clients[0].port == dead.port
                                     else f.instances.clients[1])
        anchor.close()
        await f.close()
        assert [c for c, *_ in dead.commands()] == ["offer", "delete"]  # it may hold the session
    finally:
        dead.close()
        live.close()


async def test_no_rtpengine_answering_puts_the_call_on_the_local_relay():
    dead = await NgServer.start(silent=True)
    f, local = await _factory(dead, timeout=0.1)
    fallbacks = mr.FALLBACKS._value.get()
    try:
        media = await f.open("cid-3", "alpha", _call())
        assert media.where == "local" and local.opened == ["cid-3"]
        assert mr.FALLBACKS._value.get() == fallbacks + 1
        # marked down: the next call does not wait for it
        t0 = asyncio.get_running_loop().time()
        media2 = await f.open("cid-4", "alpha", _call())
        assert media2.where == "local" and asyncio.get_running_loop().time() - t0 < 0.05
        await f.close()
    finally:
        dead.close()


async def test_midcall_offer_without_rtpengine_moves_the_call_to_the_local_relay():
    srv = await NgServer.start()
    f, local = await _factory(srv, timeout=0.1)
    try:
        anchor = await f.open("cid-5", "alpha", _call())
        await anchor.rewrite_async("b", ANSWER, "x")
        srv.silent = True  # rtpengine hangs before the re-INVITE
        out = await anchor.rewrite_async("a", OFFER, "x", offer=True)
        assert out == b"local:a" and anchor.session == "relay-session"
        assert await anchor.rewrite_async("b", ANSWER, "x") == b"local:b"  # and its answer too
        assert anchor.rewrite("b", ANSWER, "x") == b"local:b"  # the node's features work again
        anchor.close()
        await f.close()
    finally:
        srv.close()


@pytest.mark.parametrize("docs, where", [
    ({}, "rtpengine"),
    ({"1002": {"mode": "always"}}, "local"),
    ({"1001": {"mode": "on_demand", "toggle": "*1"}}, "local"),
    ({"1001": {"mode": "always"}, "1002": {"mode": "never"}}, "rtpengine"),  # "never" wins
])
async def test_calls_that_would_be_recorded_stay_local(docs, where):
    srv = await NgServer.start()
    f, _ = await _factory(srv)
    try:
        media = await f.open("cid-6", "alpha", _call(docs))
        assert media.where == where
        assert [c for c, *_ in srv.commands()] == (["offer"] if where == "rtpengine" else [])
        media.close()
        await f.close()
    finally:
        srv.close()


async def test_an_offer_we_refuse_sends_nothing_to_rtpengine():
    srv = await NgServer.start()
    f, _ = await _factory(srv)
    try:
        bad = OFFER.replace(b"RTP/AVP 0 101", b"RTP/AVP 9").replace(b"a=rtpmap:0 PCMU/8000\r\n", b"")
        anchor = await f.open("cid-7", "alpha", _call(body=bad))
        with pytest.raises(Exception):
            anchor.check_offer(bad)
        anchor.close()
        await f.close()
        assert srv.commands() == []
    finally:
        srv.close()


@pytest.mark.parametrize("values, expected", [
    (["127.0.0.1:2223"], [("127.0.0.1", 2223)]),
    (["10.0.0.5", "[::1]:3000"], [("10.0.0.5", 2223), ("::1", 3000)]),
])
def test_ng_addresses(values, expected):
    assert ng_addresses(values) == expected


@pytest.mark.parametrize("values, why", [
    ([], "needs rtpengine_ng"),
    (["host:99999"], "not host:port"),
    (["host:abc"], "not host:port"),
    ([":2223"], "not host:port"),
])
def test_bad_ng_addresses_say_what_is_wrong(values, why):
    with pytest.raises(ValueError, match=why):
        ng_addresses(values)


async def test_hold_plays_the_tenants_music_to_the_held_side_and_blocks_the_holder(tmp_path):
    srv = await NgServer.start()
    f, _ = await _factory(srv)
    try:
        anchor = await f.open("cid-9", "alpha", _call())
        await anchor.rewrite_async("b", ANSWER, "x")
        call = SimpleNamespace(id="c9", host=SimpleNamespace(cfg=SimpleNamespace(data_dir=tmp_path)),
                               tenant=SimpleNamespace(id=1))
        anchor.remote_hold(call, "b", True)  # the callee holds: the caller hears music
        assert call.hold.held_side == "a"
        anchor.remote_hold(call, "b", True)  # a refreshed hold offer: nothing more
        await asyncio.sleep(0.1)
        anchor.remote_hold(call, "b", False)  # resumed
        assert call.hold.held_side is None
        await asyncio.sleep(0.1)
        anchor.close()
        await f.close()
        media = [(m["command"], m.get("from-tag"), m.get("file"), m.get("repeat-times")) for m in srv.log
                 if "media" in m["command"]]
        music = str((tmp_path / "moh" / "default" / "moh.wav").resolve())
        assert media == [("play media", "a", music, mr._MOH_REPEAT), ("block media", "b", None, None),
                         ("stop media", "a", None, None), ("unblock media", "b", None, None)]
    finally:
        srv.close()


async def test_health_pings_mark_a_silent_instance_down_and_a_recovered_one_up():
    srv = await NgServer.start(silent=True)
    local = LocalStub()
    f = RtpengineAnchors(local, ng_addresses([srv.address]), timeout=0.05, retries=0, ping_interval=0.1)
    try:
        await f.start()
        client = f.instances.clients[0]
        assert not f.instances.is_up(client)
        srv.silent = False
        for _ in range(50):
            if f.instances.is_up(client):
                break
            await asyncio.sleep(0.05)
        assert f.instances.is_up(client)
        assert (await f.open("cid-10", "alpha", _call())).where == "rtpengine"
    finally:
        await f.close()
        srv.close()
