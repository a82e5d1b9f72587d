"""Anchored media: each call gets two legs of bound UDP sockets and packets cross between them.

A session has leg ``a`` (facing the caller) and leg ``b`` (facing the callee); each leg owns
an RTP socket on an even port and an RTCP socket on the next one. What arrives on a leg's
socket leaves through the *other* leg's socket towards the other peer, so each phone sees
the relay as the far end. Packets are relayed as opaque bytes: RTP, RFC 4733 events, SRTP,
STUN and DTLS go through unchanged.

Latching (symmetric RTP, RFC 4961; what rtpengine calls learning): phones behind NAT put a
private address in their SDP, so a leg sends to the source its packets really come from.

* before anything arrived, the leg sends to the SDP address (``set_remote``);
* the first packet on a socket latches that socket's destination to the packet's source;
* after that, packets from the latched source or from the SDP address are relayed (the
  SDP address re-latches at once: it is what the phone itself signalled);
* packets from any other source are dropped and counted — like rtpengine's ``strict-source``
  flag, which rtpengine leaves off by default (it then relays such packets but still sends
  to the learned address). Dropping is our default because a relay port is reachable by
  anyone who scans for it and forwarding their packets injects audio into a call;
* mobility / NAT rebinding: a new source takes over only once the latched source has been
  silent for ``relatch_after`` seconds (rtpengine's ``media-handover``, with a guard). The
  SSRC is not trusted for this: the far end sees it, so it is no secret.

``set_remote`` with a changed address (re-INVITE moved the media) forgets the latch; a latch
learned before the first ``set_remote`` is kept (the callee's RTP often beats its 200 OK).
0.0.0.0, ``::`` or port 0 (hold, rejected stream) stops sending towards that peer until the
next ``set_remote`` with a real address; what arrives from it is still relayed.

Sockets kept between calls: a closed session's port pairs stay bound and go to a FIFO of
idle pairs instead of being closed; a new session takes a pair that has been idle for at
least ``reuse_after`` seconds (the quarantine that keeps a late packet of the old call from
latching the new one) and only binds a fresh pair when there is none. This saves a call
four socket()+bind()+transport setups and four closes. What reaches an idle pair is dropped
(counted as ``dropped_no_destination``). The idle FIFO is bounded (``max_idle``, from the
process's file limit), pairs idle for ``idle_ttl`` are closed, parking stops while the port
pool runs low (``PortPool.low_water``) and ``close()`` closes them all.

Hot path: ``datagram_received`` compares the source with the latched one, bumps plain
integer counters and calls ``sendto``; no logging, no objects, no clock. Prometheus sees
the counters through a collector at scrape time (``node.rtp_engine.metrics``).
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import socket
import weakref
from collections import deque
from dataclasses import dataclass

from node.rtp_engine import metrics
from node.rtp_engine.errors import BadRemote, RelayError
from node.rtp_engine.port_pool import PortPool
from node.rtp_engine.sockets import bind_address, bind_pair, normalize_host

__all__ = ["PortPool", "RtpRelay", "RelaySession", "RelayLeg", "LegStats", "SessionStats"]

#: bytes queued in a socket's transport before we drop instead of queueing more (~90 ms of
#: 50 G.711 streams): a relay must not buffer its way into latency and memory growth
_WRITE_HIGH_WATER = 64 * 1024


@dataclass(frozen=True, slots=True)
class LegStats:
    """Counters of one leg (RTP and RTCP together, RTCP also apart). *in* is what its peer
    sent to the relay, *out* what the relay sent to its peer."""

    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    rtcp_packets_in: int
    rtcp_packets_out: int
    #: from a source that is neither latched nor the SDP address
    dropped_source: int
    #: arrived here but the other leg had nowhere to send (no SDP address, hold, not latched)
    dropped_no_destination: int
    #: the other leg's socket was congested or sendto failed
    dropped_send: int
    #: (host, port) the RTP socket latched to, None before the first packet
    latched: tuple[str, int] | None

    @property
    def dropped(self) -> int:
        return self.dropped_source + self.dropped_no_destination + self.dropped_send


@dataclass(frozen=True, slots=True)
class SessionStats:
    a: LegStats
    b: LegStats

    @property
    def dropped(self) -> int:
        return self.a.dropped + self.b.dropped


_NOWHERE: "_Socket" = None  # type: ignore[assignment]  # set below the class


class _Socket(asyncio.DatagramProtocol):
    """One bound UDP socket of a leg (its RTP or its RTCP port)."""

    __slots__ = (
        "relay", "leg", "transport", "peer", "paused", "lost", "held",
        "src_host", "src_port", "sdp_host", "sdp_port", "dest",
        "cand_host", "cand_port", "cand_since", "cand_mark",
        "packets_in", "bytes_in", "packets_out", "bytes_out",
        "dropped_source", "dropped_no_destination", "dropped_send", "relatches", "taps",
    )

    def __init__(self, relay: "RtpRelay") -> None:
        self.relay = relay
        self.leg: RelayLeg | None = None
        self.transport: asyncio.DatagramTransport | None = None
        #: the socket of the other leg, through which what we receive goes out (``_NOWHERE``
        #: until the session is wired and once it is over: no reference cycle to outlive it)
        self.peer: _Socket = _NOWHERE
        self.paused = False
        self.lost = False
        #: the peer signalled "send me nothing" (c=0.0.0.0 / port 0)
        self.held = False
        # latched source (None until the first packet) and the SDP address
        self.src_host: str | None = None
        self.src_port = -1
        self.sdp_host: str | None = None
        self.sdp_port = -1
        #: where the other leg's packets go: None when held, else the latched source, else the
        #: SDP address, else None
        self.dest: tuple[str, int] | None = None
        # a foreign source waiting to take over (see module docstring)
        self.cand_host: str | None = None
        self.cand_port = -1
        self.cand_since = 0.0
        self.cand_mark = 0
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.dropped_source = self.dropped_no_destination = self.dropped_send = self.relatches = 0
        #: callables shown each packet (``_TappedSocket``); None on the plain fast path
        self.taps: list | None = None

    # ------------------------------------------------------------------ hot path
    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if addr[1] != self.src_port or addr[0] != self.src_host:
            if not self._learn(addr):
                self.dropped_source += 1
                return
        n = len(data)
        self.packets_in += 1
        self.bytes_in += n
        peer = self.peer
        dest = peer.dest
        if dest is None:
            self.dropped_no_destination += 1
            return
        if peer.paused:
            peer.dropped_send += 1
            return
        peer.transport.sendto(data, dest)  # type: ignore[union-attr]
        peer.packets_out += 1
        peer.bytes_out += n

    # ------------------------------------------------------------------ latching (slow path)
    def _learn(self, addr) -> bool:
        host, port = addr[0], addr[1]
        if self.src_host is None or (host == self.sdp_host and port == self.sdp_port):
            self._latch(host, port)
            return True
        if host != self.cand_host or port != self.cand_port:
            self.cand_host, self.cand_port = host, port
            self.cand_since = self.relay.loop.time()
            self.cand_mark = self.packets_in
            return False
        now = self.relay.loop.time()
        if self.packets_in != self.cand_mark:
            # the latched source is still talking: the newcomer waits a full quiet gap again
            self.cand_since, self.cand_mark = now, self.packets_in
            return False
        if now - self.cand_since >= self.relay.relatch_after:
            self._latch(host, port)
            return True
        return False

    def _latch(self, host: str, port: int) -> None:
        if self.src_host is not None:
            self.relatches += 1
        self.src_host, self.src_port = host, port
        self.cand_host, self.cand_port = None, -1
        self.dest = None if self.held else (host, port)

    def set_sdp(self, host: str | None, port: int) -> None:
        if host is None:
            # hold or rejected stream: keep what we know, send nothing
            self.held = True
            self.dest = None
            return
        moved = self.sdp_host is not None and (host != self.sdp_host or port != self.sdp_port)
        self.sdp_host, self.sdp_port = host, port
        self.held = False
        if moved:
            # a re-INVITE moved the media elsewhere: what we learned no longer holds. (A latch
            # learned before the first SDP is kept: the phone's packets beat its 200 OK.)
            self.src_host, self.src_port = None, -1
            self.cand_host, self.cand_port = None, -1
        self.dest = (self.src_host, self.src_port) if self.src_host is not None else (host, port)

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors and failed sends land here; media is lossy, so count and go on
        self.dropped_send += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if not self.lost:
            self.lost = True
            self.leg._socket_gone()  # type: ignore[union-attr]


#: the peer of a socket without a session: it has no destination, so what arrives is dropped
_NOWHERE = _Socket(None)  # type: ignore[arg-type]
_NOWHERE.peer = _NOWHERE


class _TappedSocket(_Socket):
    """A socket whose packets are shown to taps first (call recording, in-call keys, music on
    hold). A socket becomes one by class change when the first tap is added and goes back
    when the last is removed: plain calls never run this code, only tapped ones pay.
    A tap returning False keeps the packet from being relayed (counted in, not out)."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if addr[1] != self.src_port or addr[0] != self.src_host:
            if not self._learn(addr):
                self.dropped_source += 1
                return
        relay = True
        for tap in self.taps or ():
            if tap(data) is False:
                relay = False
        if relay:
            _Socket.datagram_received(self, data, addr)
        else:
            self.packets_in += 1
            self.bytes_in += len(data)


