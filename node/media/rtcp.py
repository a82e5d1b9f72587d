"""RTCP (RFC 3550 §6): the packets, the receiver statistics behind a report block, and the
report timer, for the streams the node terminates itself.

Pure: the caller passes the clock in (``now``: a monotonic time in seconds; ``wall``: Unix
time for the NTP timestamps of sender reports), so everything here runs under a fake clock.

* ``parse_rtcp(data)`` -> list of packets of a compound datagram (SR, RR, SDES, BYE; other
  types such as APP or feedback are kept as ``UnknownRtcp``); anything malformed raises
  ``RtcpError`` (a ``MediaError``) saying what is wrong; it never raises anything else.
* ``SenderReport`` / ``ReceiverReport`` / ``Sdes`` / ``Bye`` serialise with ``to_bytes()``;
  ``compound(*packets)`` joins them.
* ``ReceptionStats`` is RFC 3550 A.1 (sequence validation and extended highest sequence),
  A.3 (expected, lost, fraction lost) and A.8 (interarrival jitter) for one remote source.
* ``RtcpSession`` ties them together for one endpoint: it says when a report is due
  (A.7, with the randomisation), builds SR or RR + SDES CNAME (+ BYE at the end), and reads
  the peer's reports into ``PeerReport`` (round-trip time from LSR/DLSR, loss, jitter).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from node.media.errors import MediaError

__all__ = [
    "RtcpError", "ReportBlock", "SenderReport", "ReceiverReport", "Sdes", "Bye", "UnknownRtcp",
    "parse_rtcp", "compound", "ntp_timestamp", "ntp_middle", "ReceptionStats", "RtcpSession",
    "PeerReport", "rtcp_interval", "SR", "RR", "SDES", "BYE", "CNAME",
]

SR, RR, SDES, BYE, APP = 200, 201, 202, 203, 204
CNAME = 1
_HDR = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IIIIII")  # ssrc, ntp sec, ntp frac, rtp ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction|lost, ext seq, jitter, lsr, dlsr
_U32 = struct.Struct("!I")
#: seconds between 1900-01-01 (NTP era 0) and 1970-01-01
_NTP_EPOCH = 2208988800
_SEQ_MOD = 1 << 16
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_MIN_SEQUENTIAL = 2


class RtcpError(MediaError):
    """A datagram that is not a valid RTCP compound packet (RFC 3550 §6.1, A.2)."""


# ------------------------------------------------------------------ packets
@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1). ``fraction_lost`` is the 8-bit fixed-point
    value (lost/expected * 256); ``cumulative_lost`` is signed 24-bit (duplicates can make it
    negative); ``jitter`` is in RTP timestamp units; ``lsr``/``dlsr`` in NTP middle-32 and
    1/65536 s."""

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_seq: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def pack(self) -> bytes:
        if not 0 <= self.fraction_lost <= 255:
            raise RtcpError(f"fraction lost {self.fraction_lost} out of range 0-255")
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF  # clamped, RFC 3550 §6.4.1
        return _BLOCK.pack(self.ssrc, (self.fraction_lost << 24) | lost, self.highest_seq & 0xFFFFFFFF,
                           self.jitter & 0xFFFFFFFF, self.lsr & 0xFFFFFFFF, self.dlsr & 0xFFFFFFFF)

    @classmethod
    def unpack(cls, data, pos: int) -> "ReportBlock":
        ssrc, fl, ext, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = fl & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, fl >> 24, lost, ext, jitter, lsr, dlsr)


