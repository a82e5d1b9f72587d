"""The media engine of a node: binds endpoints from the RTP port pool and drives them all from
one 20 ms timer.

One timer, not a task per stream: a task per stream costs a wake-up, a coroutine resume and a
heap entry every 20 ms per stream, and each stream drifts on its own. Here one ``call_at``
per tick walks the tickers (music on hold, conferences) and then every endpoint, each of
which sends at most one packet; the deadline comes from ``node.media.clock.FrameClock``, so
a late tick is caught up (bounded) instead of accumulating drift. The timer runs only while
something is open.

Prompt audio is read and G.711-encoded once per (file, codec) and cached, so a thousand
callers hearing the same greeting cost a thousand slices and ``sendto`` calls per tick,
not a thousand encoders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np

from node.media import g711
from node.media.clock import FrameClock
from node.media.tones import FRAME, TONES, render
from node.media.wav import read_wav
from node.rtp_engine.errors import RelayError
from node.rtp_engine.port_pool import PortPool
from node.rtp_engine.sockets import bind_address, bind_pair, normalize_host

log = logging.getLogger("hivepbx.media")

_CACHE_ENTRIES = 256


class Ticker(Protocol):
    def tick(self) -> None: ...


class MediaEngine:
    """``bind_host`` like the relay's: an IP literal, '::' for dual stack, '' to detect."""

    #: RFC 3550 §6.2 minimum RTCP report interval (seconds) of every endpoint; the first
    #: report may come after half of it, and each interval is randomised (0.5-1.5 times)
    rtcp_min_interval = 5.0

    def __init__(self, pool: PortPool, bind_host: str = "0.0.0.0", *, period: float = 0.020) -> None:
        self.pool = pool
        self.bind_host, self.family, self.dual_stack = bind_address(bind_host)
        self.period = period
        self.endpoints: set = set()
        self.tickers: list[Ticker] = []
        self.clock: FrameClock | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clips: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._tones: dict[tuple[str, int], bytes] = {}
        self.closed = False
        #: totals of closed endpoints (live ones are summed at scrape time)
        self.closed_totals = dict.fromkeys(("packets_in", "packets_out", "dropped", "digits"), 0)
        self.endpoints_opened = 0
        #: a tick's work took longer than a period (the engine is overloaded)
        self.overruns = 0
        self.ticks = 0
        #: conference mixer (node/media_engine/conference.py), made when the first one opens
        self._conference_mixer = None
        from node.media_engine import metrics

        metrics.track(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # ------------------------------------------------------------------ endpoints
    async def open_endpoint(self, call_id: str = "", tenant: str = "", *, inband_dtmf: bool = True):
        """A bound endpoint (RTP on an even port of the pool, RTCP on the next). Raises
        ``PortsExhausted`` (503) when the pool is empty."""
        from node.media_engine.endpoint import MediaEndpoint

        if self.closed:
            raise RelayError("media engine is closed", 503)
        port, rtp, rtcp = self._bind_pair()
        ep = MediaEndpoint(self, port, call_id, tenant, inband_dtmf=inband_dtmf)
        drain = ep.rtcp = _RtcpSocket(ep)
        try:
            await self.loop.create_datagram_endpoint(lambda: ep, sock=rtp)
            await self.loop.create_datagram_endpoint(lambda: drain, sock=rtcp)
        except BaseException:
            for t in (ep.transport, drain.transport):
                if t is not None:
                    t.close()
            rtp.close()
            rtcp.close()
            self.pool.release(port)
            raise
        self.endpoints.add(ep)
        self.endpoints_opened += 1
        self._ensure_clock()
        return ep

    def _endpoint_closed(self, ep) -> None:
        if ep in self.endpoints:
            self.endpoints.discard(ep)
            t = self.closed_totals
            t["packets_in"] += ep.packets_in
            t["packets_out"] += ep.packets_out
            t["dropped"] += ep.dropped
            t["digits"] += ep.digits_received
            self.pool.release(ep.local_port)

    def _bind_pair(self) -> tuple[int, socket.socket, socket.socket]:
        return bind_pair(self.pool, self.family, self.bind_host, self.dual_stack)

    def normalize(self, host: str) -> str | None:
        """``host`` as the kernel reports sources on our sockets; None for 0.0.0.0 / ::."""
        return normalize_host(host, self.family, self.dual_stack, "engine")

    # ------------------------------------------------------------------ the clock
    def add_ticker(self, t: Ticker) -> None:
        if t not in self.tickers:
            self.tickers.append(t)
            self._ensure_clock()

    def remove_ticker(self, t: Ticker) -> None:
        if t in self.tickers:
            self.tickers.remove(t)

    def _ensure_clock(self) -> None:
        if self._timer is not None or self.closed:
            return
        now = self.loop.time()
        self.clock = FrameClock(now, self.period)
        self._timer = self.loop.call_at(self.clock.next_due, self._on_tick)

    def _on_tick(self) -> None:
        self._timer = None
        clock = self.clock
        assert clock is not None
        loop = self.loop
        n = clock.due(loop.time())
        for _ in range(n):
            self.ticks += 1
            for t in list(self.tickers):
                t.tick()
            for ep in list(self.endpoints):
                ep.tick()
        if loop.time() - clock.next_due > self.period:
            self.overruns += 1
        if (self.endpoints or self.tickers) and not self.closed:
            self._timer = loop.call_at(clock.next_due, self._on_tick)

    # ------------------------------------------------------------------ audio cache
    def clip(self, path: str | Path, payload_type: int) -> bytes:
        """The file G.711-encoded, padded with silence to whole 20 ms frames (cached by path,
        modification time and codec). Raises ``WavFormatError`` / ``OSError`` for bad files."""
        p = str(path)
        st = os.stat(p)
        key = (p, st.st_mtime_ns, payload_type)
        data = self._clips.get(key)
        if data is not None:
            self._clips.move_to_end(key)
            return data
        samples = read_wav(p)
        pad = (-len(samples)) % FRAME
        if pad:
            samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
        data = g711.encode(payload_type, samples)
        self._clips[key] = data
        if len(self._clips) > _CACHE_ENTRIES:
            self._clips.popitem(last=False)
        return data

    def tone(self, name: str, payload_type: int) -> bytes:
        """One encoded period of a named tone (node.media.tones.TONES)."""
        key = (name, payload_type)
        data = self._tones.get(key)
        if data is None:
            try:
                spec = TONES[name]
            except KeyError:
                raise ValueError(f"unknown tone {name!r}: one of {', '.join(TONES)}") from None
            data = self._tones[key] = g711.encode(payload_type, render(spec).ravel())
        return data

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.closed = True
        for ep in list(self.endpoints):
            ep.close()
        self.tickers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def totals(self) -> dict[str, int]:
        t = dict(self.closed_totals)
        for ep in self.endpoints:
            t["packets_in"] += ep.packets_in
            t["packets_out"] += ep.packets_out
            t["dropped"] += ep.dropped
            t["digits"] += ep.digits_received
        return t


class _RtcpSocket(asyncio.DatagramProtocol):
    """The RTCP half of an endpoint's port pair (RFC 3550 §11: RTP port + 1): what arrives
    goes to the endpoint's RTCP session (node/media/rtcp.py)."""

    def __init__(self, ep) -> None:
        self.ep = ep
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.ep.rtcp_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP for a report to a peer without an RTCP socket: nothing to do about it
