"""A finished relay session is freed by reference counting (node/rtp_engine/relay.py,
``RelaySession._unlink``): its sockets, legs and session point at each other while it runs,
and once every socket is closed or parked those back-references are dropped, so an ended
call leaves no cyclic garbage for the collector. Both ways a leg ends are covered: sockets
closed (no idle pairs kept) and sockets parked for a later session."""

from __future__ import annotations

import gc

import pytest

from node.rtp_engine import PortPool, RtpRelay
from node.rtp_engine.relay import RelayLeg, RelaySession, _Socket
from tests.integration.test_rtp_relay import call, free_port_pair_range, phone, rtp


@pytest.fixture(params=[0, 16], ids=["closed", "parked"])
async def relay(request):
    lo, hi = free_port_pair_range(24)
    r = RtpRelay(PortPool(lo, hi), "127.0.0.1", reuse_after=0.2, max_idle=request.param)
    yield r
    r.close()
    await r.wait_closed()


async def test_an_ended_session_is_freed_without_the_garbage_collector(relay: RtpRelay) -> None:
    s, a, b = await call(relay)
    a.send(rtp(1), s.a.local_port)
    assert (await b.recv())[0] == rtp(1)  # wired: a's packets leave through b
    gc.collect()
    gc.disable()
    try:
        s.close()
        await s.wait_closed()
        stats = s.stats()  # still readable after the end
        assert stats.a.packets_in == 1 and stats.b.packets_out == 1
        del s, stats
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector would have had to free stays here
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, (RelaySession, RelayLeg, _Socket))]
        assert cyclic == [], f"left to the garbage collector: {cyclic}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_socket_of_an_ended_session_relays_nothing(relay: RtpRelay) -> None:
    s = await relay.open_session("c1", "acme")
    b = await phone()
    s.b.set_remote(b.host, b.port)
    sock = s.a.rtp
    s.close()
    await s.wait_closed()
    # a datagram the transport delivered late finds no other leg: dropped, counted
    sock.datagram_received(rtp(2), ("127.0.0.1", 40000))
    assert sock.dropped_no_destination == 1 and sock.peer.transport is None


def test_a_port_held_by_another_process_leaves_no_garbage_behind() -> None:
    """``bind_pair`` skips a port someone else holds; the failure it remembers must not keep
    its frame and sockets alive through the exception's traceback (a cycle per busy port)."""
    import socket

    from node.rtp_engine.sockets import bind_pair

    lo, hi = free_port_pair_range(4)
    pool = PortPool(lo, hi)
    first = pool._free[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", first))
        gc.collect()
        gc.disable()
        try:
            port, rtp_sock, rtcp_sock = bind_pair(pool, socket.AF_INET, "127.0.0.1", False)
            rtp_sock.close()
            rtcp_sock.close()
            assert port != first
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [o for o in gc.garbage if isinstance(o, (OSError, socket.socket))]
            assert left == [], f"left to the garbage collector: {left}"
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