def _header(pt: int, count: int, body_len: int) -> bytes:
    if count > 31:
        raise RtcpError(f"at most 31 items in one RTCP packet, not {count}")
    if body_len % 4:
        raise RtcpError("an RTCP packet is a whole number of 32-bit words")
    return _HDR.pack(0x80 | count, pt, body_len // 4)  # length: words after the first


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def to_bytes(self) -> bytes:
        body = _SR_INFO.pack(self.ssrc, (self.ntp >> 32) & 0xFFFFFFFF, self.ntp & 0xFFFFFFFF,
                             self.rtp_timestamp & 0xFFFFFFFF, self.packet_count & 0xFFFFFFFF,
                             self.octet_count & 0xFFFFFFFF) + b"".join(r.pack() for r in self.reports)
        return _header(SR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def to_bytes(self) -> bytes:
        body = _U32.pack(self.ssrc) + b"".join(r.pack() for r in self.reports)
        return _header(RR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class Sdes:
    """Source descriptions: ``chunks`` of (ssrc, ((item type, value), ...))."""

    chunks: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...]

    @classmethod
    def cname(cls, ssrc: int, name: str) -> "Sdes":
        return cls(((ssrc, ((CNAME, name.encode("utf-8")),)),))

    def cname_of(self, ssrc: int) -> str | None:
        for s, items in self.chunks:
            if s == ssrc:
                for t, v in items:
                    if t == CNAME:
                        return v.decode("utf-8", "replace")
        return None

    def to_bytes(self) -> bytes:
        body = bytearray()
        for ssrc, items in self.chunks:
            chunk = bytearray(_U32.pack(ssrc))
            for t, v in items:
                if not 1 <= t <= 255 or len(v) > 255:
                    raise RtcpError("an SDES item has a type 1-255 and at most 255 octets")
                chunk += bytes((t, len(v))) + v
            chunk += b"\0" * (4 - (len(chunk) % 4))  # the END item, then padding to a word (§6.5)
            body += chunk
        return _header(SDES, len(self.chunks), len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str = ""

    def to_bytes(self) -> bytes:
        body = b"".join(_U32.pack(s) for s in self.ssrcs)
        if self.reason:
            r = self.reason.encode("utf-8")[:255]
            body += bytes((len(r),)) + r
            body += b"\0" * (-len(body) % 4)
        return _header(BYE, len(self.ssrcs), len(body)) + body


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """A packet type we do not interpret (APP, feedback, XR): kept whole, skipped."""

    packet_type: int
    count: int
    body: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return _header(self.packet_type, self.count, len(self.body)) + self.body


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | UnknownRtcp


def compound(*packets: RtcpPacket) -> bytes:
    return b"".join(p.to_bytes() for p in packets)


def parse_rtcp(data) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram. Checks RFC 3550 A.2: version 2, padding only
    in the last packet, lengths that add up exactly; the first packet may be other than SR/RR
    (RFC 5506 reduced-size RTCP) but must be of an RTCP type."""
    n = len(data)
    if n < 8:
        raise RtcpError(f"{n} bytes is shorter than an RTCP report")
    if not 192 <= data[1] <= 223:
        # RFC 3550 compounds start with SR or RR, but reduced-size RTCP (RFC 5506) and some
        # phones' lone APP packets start with anything in the RTCP range (RFC 5761 §4)
        raise RtcpError(f"packet type {data[1]} is not RTCP (192-223)")
    out: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if n - pos < 4:
            raise RtcpError(f"{n - pos} stray bytes after the last RTCP packet")
        b0, pt, words = _HDR.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}, expected 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise RtcpError(f"RTCP packet type {pt} claims {4 * words + 4} bytes, only {n - pos} left")
        count = b0 & 0x1F
        body_end = end
        if b0 & 0x20:
            if end != n:
                raise RtcpError("padding is allowed only in the last packet of a compound")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtcpError(f"bad RTCP padding count {pad}")
            body_end = end - pad
        out.append(_parse_one(pt, count, data, pos + 4, body_end))
        pos = end
    return out


def _parse_one(pt: int, count: int, data, start: int, end: int) -> RtcpPacket:
    size = end - start
    if pt == SR:
        if size < 24 + 24 * count:
            raise RtcpError(f"sender report with {count} blocks needs {24 + 24 * count} bytes, has {size}")
        ssrc, sec, frac, rtp_ts, packets, octets = _SR_INFO.unpack_from(data, start)
        blocks = tuple(ReportBlock.unpack(data, start + 24 + 24 * i) for i in range(count))
        return SenderReport(ssrc, (sec << 32) | frac, rtp_ts, packets, octets, blocks)
    if pt == RR:
        if size < 4 + 24 * count:
            raise RtcpError(f"receiver report with {count} blocks needs {4 + 24 * count} bytes, has {size}")
        ssrc = _U32.unpack_from(data, start)[0]
        return ReceiverReport(ssrc, tuple(ReportBlock.unpack(data, start + 4 + 24 * i) for i in range(count)))
    if pt == SDES:
        chunks = []
        pos = start
        for _ in range(count):
            if pos + 4 > end:
                raise RtcpError("SDES chunk runs past the packet")
            ssrc = _U32.unpack_from(data, pos)[0]
            pos += 4
            items = []
            while True:
                if pos >= end:
                    raise RtcpError("SDES chunk has no END item")
                t = data[pos]
                if t == 0:
                    # END: the chunk is padded with null octets to the next 32-bit boundary
                    pos = start + ((pos + 1 - start + 3) // 4) * 4
                    if pos > end:
                        raise RtcpError("SDES chunk padding runs past the packet")
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise RtcpError("SDES item runs past the packet")
                ln = data[pos + 1]
                items.append((t, bytes(data[pos + 2:pos + 2 + ln])))
                pos += 2 + ln
            chunks.append((ssrc, tuple(items)))
        return Sdes(tuple(chunks))
    if pt == BYE:
        if size < 4 * count:
            raise RtcpError(f"BYE of {count} sources needs {4 * count} bytes, has {size}")
        ssrcs = tuple(_U32.unpack_from(data, start + 4 * i)[0] for i in range(count))
        reason = ""
        pos = start + 4 * count
        if pos < end:
            ln = data[pos]
            if pos + 1 + ln > end:
                raise RtcpError("BYE reason runs past the packet")
            reason = bytes(data[pos + 1:pos + 1 + ln]).decode("utf-8", "replace")
        return Bye(ssrcs, reason)
    return UnknownRtcp(pt, count, bytes(data[start:end]))


# ------------------------------------------------------------------ NTP time
def ntp_timestamp(wall: float) -> int:
    """64-bit NTP timestamp (RFC 3550 §4) of a Unix time."""
    sec = int(wall)
    return (((sec + _NTP_EPOCH) & 0xFFFFFFFF) << 32) | int((wall - sec) * (1 << 32)) & 0xFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits (16.16 seconds), as LSR and round-trip arithmetic use them."""
    return (ntp >> 16) & 0xFFFFFFFF


# ------------------------------------------------------------------ receiving statistics
class ReceptionStats:
    """RFC 3550 A.1/A.3/A.8 for the one source a node endpoint hears. ``arrival`` in the
    stream's RTP clock units (seconds * clock rate); a new SSRC starts over."""

    __slots__ = ("ssrc", "clock_rate", "max_seq", "cycles", "base_seq", "bad_seq", "probation", "received",
                 "expected_prior", "received_prior", "transit", "jitter", "started", "last_sr", "last_sr_at")

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.started = False
        #: middle 32 bits of the last SR's NTP time and when (``now``) it arrived
        self.last_sr = 0
        self.last_sr_at = 0.0
        self._reset(0)

    def _reset(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.transit: int | None = None
        self.jitter = 0.0
        self.probation = 0

    def update(self, ssrc: int, seq: int, timestamp: int, arrival: float, timing: bool = True) -> bool:
        """Count one packet; False when A.1 rejects it (probation, a wild jump being confirmed).
        ``timing`` False leaves the jitter alone (RFC 4733 events keep their start timestamp)."""
        if ssrc != self.ssrc:
            self.ssrc = ssrc
            self.started = True
            self.last_sr = 0
            self._reset(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self.probation = _MIN_SEQUENTIAL
        if self.probation:
            # A.1: a source is valid after MIN_SEQUENTIAL packets in sequence
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._reset(seq)
                    self.received = 1
                    self._timing(timestamp, arrival, timing, first=True)
                    return True
            else:
                self.probation = _MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        udelta = (seq - self.max_seq) & 0xFFFF
        if udelta < _MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD  # wrapped
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - _MAX_MISORDER:
            if seq == self.bad_seq:
                # two sequential packets after a jump: the sender restarted, so do we
                self._reset(seq)
                self.received = 1
                self._timing(timestamp, arrival, timing, first=True)
                return True
            self.bad_seq = (seq + 1) & 0xFFFF
            return False
        # else: duplicate or reordered within the window: counted, max_seq stays
        self.received += 1
        self._timing(timestamp, arrival, timing)
        return True

    def _timing(self, timestamp: int, arrival: float, timing: bool, first: bool = False) -> None:
        if not timing:
            return
        transit = int(arrival) - timestamp
        if first or self.transit is None:
            self.transit = transit
            return
        d = abs(((transit - self.transit) + (1 << 31)) % (1 << 32) - (1 << 31))  # 32-bit wrap-safe
        self.transit = transit
        self.jitter += (d - self.jitter) / 16.0  # A.8: J += (|D| - J) / 16

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        return self.expected - self.received if self.received else 0

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate

    def block(self, now: float) -> ReportBlock | None:
        """The report block for this source (advances the 'since last report' counters), None
        when no valid packet arrived yet."""
        if self.ssrc is None or not self.received:
            return None
        expected = self.expected
        exp_interval = expected - self.expected_prior
        rec_interval = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_interval = exp_interval - rec_interval
        fraction = 0 if exp_interval <= 0 or lost_interval <= 0 else min(255, (lost_interval << 8) // exp_interval)
        dlsr = int((now - self.last_sr_at) * 65536) if self.last_sr else 0
        return ReportBlock(self.ssrc, fraction, self.lost, self.extended_max, int(self.jitter), self.last_sr, dlsr)


# ------------------------------------------------------------------ report timing
#: RFC 3550 §6.2: minimum interval; the first report may come after half of it
MIN_INTERVAL = 5.0
_COMPENSATION = 2.71828 - 1.5  # e - 3/2 (A.7: the randomisation's bias)


def rtcp_interval(members: int, senders: int, rtcp_bw: float, we_sent: bool, avg_rtcp_size: float,
                  initial: bool, rand: float, min_interval: float = MIN_INTERVAL) -> float:
    """RFC 3550 A.7 ``rtcp_interval``; ``rand`` uniform in [0, 1) (passed in for tests)."""
    t_min = min_interval / 2 if initial else min_interval
    n = members
    if 0 < senders <= members * 0.25:
        if we_sent:
            rtcp_bw *= 0.25
            n = senders
        else:
            rtcp_bw *= 0.75
            n = members - senders
    t = avg_rtcp_size * n / rtcp_bw if rtcp_bw > 0 else t_min
    t = max(t, t_min)
    return t * (rand + 0.5) / _COMPENSATION


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What a peer's report says about our stream (None where it cannot say: no LSR yet)."""

    fraction_lost: float
    cumulative_lost: int
    jitter_seconds: float
    rtt: float | None


class RtcpSession:
    """The RTCP of one endpoint with one peer (a two-member unicast session)."""

    def __init__(self, ssrc: int, cname: str, now: float, *, clock_rate: int = 8000,
                 session_bw: float = 80_000 / 8, min_interval: float = MIN_INTERVAL,
                 rng: random.Random | None = None) -> None:
        self.ssrc = ssrc
        self.cname = cname
        self.clock_rate = clock_rate
        self.rtcp_bw = 0.05 * session_bw  # bytes/s: RFC 3550 §6.2, 5 % of the session
        self.min_interval = min_interval
        self.rng = rng or random.Random()
        self.rx = ReceptionStats(clock_rate)
        self.avg_rtcp_size = 128.0
        self.sent_reports = 0
        self.received_reports = 0
        self.errors = 0
        self.peer_ssrc: int | None = None
        self.peer_cname: str | None = None
        self.peer_bye = False
        #: the latest figures about our stream from the peer, and the worst round trip seen
        self.last_peer: PeerReport | None = None
        self.rtt_max: float | None = None
        self._sent_at_last = 0
        self.next_due = now + self._interval(initial=True, we_sent=False)

    # --- timing
    def _interval(self, initial: bool, we_sent: bool) -> float:
        senders = int(we_sent) + int(self.rx.received > 0)
        return rtcp_interval(2, senders, self.rtcp_bw, we_sent, self.avg_rtcp_size, initial,
                             self.rng.random(), self.min_interval)

    def due(self, now: float) -> bool:
        return now >= self.next_due

    # --- building
    def report(self, now: float, wall: float, packets_sent: int, octets_sent: int, rtp_ts: int,
               bye: str | None = None) -> bytes:
        """SR (we sent RTP since the last report) or RR, SDES CNAME, and BYE when ``bye`` is
        not None; schedules the next report."""
        we_sent = packets_sent != self._sent_at_last
        self._sent_at_last = packets_sent
        block = self.rx.block(now)
        blocks = (block,) if block is not None else ()
        if we_sent:
            first: RtcpPacket = SenderReport(self.ssrc, ntp_timestamp(wall), rtp_ts, packets_sent, octets_sent, blocks)
        else:
            first = ReceiverReport(self.ssrc, blocks)
        parts: list[RtcpPacket] = [first, Sdes.cname(self.ssrc, self.cname)]
        if bye is not None:
            parts.append(Bye((self.ssrc,), bye))
        data = compound(*parts)
        self.sent_reports += 1
        self.avg_rtcp_size += (len(data) + 28 - self.avg_rtcp_size) / 16  # A.7, with UDP/IP
        self.next_due = now + self._interval(initial=False, we_sent=we_sent)
        return data

    # --- reading
    def receive(self, data, now: float, wall: float) -> list[PeerReport]:
        """Read a peer's compound packet: notes its SR time (our LSR/DLSR) and returns what
        its report blocks say about our stream. Raises ``RtcpError`` for a malformed one."""
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.errors += 1
            raise
        self.received_reports += 1
        self.avg_rtcp_size += (len(data) + 28 - self.avg_rtcp_size) / 16
        out = []
        for p in packets:
            if isinstance(p, (SenderReport, ReceiverReport)):
                self.peer_ssrc = p.ssrc
                if isinstance(p, SenderReport) and (self.rx.ssrc is None or p.ssrc == self.rx.ssrc):
                    self.rx.last_sr = ntp_middle(p.ntp)
                    self.rx.last_sr_at = now
                for b in p.reports:
                    if b.ssrc == self.ssrc:
                        out.append(self._peer_report(b, wall))
            elif isinstance(p, Sdes) and self.peer_ssrc is not None:
                self.peer_cname = p.cname_of(self.peer_ssrc) or self.peer_cname
            elif isinstance(p, Bye) and self.peer_ssrc in p.ssrcs:
                self.peer_bye = True
        return out

    def _peer_report(self, b: ReportBlock, wall: float) -> PeerReport:
        rtt = None
        if b.lsr:
            # RFC 3550 §6.4.1: A - LSR - DLSR, in 1/65536 s; a negative result is clock skew
            units = (ntp_middle(ntp_timestamp(wall)) - b.lsr - b.dlsr) & 0xFFFFFFFF
            if units < 0x80000000:
                rtt = units / 65536
                self.rtt_max = rtt if self.rtt_max is None else max(self.rtt_max, rtt)
        rep = PeerReport(b.fraction_lost / 256, b.cumulative_lost, b.jitter / self.clock_rate, rtt)
        self.last_peer = rep
        return rep
