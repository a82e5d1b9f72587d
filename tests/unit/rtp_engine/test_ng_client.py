"""ng protocol client: bencode codec, cookies, retries, timeouts, errors (fake rtpengine on UDP)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.rtp_engine.ng_client import BencodeError, NgClient, NgError, NgTimeout, bdecode, bencode

values = st.recursive(
    st.binary(max_size=20) | st.integers(-10**12, 10**12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_roundtrip(v) -> None:
    assert bdecode(bencode(v)) == v


def test_known_encoding_sorted_keys_and_text() -> None:
    assert bencode({"sdp": "v=0", "command": "offer", "flags": ["a"], "n": 3}) == \
        b"d7:command5:offer5:flagsl1:ae1:ni3e3:sdp3:v=0e"
    assert bdecode(b"d3:cow3:moo4:spaml1:a1:bee") == {b"cow": b"moo", b"spam": [b"a", b"b"]}


@pytest.mark.parametrize("bad", [b"", b"i12", b"i-0e", b"i03e", b"5:abc", b"d1:ae", b"di1ei2ee", b"x",
                                 b"l", b"i1ei2e", b"05:abcde", b"l" * 100 + b"e" * 100])
def test_bad_bencode_is_an_error(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(bad)


def test_unencodable_values() -> None:
    with pytest.raises(BencodeError):
        bencode({"x": 1.5})
    with pytest.raises(BencodeError):
        bencode(True)


class FakeEngine(asyncio.DatagramProtocol):
    """Answers ng commands; drops the first ``drop`` datagrams; records what it got."""

    def __init__(self, drop: int = 0, reply: dict | None = None) -> None:
        self.drop = drop
        self.reply = reply
        self.got: list[tuple[bytes, dict]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        cookie, _, payload = data.partition(b" ")
        msg = bdecode(payload)
        self.got.append((cookie, msg))
        if self.drop:
            self.drop -= 1
            return
        if self.reply is not None:
            out = self.reply
        elif msg[b"command"] == b"ping":
            out = {"result": "pong"}
        else:
            out = {"result": "ok", "sdp": msg.get(b"sdp", b"").replace(b"1000", b"2000")}
        self.transport.sendto(cookie + b" " + bencode(out), addr)


async def engine(**kw) -> tuple[FakeEngine, int, asyncio.DatagramTransport]:
    proto = FakeEngine(**kw)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: proto, local_addr=("127.0.0.1", 0))
    return proto, transport.get_extra_info("sockname")[1], transport


async def test_offer_round_trip() -> None:
    proto, port, t = await engine()
    c = NgClient("127.0.0.1", port, timeout=0.3)
    try:
        assert await c.ping()
        reply = await c.offer("call1", "tagA", "m=audio 1000 RTP/AVP 0", replace=["origin"], ICE="remove")
        assert reply == {"result": "ok", "sdp": "m=audio 2000 RTP/AVP 0"}
        cookie, msg = proto.got[-1]
        assert msg[b"command"] == b"offer" and msg[b"call-id"] == b"call1" and msg[b"from-tag"] == b"tagA"
        assert msg[b"replace"] == [b"origin"] and msg[b"ICE"] == b"remove"
        assert cookie != proto.got[0][0]  # a cookie per command
    finally:
        c.close()
        t.close()


async def test_lost_request_is_resent_with_the_same_cookie() -> None:
    proto, port, t = await engine(drop=2)
    c = NgClient("127.0.0.1", port, timeout=0.1, retries=3)
    try:
        reply = await c.answer("call1", "a", "b", "m=audio 1000 RTP/AVP 0")
        assert reply["sdp"] == "m=audio 2000 RTP/AVP 0"
        assert len(proto.got) == 3 and len({cookie for cookie, _ in proto.got}) == 1
        assert c.resent == 2
    finally:
        c.close()
        t.close()


async def test_no_answer_is_a_timeout_after_the_retries() -> None:
    proto, port, t = await engine(drop=100)
    c = NgClient("127.0.0.1", port, timeout=0.05, retries=2)
    try:
        with pytest.raises(NgTimeout, match="did not answer offer"):
            await c.offer("c", "a", "sdp")
        assert len(proto.got) == 3
        assert not await c.ping()
    finally:
        c.close()
        t.close()


async def test_error_result_carries_the_reason() -> None:
    _, port, t = await engine(reply={"result": "error", "error-reason": "Unknown call-id"})
    c = NgClient("127.0.0.1", port, timeout=0.3)
    try:
        with pytest.raises(NgError, match="Unknown call-id") as e:
            await c.delete("nope")
        assert e.value.reason == "Unknown call-id" and e.value.command == "delete"
    finally:
        c.close()
        t.close()


async def test_garbage_reply_is_an_error_not_a_hang() -> None:
    _, port, t = await engine(reply={"result": "maybe"})
    c = NgClient("127.0.0.1", port, timeout=0.3)
    try:
        with pytest.raises(NgError, match="unexpected result"):
            await c.query("x")
    finally:
        c.close()
        t.close()


async def test_concurrent_commands_are_matched_by_cookie() -> None:
    proto, port, t = await engine()
    c = NgClient("127.0.0.1", port, timeout=0.5)
    try:
        replies = await asyncio.gather(*(c.offer(f"c{i}", "a", f"m=audio 1000 x{i}") for i in range(20)))
        assert [r["sdp"] for r in replies] == [f"m=audio 2000 x{i}" for i in range(20)]
    finally:
        c.close()
        t.close()