class RelayLeg:
    """One side of a session: an RTP socket (``local_port``, even) and RTCP (``local_port`` + 1)."""

    __slots__ = ("name", "local_port", "rtp", "rtcp", "session", "_relay", "_open")

    def __init__(self, relay: "RtpRelay", name: str, port: int) -> None:
        self.name = name
        self.local_port = port
        self.rtp = _Socket(relay)
        self.rtcp = _Socket(relay)
        self.rtp.leg = self.rtcp.leg = self
        self.session: RelaySession | None = None
        self._relay = relay
        self._open = 2

    def _socket_gone(self) -> None:
        self._open -= 1
        if self._open == 0:
            self._relay.pool.release(self.local_port)
            self.session._leg_gone()  # type: ignore[union-attr]

    @property
    def local_rtcp_port(self) -> int:
        return self.local_port + 1

    def set_remote(self, host: str, port: int, rtcp_port: int | None = None, rtcp_host: str | None = None) -> None:
        """Where this leg's peer said (in SDP) it receives: RTP at ``host``:``port``, RTCP at
        ``rtcp_host``:``rtcp_port`` (default ``host``:``port`` + 1, or a=rtcp, RFC 3605).

        An unspecified host (0.0.0.0, ``::``) or port 0 means "send nothing" (hold / rejected)
        until a real address is set again. A changed address drops what was latched. ``host`` must be an IP literal of a family
        this relay can reach, else ``BadRemote`` (488).
        """
        if not 0 <= port <= 65535 or (rtcp_port is not None and not 0 <= rtcp_port <= 65535):
            raise BadRemote(f"bad media port {port}/{rtcp_port}")
        rtp_host = self._relay._normalize(host)
        if rtp_host is None or port == 0:
            self.rtp.set_sdp(None, -1)
            self.rtcp.set_sdp(None, -1)
            return
        c_host = rtp_host if rtcp_host is None or rtcp_host == host else self._relay._normalize(rtcp_host)
        c_port = port + 1 if rtcp_port is None else rtcp_port
        self.rtp.set_sdp(rtp_host, port)
        if c_host is None or c_port == 0 or c_port > 65535:
            self.rtcp.set_sdp(None, -1)
        else:
            self.rtcp.set_sdp(c_host, c_port)

    # ------------------------------------------------------------------ taps and injection
    def add_tap(self, tap) -> None:
        """Show every RTP packet from this leg's peer to ``tap(data) -> bool | None`` (False:
        do not relay it). Called on the event loop, per packet: keep it cheap."""
        sock = self.rtp
        if sock.taps is None:
            sock.taps = []
            sock.__class__ = _TappedSocket
        sock.taps.append(tap)

    def remove_tap(self, tap) -> None:
        sock = self.rtp
        if sock.taps and tap in sock.taps:
            sock.taps.remove(tap)
        if not sock.taps:
            sock.taps = None
            sock.__class__ = _Socket

    def inject(self, packet: bytes) -> bool:
        """Send an RTP packet of our own to this leg's peer, from the leg's port (the peer
        sees the same source as the relayed media). False when there is nowhere to send."""
        sock = self.rtp
        dest = sock.dest
        if dest is None or sock.transport is None or sock.paused or sock.lost:
            return False
        sock.transport.sendto(packet, dest)
        sock.packets_out += 1
        sock.bytes_out += len(packet)
        return True

    @property
    def remote(self) -> tuple[str, int] | None:
        """Where RTP for this leg's peer goes now (latched source, else SDP address)."""
        return self.rtp.dest

    @property
    def latched(self) -> bool:
        return self.rtp.src_host is not None

    def stats(self) -> LegStats:
        r, c = self.rtp, self.rtcp
        return LegStats(
            packets_in=r.packets_in + c.packets_in,
            bytes_in=r.bytes_in + c.bytes_in,
            packets_out=r.packets_out + c.packets_out,
            bytes_out=r.bytes_out + c.bytes_out,
            rtcp_packets_in=c.packets_in,
            rtcp_packets_out=c.packets_out,
            dropped_source=r.dropped_source + c.dropped_source,
            dropped_no_destination=r.dropped_no_destination + c.dropped_no_destination,
            dropped_send=r.dropped_send + c.dropped_send,
            latched=(r.src_host, r.src_port) if r.src_host is not None else None,
        )


