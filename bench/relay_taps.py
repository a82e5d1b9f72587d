"""What call recording and music on hold cost the relay per packet (micro benchmark).

    .venv/bin/python bench/relay_taps.py [--packets 500000]

Calls ``datagram_received`` of a relay socket directly (no kernel, no event loop: a fake
transport whose ``sendto`` does nothing), for: a plain call (no tap: the path every
unrecorded call runs), a call with recording set up but not recording (on demand, waiting
for *1), a call being recorded, and a held party's holder being muted. Prints ns per packet.
Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from types import SimpleNamespace

from node.pbx import hold, recording
from node.rtp_engine.relay import RelayLeg, _Socket


class _NullTransport:
    def sendto(self, data, addr) -> None:
        pass

    def close(self) -> None:
        pass


def _leg_pair():
    relay = SimpleNamespace(loop=asyncio.get_event_loop(), relatch_after=1.0, pool=None)
    a, b = RelayLeg(relay, "a", 40000), RelayLeg(relay, "b", 40002)
    a.rtp.peer, b.rtp.peer = b.rtp, a.rtp
    for s in (a.rtp, b.rtp):
        s.transport = _NullTransport()
    a.rtp.set_sdp("127.0.0.1", 5000)
    b.rtp.set_sdp("127.0.0.1", 6000)
    a.rtp.datagram_received(b"\x80" + b"\x00" * 171, ("127.0.0.1", 5000))  # latch
    return a, b, SimpleNamespace(leg=lambda s: a if s == "a" else b, closed=False)


def _run(sock: _Socket, n: int) -> float:
    pkt = struct.pack("!BBHII", 0x80, 0, 1, 160, 1234) + b"\xff" * 160
    addr = ("127.0.0.1", 5000)
    f = sock.datagram_received
    t = time.perf_counter_ns()
    for _ in range(n):
        f(pkt, addr)
    return (time.perf_counter_ns() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=500_000)
    n = min(ap.parse_args().packets, 5_000_000)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    call = SimpleNamespace(id="x", tenant=SimpleNamespace(id=1), invite=SimpleNamespace(call_id="c"),
                           caller=SimpleNamespace(number="1"), plan=SimpleNamespace(callee="2"))

    async def go() -> None:
        a, b, session = _leg_pair()
        print(f"plain call (no tap)               {_run(a.rtp, n):7.0f} ns/packet")
        rec = recording.Recorder(call, session, "/tmp/hivepbx-bench-unused", "on_demand", {"a": "*1"})
        print(f"recording set up, not recording   {_run(a.rtp, n):7.0f} ns/packet")
        rec.active = True  # recording (payloads kept; not written: the bench never stops it)
        rec._chunks["a"].clear()
        print(f"recording                         {_run(a.rtp, min(n, recording._MAX_PACKETS)):7.0f} ns/packet")
        rec.active = False
        for s, tap in rec._taps.items():
            session.leg(s).remove_tap(tap)
        print(f"plain again (taps removed)        {_run(a.rtp, n):7.0f} ns/packet")
        a.add_tap(hold._drop)
        print(f"holder muted during music on hold {_run(a.rtp, n):7.0f} ns/packet")

    loop.run_until_complete(go())


if __name__ == "__main__":
    main()
