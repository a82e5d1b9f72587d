"""The RTP relay over loopback: two UDP "phones" talk through a RelaySession."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop
from prometheus_client import REGISTRY

from node.media.dtmf import TelephoneEvent
from node.media.rtp import RtpPacket, parse_rtp
from node.rtp_engine import BadRemote, PortPool, PortsExhausted, RelayError, RtpRelay
from node.rtp_engine.sockets import has_ipv6
from node.sip.errors import SipError

#: guard against a hang, not a performance assertion
RECV_TIMEOUT = 2.0


class Phone(asyncio.DatagramProtocol):
    """A UDP endpoint that records what it receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def host(self) -> str:
        return self.transport.get_extra_info("sockname")[0]

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    def send(self, data: bytes, port: int, host: str | None = None) -> None:
        self.transport.sendto(data, (host or self.host, port))

    async def recv(self) -> tuple[bytes, tuple]:
        return await asyncio.wait_for(self.queue.get(), RECV_TIMEOUT)

    def close(self) -> None:
        self.transport.close()


async def phone(host: str = "127.0.0.1", port: int = 0) -> Phone:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(Phone, local_addr=(host, port))
    return p


async def until(condition) -> None:
    """Wait for the relay to have handled something we cannot observe on a socket."""
    for _ in range(int(RECV_TIMEOUT / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def rtp(seq: int, payload: bytes = b"\xff" * 160, pt: int = 0, ssrc: int = 0x1111) -> bytes:
    return RtpPacket(pt, seq, seq * 160, ssrc, payload).to_bytes()


def free_port_pair_range(n_pairs: int) -> tuple[int, int]:
    """A small range of ports that are free right now (even start), for one test's pool."""
    for base in range(42000, 60000, 64):
        socks = []
        try:
            for p in range(base, base + 2 * n_pairs):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base, base + 2 * n_pairs - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@pytest.fixture
async def relay():
    lo, hi = free_port_pair_range(8)
    r = RtpRelay(PortPool(lo, hi), "127.0.0.1", relatch_after=0.2)
    yield r
    r.close()
    await r.wait_closed()


async def call(relay: RtpRelay, tenant: str = "acme"):
    """A session with two phones whose SDP addresses are their real sockets."""
    s = await relay.open_session("call-1@phone", tenant)
    a, b = await phone(), await phone()
    s.a.set_remote(a.host, a.port)
    s.b.set_remote(b.host, b.port)
    return s, a, b


async def test_rtp_flows_both_ways_through_the_relay(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    assert s.a.local_port % 2 == 0 and s.b.local_port % 2 == 0 and s.a.local_port != s.b.local_port
    for seq in range(5):
        a.send(rtp(seq, ssrc=0xA), s.a.local_port)
        data, src = await b.recv()
        assert data == rtp(seq, ssrc=0xA)
        assert src[1] == s.b.local_port  # b sees the relay, not a
        b.send(rtp(seq, ssrc=0xB), s.b.local_port)
        data, src = await a.recv()
        assert data == rtp(seq, ssrc=0xB)
        assert src[1] == s.a.local_port
    st = s.stats()
    n = len(rtp(0))
    assert (st.a.packets_in, st.a.bytes_in, st.a.packets_out, st.a.bytes_out) == (5, 5 * n, 5, 5 * n)
    assert (st.b.packets_in, st.b.packets_out) == (5, 5)
    assert st.dropped == 0
    assert st.a.latched == (a.host, a.port)
    a.close(), b.close()


async def test_latching_follows_the_real_source_not_the_sdp(relay: RtpRelay) -> None:
    s = await relay.open_session("c", "acme")
    sdp_socket, real_socket, b = await phone(), await phone(), await phone()
    # phone A signalled one port (say, its private one) but its NAT sends from another
    s.a.set_remote("127.0.0.1", sdp_socket.port)
    s.b.set_remote("127.0.0.1", b.port)
    assert s.a.remote == ("127.0.0.1", sdp_socket.port) and not s.a.latched
    b.send(rtp(1), s.b.local_port)
    assert (await sdp_socket.recv())[0] == rtp(1)  # before latching: the SDP address
    real_socket.send(rtp(2), s.a.local_port)
    assert (await b.recv())[0] == rtp(2)
    assert s.a.latched and s.a.remote == ("127.0.0.1", real_socket.port)
    b.send(rtp(3), s.b.local_port)
    assert (await real_socket.recv())[0] == rtp(3)  # after latching: where A really is
    assert sdp_socket.queue.empty()
    for p in (sdp_socket, real_socket, b):
        p.close()


async def test_foreign_source_is_dropped_then_takes_over_after_silence(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    nat = await phone()
    s.a.set_remote("127.0.0.1", 9)  # SDP says a port nobody sends from
    a.send(rtp(1), s.a.local_port)  # a latches
    assert (await b.recv())[0] == rtp(1)
    intruder = await phone()
    intruder.send(rtp(66, ssrc=0x666), s.a.local_port)
    a.send(rtp(2), s.a.local_port)
    assert (await b.recv())[0] == rtp(2)  # the intruder's packet, sent before, never arrived
    assert b.queue.empty()
    assert s.stats().a.dropped_source == 1
    # a goes silent (NAT rebinding, Wi-Fi → LTE); its new address sends
    nat.send(rtp(3), s.a.local_port)
    await asyncio.sleep(0.3)  # > relatch_after (0.2 s) of silence from the latched source
    nat.send(rtp(4), s.a.local_port)
    assert (await b.recv())[0] == rtp(4)
    assert s.a.remote == ("127.0.0.1", nat.port)
    b.send(rtp(5), s.b.local_port)
    assert (await nat.recv())[0] == rtp(5)
    assert s.stats().a.dropped_source == 2  # the intruder's and nat's first
    for p in (a, b, nat, intruder):
        p.close()


async def test_foreign_source_cannot_take_over_while_latched_source_talks(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    a.send(rtp(1), s.a.local_port)
    await b.recv()
    intruder = await phone()
    for i in range(4):
        intruder.send(rtp(100 + i, ssrc=0x666), s.a.local_port)
        await asyncio.sleep(0.1)  # 0.4 s in all, but a keeps talking
        a.send(rtp(2 + i), s.a.local_port)
        assert (await b.recv())[0] == rtp(2 + i)
    assert b.queue.empty()
    assert s.a.remote == (a.host, a.port)
    assert s.stats().a.dropped_source == 4
    a.close(), b.close(), intruder.close()


async def test_sdp_address_relatches_at_once(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    other = await phone()
    other.send(rtp(1), s.a.local_port)  # something else got latched first
    await b.recv()
    a.send(rtp(2), s.a.local_port)  # the address A signalled in SDP wins immediately
    assert (await b.recv())[0] == rtp(2)
    assert s.a.remote == (a.host, a.port)
    a.close(), b.close(), other.close()


async def test_changed_sdp_address_forgets_the_latch(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    a.send(rtp(1), s.a.local_port)
    await b.recv()
    moved = await phone()
    s.a.set_remote(moved.host, moved.port)  # re-INVITE: media moved to another device
    assert not s.a.latched
    b.send(rtp(2), s.b.local_port)
    assert (await moved.recv())[0] == rtp(2)
    a.close(), b.close(), moved.close()


async def test_latch_learned_before_the_sdp_is_kept(relay: RtpRelay) -> None:
    s = await relay.open_session("c", "acme")
    a, b = await phone(), await phone()
    s.a.set_remote(a.host, a.port)
    b.send(rtp(1), s.b.local_port)  # the callee's first packet beats its 200 OK
    assert (await a.recv())[0] == rtp(1)
    s.b.set_remote("127.0.0.1", 9)  # its SDP names a private address we cannot reach
    a.send(rtp(2), s.a.local_port)
    assert (await b.recv())[0] == rtp(2)
    assert s.b.remote == (b.host, b.port)
    a.close(), b.close()


async def test_rtcp_is_relayed_on_port_plus_one_with_its_own_latch(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    a_rtcp, b_rtcp = await phone(), await phone()
    # SDP: RTCP at the RTP port + 1 by default; here the phones use explicit a=rtcp ports
    s.a.set_remote(a.host, a.port, rtcp_port=a_rtcp.port)
    s.b.set_remote(b.host, b.port, rtcp_port=b_rtcp.port)
    assert s.a.local_rtcp_port == s.a.local_port + 1
    sr = bytes.fromhex("80c8 0006 0000000a") + bytes(20)
    a_rtcp.send(sr, s.a.local_rtcp_port)
    data, src = await b_rtcp.recv()
    assert data == sr and src[1] == s.b.local_rtcp_port
    rr = bytes.fromhex("81c9 0007 0000000b") + bytes(24)
    b_rtcp.send(rr, s.b.local_rtcp_port)
    data, src = await a_rtcp.recv()
    assert data == rr and src[1] == s.a.local_rtcp_port
    assert a.queue.empty() and b.queue.empty()  # RTCP did not leak onto the RTP sockets
    st = s.stats()
    assert (st.a.rtcp_packets_in, st.a.rtcp_packets_out, st.a.packets_in) == (1, 1, 1)
    for p in (a, b, a_rtcp, b_rtcp):
        p.close()


async def test_rtcp_default_port_is_rtp_plus_one(relay: RtpRelay) -> None:
    s = await relay.open_session("c", "acme")
    a, b = await phone(), await phone()
    try:
        b_rtcp = await phone(port=b.port + 1)
    except OSError:
        pytest.skip("port + 1 of the test phone is taken")
    s.a.set_remote(a.host, a.port)
    s.b.set_remote(b.host, b.port)  # no rtcp_port: b.port + 1
    # the relay's RTCP socket sends before a latches
    a.send(bytes.fromhex("80c8 0006 0000000a") + bytes(20), s.a.local_rtcp_port)
    data, _ = await b_rtcp.recv()
    assert data[1] == 200
    for p in (a, b, b_rtcp):
        p.close()


async def test_rfc4733_events_pass_untouched(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    for i, end in enumerate((False, False, True, True, True)):  # end packet sent 3 times (§2.5.1.4)
        ev = TelephoneEvent.for_digit("#", end=end, volume=10, duration=160 * (i + 1)).to_bytes()
        pkt = RtpPacket(101, 700 + i, 48000, 0xD7, ev, marker=(i == 0)).to_bytes()
        a.send(pkt, s.a.local_port)
        data, _ = await b.recv()
        assert data == pkt
        got = parse_rtp(data)
        assert (got.payload_type, got.marker) == (101, i == 0)
    a.close(), b.close()


async def test_hold_address_sends_nothing_and_resume_sends_again(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    s.b.set_remote("0.0.0.0", b.port)  # c=0.0.0.0 hold from b
    assert s.b.remote is None
    a.send(rtp(1), s.a.local_port)
    a.send(rtp(2), s.a.local_port)
    await until(lambda: s.stats().a.dropped_no_destination == 2)
    assert b.queue.empty()
    b.send(rtp(3), s.b.local_port)  # b still sends (music on hold): relayed to a, and b latches
    assert (await a.recv())[0] == rtp(3)
    assert s.b.remote is None  # b latched, but it is still on hold
    s.b.set_remote(b.host, b.port)  # resume
    a.send(rtp(4), s.a.local_port)
    assert (await b.recv())[0] == rtp(4)
    s.b.set_remote(b.host, 0)  # port 0: stream rejected
    assert s.b.remote is None
    a.close(), b.close()


async def test_close_releases_ports_and_is_idempotent() -> None:
    lo, hi = free_port_pair_range(2)
    pool = PortPool(lo, hi)
    relay = RtpRelay(pool, "127.0.0.1")
    s = await relay.open_session("c", "acme")
    ports = (s.a.local_port, s.b.local_port)
    assert pool.available == 0 and pool.in_use == 2
    s.close()
    s.close()
    await s.wait_closed()
    assert pool.available == 2 and pool.in_use == 0
    assert relay.session_count == 0
    for p in (*ports, *(q + 1 for q in ports)):  # the sockets are really gone
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", p))
    s2 = await relay.open_session("c2", "acme")
    assert {s2.a.local_port, s2.b.local_port} == set(ports)
    relay.close()
    await relay.wait_closed()
    assert pool.available == 2


async def test_pool_exhaustion_is_a_clean_503() -> None:
    lo, hi = free_port_pair_range(3)  # three pairs: one session, then half of another
    pool = PortPool(lo, hi)
    relay = RtpRelay(pool, "127.0.0.1")
    s = await relay.open_session("c1", "acme")
    with pytest.raises(PortsExhausted) as exc:
        await relay.open_session("c2", "acme")
    assert exc.value.status_hint == 503 and isinstance(exc.value, SipError)
    assert pool.available == 1 and pool.in_use == 2  # the half-opened session gave its port back
    assert relay.session_count == 1
    s.close()
    await s.wait_closed()
    s2 = await relay.open_session("c3", "acme")
    assert s2.a.local_port != s2.b.local_port
    relay.close()
    await relay.wait_closed()


async def test_port_held_by_someone_else_is_skipped() -> None:
    lo, hi = free_port_pair_range(3)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", lo + 1))  # the RTCP port of the first pair
    try:
        pool = PortPool(lo, hi)
        relay = RtpRelay(pool, "127.0.0.1")
        s = await relay.open_session("c", "acme")
        assert lo not in (s.a.local_port, s.b.local_port)
        assert pool.available == 1  # the squatted port went back to the queue
        relay.close()
        await relay.wait_closed()
    finally:
        squatter.close()


def test_port_pool_hands_out_even_ports_fifo() -> None:
    pool = PortPool(10001, 10008)  # odd start rounds up; 10008 has no +1 inside the range
    assert pool.capacity == 3
    got = [pool.acquire() for _ in range(3)]
    assert got == [10002, 10004, 10006]
    with pytest.raises(PortsExhausted):
        pool.acquire()
    assert pool.exhausted == 1
    pool.release(10004)
    pool.release(10002)
    assert pool.acquire() == 10004  # released ports are reused in release order
    with pytest.raises(ValueError):
        pool.release(10002 + 1)
    with pytest.raises(ValueError):
        PortPool(20000, 20000)
    with pytest.raises(ValueError):
        PortPool(0, 10)


async def test_bad_remote_addresses_are_488(relay: RtpRelay) -> None:
    s = await relay.open_session("c", "acme")
    for host in ("phone.example.com", "::1", "300.1.1.1"):
        with pytest.raises(BadRemote) as exc:
            s.a.set_remote(host, 4000)
        assert exc.value.status_hint == 488
    with pytest.raises(BadRemote):
        s.a.set_remote("127.0.0.1", 70000)


async def test_sessions_are_scoped_by_tenant(relay: RtpRelay) -> None:
    s1 = await relay.open_session("same-call-id", "acme")
    s2 = await relay.open_session("same-call-id", "globex")
    assert relay.sessions("acme") == [s1]
    assert relay.sessions("globex") == [s2]
    assert relay.find("acme", "same-call-id") == [s1]
    assert relay.find("initech", "same-call-id") == []


async def test_closed_relay_refuses_sessions() -> None:
    lo, hi = free_port_pair_range(2)
    relay = RtpRelay(PortPool(lo, hi), "127.0.0.1")
    s = await relay.open_session("c", "acme")
    relay.close()
    assert s.closed
    with pytest.raises(RelayError):
        await relay.open_session("c2", "acme")
    await relay.wait_closed()
    assert relay.pool.available == 2


def _metric(name: str, **labels) -> float:
    v = REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_prometheus_counters_follow_the_traffic(relay: RtpRelay) -> None:
    before_in = _metric("hivepbx_rtp_packets_total", direction="in")
    before_out = _metric("hivepbx_rtp_packets_total", direction="out")
    before_open = _metric("hivepbx_rtp_sessions_opened_total")
    s, a, b = await call(relay)
    for seq in range(3):
        a.send(rtp(seq), s.a.local_port)
        await b.recv()
    assert _metric("hivepbx_rtp_sessions_active") >= 1
    s.close()
    await s.wait_closed()
    # counts of a closed session are kept
    assert _metric("hivepbx_rtp_packets_total", direction="in") - before_in == 3
    assert _metric("hivepbx_rtp_packets_total", direction="out") - before_out == 3
    assert _metric("hivepbx_rtp_sessions_opened_total") - before_open == 1
    assert _metric("hivepbx_rtp_ports", state="free") >= 2
    a.close(), b.close()


async def test_prometheus_counters_never_go_down_when_a_relay_is_gone() -> None:
    import gc

    lo, hi = free_port_pair_range(4)
    gone = RtpRelay(PortPool(lo, hi), "127.0.0.1")
    s, a, b = await call(gone)
    for seq in range(2):
        a.send(rtp(seq), s.a.local_port)
        await b.recv()
    gone.close()
    await gone.wait_closed()
    a.close(), b.close()
    before = (_metric("hivepbx_rtp_packets_total", direction="in"), _metric("hivepbx_rtp_sessions_opened_total"))
    del gone, s
    gc.collect()
    after = (_metric("hivepbx_rtp_packets_total", direction="in"), _metric("hivepbx_rtp_sessions_opened_total"))
    assert after == before  # a counter Prometheus sees go down reads as a restart


needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")


@needs_ipv6
async def test_ipv6_relay() -> None:
    lo, hi = free_port_pair_range(2)
    relay = RtpRelay(PortPool(lo, hi), "::1")
    s = await relay.open_session("c", "acme")
    a, b = await phone("::1"), await phone("::1")
    s.a.set_remote("::1", a.port)
    s.b.set_remote("0:0:0:0:0:0:0:1", b.port)  # any spelling of the address
    a.send(rtp(1), s.a.local_port)
    data, src = await b.recv()
    assert data == rtp(1) and src[:2] == ("::1", s.b.local_port)
    b.send(rtp(2), s.b.local_port)
    assert (await a.recv())[0] == rtp(2)
    with pytest.raises(BadRemote):
        s.a.set_remote("127.0.0.1", 4000)  # an IPv6-only relay cannot reach IPv4
    a.close(), b.close()
    relay.close()
    await relay.wait_closed()


@needs_ipv6
async def test_dual_stack_relay_bridges_ipv4_and_ipv6_phones() -> None:
    lo, hi = free_port_pair_range(2)
    relay = RtpRelay(PortPool(lo, hi), "::")
    s = await relay.open_session("c", "acme")
    a, b = await phone("127.0.0.1"), await phone("::1")
    s.a.set_remote("127.0.0.1", a.port)
    s.b.set_remote("::1", b.port)
    a.send(rtp(1), s.a.local_port, "127.0.0.1")
    assert (await b.recv())[0] == rtp(1)
    b.send(rtp(2), s.b.local_port, "::1")
    data, src = await a.recv()
    assert data == rtp(2) and src == ("127.0.0.1", s.a.local_port)
    assert s.a.remote == ("::ffff:127.0.0.1", a.port)
    a.close(), b.close()
    relay.close()
    await relay.wait_closed()


def test_relay_under_uvloop() -> None:
    async def scenario() -> tuple[bytes, bytes, int]:
        lo, hi = free_port_pair_range(2)
        relay = RtpRelay(PortPool(lo, hi), "127.0.0.1")
        s, a, b = await call(relay)
        a.send(rtp(1), s.a.local_port)
        got_b = (await b.recv())[0]
        b.send(rtp(2), s.b.local_port)
        got_a = (await a.recv())[0]
        s.close()
        await s.wait_closed()
        a.close(), b.close()
        return got_b, got_a, relay.pool.available

    assert uvloop.run(scenario()) == (rtp(1), rtp(2), 2)