class RelaySession:
    """The anchored media of one call. ``close()`` is idempotent; its ports return to the
    pool once the sockets are really closed (``await wait_closed()``)."""

    __slots__ = ("id", "call_id", "tenant", "a", "b", "closed", "_relay", "_done", "_open_legs")

    def __init__(self, relay: "RtpRelay", sid: int, call_id: str, tenant: str, a: RelayLeg, b: RelayLeg) -> None:
        self.id = sid
        self.call_id = call_id
        self.tenant = tenant
        self.a = a
        self.b = b
        self.closed = False
        self._relay = relay
        #: what ``wait_closed`` awaits, made on demand (most sessions nobody waits for)
        self._done: asyncio.Future | None = None
        self._open_legs = 2
        a.session = b.session = self

    def _leg_gone(self) -> None:
        self._open_legs -= 1
        if self._open_legs == 0:
            self._relay._pending.pop(self.id, None)
            self._unlink()
            if self._done is not None and not self._done.done():
                self._done.set_result(None)

    def _unlink(self) -> None:
        """Every socket is closed or parked: drop the references that point back (socket →
        leg, socket → other leg's socket, leg → session), so that reference counting frees
        the session without the garbage collector. What points forward stays (stats)."""
        for leg in (self.a, self.b):
            leg.session = None
            for sock in (leg.rtp, leg.rtcp):
                sock.leg = None
                sock.peer = _NOWHERE

    def leg(self, name: str) -> RelayLeg:
        """``'a'`` or ``'b'``."""
        if name == "a":
            return self.a
        if name == "b":
            return self.b
        raise ValueError(f"no leg {name!r}")

    def stats(self) -> SessionStats:
        return SessionStats(self.a.stats(), self.b.stats())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._relay._close_session(self)

    async def wait_closed(self) -> None:
        if self._open_legs:
            if self._done is None:
                self._done = self._relay.loop.create_future()
            await asyncio.shield(self._done)

    def __repr__(self) -> str:
        return (f"<RelaySession {self.id} tenant={self.tenant!r} call_id={self.call_id!r} "
                f"a={self.a.local_port} b={self.b.local_port}{' closed' if self.closed else ''}>")


class RtpRelay:
    """Opens and tracks the relay sessions of one node.

    ``bind_host``: an IPv4 address (IPv4 only), an IPv6 address (IPv6 only), ``'::'``
    (dual stack: IPv4 peers appear as ``::ffff:a.b.c.d``) or ``''`` (``'::'`` where the host
    has IPv6, else ``'0.0.0.0'``).
    """

    def __init__(
        self, pool: PortPool, bind_host: str = "0.0.0.0", *, relatch_after: float = 1.0,
        reuse_after: float = 1.0, max_idle: int | None = None, idle_ttl: float = 30.0,
    ) -> None:
        self.pool = pool
        self.bind_host, self.family, self.dual_stack = bind_address(bind_host)
        try:
            socket.inet_pton(self.family, self.bind_host)
        except OSError:
            raise ValueError(f"RTP bind address must be an IP literal, not {bind_host!r}") from None
        #: seconds the latched source must be silent before another source may take over
        self.relatch_after = relatch_after
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[int, RelaySession] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, RelaySession] = {}  # closed sessions whose sockets are closing
        self.closed = False
        #: counters of sessions already closed, folded in so totals never go down
        self.closed_totals = _Totals()
        self.sessions_opened = 0
        #: seconds a closed session's port pair stays idle before a new session may take it
        self.reuse_after = reuse_after
        #: port pairs kept bound at most (0: close every pair at once, as without reuse)
        self.max_idle = _default_max_idle() if max_idle is None else max_idle
        #: seconds an idle pair is kept when no session takes it
        self.idle_ttl = idle_ttl
        self._idle: deque[_IdlePair] = deque()
        self._idle_closing: set[_IdlePair] = set()
        self._idle_timer: asyncio.TimerHandle | None = None
        #: sessions whose two legs were both idle pairs / pairs parked instead of closed
        self.pairs_reused = 0
        self.pairs_parked = 0
        ref = weakref.ref(self)  # the pool must not keep the relay alive (metrics.track)

        def reclaim() -> None:
            relay = ref()
            if relay is not None:
                relay._reclaim_idle()

        pool.reclaim = reclaim
        metrics.track(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # ------------------------------------------------------------------ sessions
    async def open_session(self, call_id: str, tenant: str) -> RelaySession:
        """Bind two legs for a call. Raises ``PortsExhausted`` (503) when the pool is empty."""
        if self.closed:
            raise RelayError("RTP relay is closed", 503)
        loop = self.loop
        idle = self._idle
        if len(idle) >= 2 and idle[1].ready_at <= loop.time():
            return self._open_on_idle_pairs(call_id, tenant)  # the usual case under load
        # per leg: (port, rtp, rtcp) with sockets to wire up, or an idle pair to take over
        got: list[tuple[int, socket.socket, socket.socket] | _IdlePair] = []
        try:
            now = loop.time()
            for _ in range(2):
                idle = self._idle
                if idle and idle[0].ready_at <= now:
                    got.append(self._take_idle())
                    continue
                try:
                    got.append(self._bind_pair())
                except RelayError:
                    if not idle:
                        raise
                    got.append(self._take_idle())  # out of ports: quarantine is a luxury
        except BaseException:
            for item in got:
                if isinstance(item, _IdlePair):
                    item.close()
                else:
                    item[1].close()
                    item[2].close()
                    self.pool.release(item[0])
            raise
        ports = [item.port if isinstance(item, _IdlePair) else item[0] for item in got]
        a, b = RelayLeg(self, "a", ports[0]), RelayLeg(self, "b", ports[1])
        # cross-wire before any transport exists, so no datagram can find a half-built session
        a.rtp.peer, b.rtp.peer = b.rtp, a.rtp
        a.rtcp.peer, b.rtcp.peer = b.rtcp, a.rtcp
        session = RelaySession(self, next(self._ids), call_id, tenant, a, b)
        protos: list[tuple[_Socket, socket.socket]] = []
        reused: list[RelayLeg] = []
        for leg, item in ((a, got[0]), (b, got[1])):
            if isinstance(item, _IdlePair):
                item.hand_over(leg)
                reused.append(leg)
            else:
                protos.append((leg.rtp, item[1]))
                protos.append((leg.rtcp, item[2]))
        if protos:
            created: list[_Socket] = []
            try:
                for proto, sock in protos:
                    await loop.create_datagram_endpoint(lambda p=proto: p, sock=sock)
                    created.append(proto)
            except BaseException:
                session.closed = True
                for proto, sock in protos:
                    if proto in created:
                        proto.transport.close()  # type: ignore[union-attr]  # → connection_lost
                    else:
                        sock.close()
                        proto._gone()
                for leg in reused:
                    leg.rtp.transport.close()  # type: ignore[union-attr]
                    leg.rtcp.transport.close()  # type: ignore[union-attr]
                raise
        else:
            self.pairs_reused += 1
        self._sessions[session.id] = session
        self.sessions_opened += 1
        metrics.session_opened()
        if self.closed:  # the relay was closed while we awaited
            session.close()
            raise RelayError("RTP relay is closed", 503)
        return session

    def _open_on_idle_pairs(self, call_id: str, tenant: str) -> RelaySession:
        """``open_session`` when the two pairs idle longest are out of quarantine: nothing
        to bind or await (the FIFO is in order of ``ready_at``)."""
        pa, pb = self._take_idle(), self._take_idle()
        a, b = RelayLeg(self, "a", pa.port), RelayLeg(self, "b", pb.port)
        a.rtp.peer, b.rtp.peer = b.rtp, a.rtp
        a.rtcp.peer, b.rtcp.peer = b.rtcp, a.rtcp
        session = RelaySession(self, next(self._ids), call_id, tenant, a, b)
        pa.hand_over(a)
        pb.hand_over(b)
        self.pairs_reused += 1
        self._sessions[session.id] = session
        self.sessions_opened += 1
        metrics.session_opened()
        return session

    def sessions(self, tenant: str) -> list[RelaySession]:
        """Open sessions of one tenant (never another's)."""
        return [s for s in self._sessions.values() if s.tenant == tenant]

    def find(self, tenant: str, call_id: str) -> list[RelaySession]:
        """Open sessions of ``tenant`` for ``call_id`` (Call-IDs are unique per tenant at best)."""
        return [s for s in self._sessions.values() if s.tenant == tenant and s.call_id == call_id]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def idle_pairs(self) -> int:
        """Port pairs kept bound for the next sessions."""
        return len(self._idle)

    def close(self) -> None:
        """Close every session and every idle pair, and refuse new sessions. Idempotent."""
        self.closed = True
        for s in list(self._sessions.values()):
            s.close()
        self._close_idle(len(self._idle))
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def wait_closed(self) -> None:
        for s in list(self._pending.values()):
            await s.wait_closed()
        for p in list(self._idle_closing):
            await p.wait_closed()

    def totals(self) -> "_Totals":
        """Counters summed over every session this relay ever had (for metrics)."""
        t = _Totals()
        t.add_totals(self.closed_totals)
        for s in self._sessions.values():
            t.add(s)
        return t

    # ------------------------------------------------------------------ internals
    def _bind_pair(self) -> tuple[int, socket.socket, socket.socket]:
        return bind_pair(self.pool, self.family, self.bind_host, self.dual_stack)

    def _close_session(self, session: RelaySession) -> None:
        self._sessions.pop(session.id, None)
        self.closed_totals.add(session)
        self._pending[session.id] = session
        for leg in (session.a, session.b):
            if self._can_park(leg):
                self._park(leg)  # → the leg is done at once, its sockets stay bound
                continue
            for sock in (leg.rtp, leg.rtcp):
                if sock.transport is not None:
                    sock.transport.close()  # → connection_lost → the leg gives its port back

    # ------------------------------------------------------------------ idle pairs
    def _can_park(self, leg: "RelayLeg") -> bool:
        if self.closed or len(self._idle) >= self.max_idle or not self.pool.can_park or leg._open != 2:
            return False
        for sock in (leg.rtp, leg.rtcp):
            t = sock.transport
            if t is None or sock.lost or sock.paused or t.is_closing() or t.get_write_buffer_size():
                return False
        return True

    def _park(self, leg: "RelayLeg") -> None:
        pair = _IdlePair(self, leg.local_port, leg.rtp.transport, leg.rtcp.transport,  # type: ignore[arg-type]
                         self.loop.time() + self.reuse_after)
        for sock in (leg.rtp, leg.rtcp):
            # the old session's objects stay readable (stats) but can no longer send
            sock.transport = None
            sock.lost = True
        leg._open = 0
        self.pool.park(leg.local_port)
        self._idle.append(pair)
        self.pairs_parked += 1
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.idle_ttl, self._expire_idle)
        leg.session._leg_gone()  # type: ignore[union-attr]

    def _take_idle(self) -> "_IdlePair":
        pair = self._idle.popleft()
        self.pool.unpark(pair.port)
        return pair

    def _close_idle(self, n: int) -> None:
        """Close the ``n`` pairs idle longest; their ports return to the pool once closed."""
        for _ in range(min(n, len(self._idle))):
            self._idle.popleft().close()

    def _reclaim_idle(self) -> None:
        # the pool runs low: give it back a few ports (they are free once the sockets closed)
        self._close_idle(max(1, len(self._idle) // 4))

    def _expire_idle(self) -> None:
        self._idle_timer = None
        deadline = self.loop.time() + self.reuse_after - self.idle_ttl
        n = 0
        for pair in self._idle:
            if pair.ready_at > deadline:
                break
            n += 1
        self._close_idle(n)
        if self._idle and not self.closed:
            self._idle_timer = self.loop.call_later(self.idle_ttl, self._expire_idle)

    def _normalize(self, host: str) -> str | None:
        """``host`` as the kernel reports sources on our sockets; None for 0.0.0.0/::."""
        return normalize_host(host, self.family, self.dual_stack, "relay")


class _IdlePair(asyncio.DatagramProtocol):
    """The two bound sockets of a closed session's leg, waiting for the next session; the
    protocol of both transports meanwhile (drops what arrives)."""

    __slots__ = ("relay", "port", "rtp", "rtcp", "ready_at", "_open", "_done")

    def __init__(self, relay: "RtpRelay", port: int, rtp: asyncio.DatagramTransport,
                 rtcp: asyncio.DatagramTransport, ready_at: float) -> None:
        self.relay = relay
        self.port = port
        self.rtp = rtp
        self.rtcp = rtcp
        self.ready_at = ready_at
        self._open = 2
        self._done: asyncio.Future | None = None
        rtp.set_protocol(self)
        rtcp.set_protocol(self)

    def hand_over(self, leg: "RelayLeg") -> None:
        """Make these sockets ``leg``'s (its port is ``self.port``, taken out of the pool)."""
        for sock, transport in ((leg.rtp, self.rtp), (leg.rtcp, self.rtcp)):
            sock.transport = transport
            transport.set_protocol(sock)

    def close(self) -> None:
        """Close the sockets of a pair still idle (or taken by a session that failed to open)."""
        if self._open:
            self.relay._idle_closing.add(self)
        self.rtp.close()  # → connection_lost on whichever protocol holds the transport now
        self.rtcp.close()

    async def wait_closed(self) -> None:
        if self._open:
            if self._done is None:
                self._done = self.relay.loop.create_future()
            await asyncio.shield(self._done)

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.relay.closed_totals.dropped_no_destination += 1

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._open -= 1
        if self._open:
            return
        relay = self.relay
        try:
            relay._idle.remove(self)  # closed from outside (not by us): no longer reusable
        except ValueError:
            pass
        relay._idle_closing.discard(self)
        relay.pool.release(self.port)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


def _default_max_idle() -> int:
    """Idle pairs (two descriptors each) a process may keep: a quarter of its file limit in
    descriptors, so sockets kept for reuse leave most of it to calls and SIP (and a bind
    that fails for want of descriptors takes an idle pair instead)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover
        return 64
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, min(8192, soft // 8))


class _Totals:
    """Counters summed over sessions (for closed ones, and at scrape time for live ones)."""

    __slots__ = ("packets_in", "bytes_in", "packets_out", "bytes_out", "dropped_source",
                 "dropped_no_destination", "dropped_send", "relatches")

    def __init__(self) -> None:
        for k in self.__slots__:
            setattr(self, k, 0)

    def add_socket(self, s: _Socket) -> None:
        self.packets_in += s.packets_in
        self.bytes_in += s.bytes_in
        self.packets_out += s.packets_out
        self.bytes_out += s.bytes_out
        self.dropped_source += s.dropped_source
        self.dropped_no_destination += s.dropped_no_destination
        self.dropped_send += s.dropped_send
        self.relatches += s.relatches

    def add_totals(self, other: "_Totals") -> None:
        for k in self.__slots__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def add(self, session: RelaySession) -> None:
        for leg in (session.a, session.b):
            self.add_socket(leg.rtp)
            self.add_socket(leg.rtcp)
