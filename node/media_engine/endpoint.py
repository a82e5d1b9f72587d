"""One RTP stream the node terminates: it plays, records, hears digits, or is bridged.

Sending is clocked by the engine: every 20 ms ``tick`` sends exactly one packet (the
current source's next frame, an RFC 4733 event packet, or encoded silence: a stream that
goes quiet would close NAT pinholes and trip peers' RTP timeouts). Receiving is driven by
the socket: audio is decoded only when somebody needs the samples (in-band DTMF
detection, a recording, a conference), RFC 4733 packets become digits through
``TelephoneEventReceiver`` (one per key press), and a bridged endpoint forwards payloads
straight to its partner, transcoding only when the two legs settled on different laws.

Symmetric RTP (RFC 4961): we send to the address the peer's packets come from, not only to
the SDP address, so phones behind NAT hear us. The first source latches; the SDP address
re-latches at once; another source takes over only after the latched one has been silent
for a second (NAT rebinding), so a stray sender cannot hijack the stream.

Output sources (``read(pt) -> bytes | None``, None = finished) are plain objects: a clip
player over cached encoded prompts, a looping tone, a music-on-hold listener.

RTCP (RFC 3550): each endpoint is one participant of a two-member session. Its RTP arrivals
feed the receiver statistics of ``node.media.rtcp.RtcpSession`` (a few integer operations per
packet); the engine's clock checks once per tick whether a report is due (RFC 3550 interval,
5 s nominal, randomised) and the endpoint sends SR when it sent RTP since the last report,
else RR, with SDES CNAME, and a BYE when it closes. Reports go where the peer's RTCP comes
from, else to the SDP's RTCP address (a=rtcp, or RTP port + 1). The peer's reports become
round-trip time, loss and jitter histograms (node/media_engine/metrics.py) and one log line
per stream at close, with call id and tenant.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from node.media import g711
from node.media.dtmf import TelephoneEventReceiver, parse_telephone_event, telephone_event_payloads
from node.media.dtmf_detect import DtmfDetector
from node.media.errors import MediaError
from node.media.jitter import JitterBuffer
from node.media.rtcp import RtcpError, RtcpSession
from node.media.rtp import parse_rtp
from node.media.tones import FRAME
from node.media.wav import write_wav
from node.rtp_engine.errors import RelayError
from node.sdp.errors import SdpNotAcceptable
from node.sdp.model import INACTIVE, RECVONLY, SENDONLY, SENDRECV
from node.sdp.anchoring import media_address
from node.sdp.offer_answer import DEFAULT_CODECS, answer, make_offer
from node.sdp.origin import LocalOrigin
from node.sdp.parser import parse
from node.media_engine import metrics as media_metrics
from observability import logging as olog

if TYPE_CHECKING:
    from node.media_engine.engine import MediaEngine

log = logging.getLogger("hivepbx.media")

_HDR = struct.Struct("!BBHII")
_TE_DEFAULT_PT = 101
#: ticks (20 ms) a latched source must be silent before a new one may take over
_RELATCH_TICKS = 50
_SILENCE = {pt: bytes([b]) * FRAME for pt, b in g711.SILENCE_BYTE.items()}
#: a recording's hard cap when the caller gives none: one hour
_MAX_RECORD_FRAMES = 50 * 3600


class Playback:
    """A source being played; ``await`` it for how it ended: 'finished', 'interrupted'
    (a digit arrived during an interruptible playback) or 'stopped'."""

    __slots__ = ("interruptible", "done", "_source")

    def __init__(self, source, interruptible: bool, loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self.interruptible = interruptible
        self.done: asyncio.Future[str] = loop.create_future()

    def read(self, pt: int) -> bytes | None:
        return self._source.read(pt)

    def _finish(self, how: str) -> None:
        if not self.done.done():
            self.done.set_result(how)
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __await__(self):
        return self.done.__await__()


class ClipPlayer:
    """Plays files one after the other, from the engine's encoded-prompt cache."""

    __slots__ = ("engine", "paths", "_i", "_data", "_pos", "_pt")

    def __init__(self, engine: "MediaEngine", paths: list[Path]) -> None:
        self.engine = engine
        self.paths = paths
        self._i = -1
        self._data = b""
        self._pos = 0
        self._pt = -1

    def read(self, pt: int) -> bytes | None:
        while self._pos >= len(self._data) or pt != self._pt:
            if pt != self._pt and self._i >= 0:
                # the codec changed mid-clip (re-INVITE): carry on in the new law
                self._data, self._pt = self.engine.clip(self.paths[self._i], pt), pt
                continue
            self._i += 1
            if self._i >= len(self.paths):
                return None
            try:
                self._data, self._pt, self._pos = self.engine.clip(self.paths[self._i], pt), pt, 0
            except (OSError, MediaError) as e:
                log.warning("cannot play %s: %s", self.paths[self._i], e)
                self._data, self._pt, self._pos = b"", pt, 0
        out = self._data[self._pos:self._pos + FRAME]
        self._pos += FRAME
        return out


class LoopSource:
    """A tone: one encoded period looped until stopped."""

    __slots__ = ("engine", "name", "_pos")

    def __init__(self, engine: "MediaEngine", name: str) -> None:
        self.engine = engine
        self.name = name
        self._pos = 0
        engine.tone(name, g711.PCMU)  # unknown names fail here, not on the clock

    def read(self, pt: int) -> bytes | None:
        data = self.engine.tone(self.name, pt)
        if self._pos >= len(data):
            self._pos = 0
        out = data[self._pos:self._pos + FRAME]
        self._pos += FRAME
        return out


class MediaEndpoint(asyncio.DatagramProtocol):
    def __init__(self, engine: "MediaEngine", port: int, call_id: str, tenant: str, *, inband_dtmf: bool = True) -> None:
        self.engine = engine
        self.local_port = port
        self.call_id = call_id
        self.tenant = tenant
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp = None
        self.closed = False
        # negotiated
        self.pt = g711.PCMU
        self.te_pt: int | None = None
        self.te_rx_pt: int | None = None
        self.origin = LocalOrigin()
        # where to send
        self.sdp_addr: tuple[str, int] | None = None
        self.latched: tuple[str, int] | None = None
        self.dest: tuple[str, int] | None = None
        self.held = False
        self._last_rx_tick = 0
        self._cand: tuple[str, int] | None = None
        # sending state
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._marker = True
        self._playback: Playback | None = None
        self._dtmf_out: deque[tuple[bytes, bool, int]] = deque()
        # receiving state
        self._te = TelephoneEventReceiver()
        self._inband = DtmfDetector() if inband_dtmf else None
        self._digits: deque[str] = deque()
        self._digit_waiter: asyncio.Future | None = None
        self.on_digit: Callable[[str, str], None] | None = None
        self._recording: list[np.ndarray] | None = None
        self._record_limit = 0
        self._record_done: asyncio.Future | None = None
        self._record_path: Path | None = None
        #: set by a conference: decoded frames go here and the conference does the sending
        self.jitter: JitterBuffer | None = None
        self.conference = None
        self.peer: MediaEndpoint | None = None
        self._fwd: tuple[int, int] | None = None  # (incoming ssrc, timestamp offset)
        # counters
        self.packets_in = self.packets_out = self.dropped = self.digits_received = 0
        self.digits_inband = 0
        self.octets_out = 0
        #: raw RTP datagrams accepted from the peer also go to these (call recording)
        self._taps: tuple[Callable[[bytes], None], ...] = ()
        # RTCP: where reports go (learned from the peer's RTCP, else the SDP's), when the next is due
        self.sdp_rtcp: tuple[str, int] | None = None
        self.rtcp_dest: tuple[str, int] | None = None
        now = engine.loop.time()
        self.rtcp_session = RtcpSession(self.ssrc, secrets.token_urlsafe(12), now,
                                        min_interval=getattr(engine, "rtcp_min_interval", 5.0))
        self._rtcp_tick = 0
        self._rtcp_schedule(now)
        self._lost_counted = 0

    # ------------------------------------------------------------------ SDP
    def answer(self, offer: bytes, local_ip: str) -> bytes:
        """Our answer to ``offer``; picks the peer's first G.711 codec and its telephone-event
        type, and points the stream at the offer's address. ``SdpNotAcceptable`` (488) when
        there is no G.711."""
        sd = parse(offer)
        ans = answer(sd, DEFAULT_CODECS, local_ip, self.local_port, origin=self.origin)
        self._take(ans)
        self._remote_from(sd)
        # our answer's direction is what we may do: recvonly/inactive (the peer holds) = send nothing
        self._may_send(_direction(ans) in (SENDRECV, SENDONLY))
        return ans.to_bytes()

    def offer(self, local_ip: str) -> bytes:
        """An offer of PCMU, PCMA and telephone-event (for a leg the node places)."""
        sd = make_offer(DEFAULT_CODECS, local_ip, self.local_port, origin=self.origin, first_dynamic_pt=_TE_DEFAULT_PT)
        self.te_rx_pt = _TE_DEFAULT_PT
        return sd.to_bytes()

    def accept_answer(self, body: bytes) -> None:
        """The answer to our ``offer``: its first codec is the one we send."""
        sd = parse(body)
        self._take(sd)
        self._remote_from(sd)
        # the answerer's direction is what it does: sendonly/inactive = it takes nothing from us
        self._may_send(_direction(sd) in (SENDRECV, RECVONLY))

    def _may_send(self, allowed: bool) -> None:
        if not allowed:
            self.held = True
            self.dest = None

    def _take(self, sd) -> None:
        audio = next((m for m in sd.media if m.type == "audio" and m.port != 0), None)
        if audio is None:
            raise SdpNotAcceptable("no audio stream")
        pts = [int(f) for f in audio.formats if f.isdigit()]
        codec = next((pt for pt in pts if pt in g711.NAMES and _is_g711(audio, pt)), None)
        if codec is None:
            raise SdpNotAcceptable("no G.711 codec (PCMU, PCMA) in the answer")
        self.pt = codec
        te = None
        for pt in pts:
            rm = audio.rtpmap(pt)
            if rm is not None and rm.encoding.lower() == "telephone-event" and rm.clock_rate == 8000:
                te = pt
                break
        self.te_pt = te
        if self.te_rx_pt is None or te is not None:
            self.te_rx_pt = te

    def _remote_from(self, sd) -> None:
        addr = media_address(sd)
        if addr is None:
            self.set_remote(None, 0)
            self.sdp_rtcp = None
        else:
            self.set_remote(addr.host, addr.port)
            h = self.engine.normalize(addr.rtcp_host) if addr.rtcp_host else None
            self.sdp_rtcp = (h, addr.rtcp_port) if h is not None and addr.rtcp_port > 0 else None

    def set_remote(self, host: str | None, port: int) -> None:
        """Where the peer said it receives; 0.0.0.0 / port 0 = hold (we send nothing)."""
        h = self.engine.normalize(host) if host else None
        if h is None or port == 0:
            self.held = True
            self.dest = None
            return
        moved = self.sdp_addr is not None and self.sdp_addr != (h, port)
        self.sdp_addr = (h, port)
        self.held = False
        if moved:
            self.latched = None
        self.dest = self.latched or self.sdp_addr

    # ------------------------------------------------------------------ output API
    def play(self, paths: list[str | Path], *, interruptible: bool = False) -> Playback:
        """Play files in order (replacing whatever played). With ``interruptible`` a digit
        stops it; the digit stays queued for ``get_digit``."""
        return self._start(ClipPlayer(self.engine, [Path(p) for p in paths]), interruptible)

    def tone(self, name: str) -> Playback:
        """Loop a tone (ringback, busy, ...) until ``stop_output`` or another playback."""
        return self._start(LoopSource(self.engine, name), False)

    def listen(self, moh) -> Playback:
        """Hear a shared music-on-hold source until stopped."""
        return self._start(moh.listener(), False)

    def _start(self, source, interruptible: bool) -> Playback:
        pb = Playback(source, interruptible, self.engine.loop)
        if self.closed:
            pb._finish("stopped")
            return pb
        if interruptible and self._digits:
            pb._finish("interrupted")  # the caller is already typing
            return pb
        self.stop_output()
        self._playback = pb
        return pb

    def stop_output(self) -> None:
        pb, self._playback = self._playback, None
        if pb is not None:
            pb._finish("stopped")

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Send a digit as RFC 4733 events (needs telephone-event in the SDP)."""
        if self.te_pt is None:
            raise MediaError("the peer did not negotiate telephone-event")
        start_ts = self._ts
        for payload, marker in telephone_event_payloads(digit, duration_ms):
            self._dtmf_out.append((payload, marker, start_ts))

    # ------------------------------------------------------------------ input API
    async def get_digit(self, timeout: float | None) -> str | None:
        """The next digit (RFC 4733 or in-band), None after ``timeout`` seconds."""
        if self._digits:
            return self._digits.popleft()
        if self.closed:
            return None
        fut = self.engine.loop.create_future()
        self._digit_waiter = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            if self._digit_waiter is fut:
                self._digit_waiter = None

    def flush_digits(self) -> None:
        self._digits.clear()

    def deliver_digit(self, digit: str, how: str) -> None:
        """A digit that came another way (SIP INFO): handled like one heard in the media."""
        self._digit(digit, how)

    def record(self, path: str | Path, max_seconds: float = 0) -> None:
        """Record what the peer sends (decoded, 8 kHz) until ``stop_recording``, close, or
        ``max_seconds``; the WAV is written when it ends."""
        self._recording = []
        self._record_path = Path(path)
        self._record_limit = int(max_seconds * 50) if max_seconds > 0 else _MAX_RECORD_FRAMES
        self._record_done = self.engine.loop.create_future()

    async def stop_recording(self) -> Path | None:
        """End the recording and write it; returns its path (None if none was running)."""
        frames, path, done = self._recording, self._record_path, self._record_done
        self._recording = None
        if frames is None or path is None:
            return None
        samples = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
        await self.engine.loop.run_in_executor(None, write_wav, path, samples)
        if done is not None and not done.done():
            done.set_result(path)
        return path

    # ------------------------------------------------------------------ bridging
    def bridge(self, other: "MediaEndpoint") -> None:
        """Join two endpoints: each forwards what it receives to the other (audio and
        RFC 4733 events), and neither plays anything of its own any more."""
        self.stop_output()
        other.stop_output()
        self.peer, other.peer = other, self
        self._fwd = other._fwd = None

    def add_tap(self, fn: Callable[[bytes], None]) -> None:
        """Also hand every RTP datagram accepted from the peer to ``fn`` (recording)."""
        self._taps += (fn,)

    def remove_tap(self, fn: Callable[[bytes], None]) -> None:
        self._taps = tuple(t for t in self._taps if t is not fn)

    def unbridge(self) -> None:
        other, self.peer = self.peer, None
        if other is not None and other.peer is self:
            other.peer = None

    # ------------------------------------------------------------------ the clock
    def tick(self) -> None:
        """Called every 20 ms by the engine: send one packet (or nothing when bridged,
        in a conference, held, or with nowhere to send)."""
        if self.engine.ticks >= self._rtcp_tick:
            self._send_rtcp()
        if self.peer is not None or self.conference is not None:
            return
        pt = self.pt
        pb = self._playback
        payload = None
        if pb is not None:
            payload = pb.read(pt)
            if payload is None:
                self._playback = None
                pb._finish("finished")
        if self._dtmf_out:
            ev, marker, ts = self._dtmf_out.popleft()
            self._send(self.te_pt, ev, ts, marker)  # type: ignore[arg-type]
            self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            return
        if payload is None:
            payload = _SILENCE[pt]
        elif len(payload) < FRAME:
            payload = payload + _SILENCE[pt][len(payload):]
        self.send_audio(payload)

    def send_audio(self, payload: bytes) -> None:
        """Send one 20 ms frame in the negotiated codec (the conference calls this)."""
        self._send(self.pt, payload, self._ts, self._marker)
        self._marker = False
        self._ts = (self._ts + FRAME) & 0xFFFFFFFF

    def _send(self, pt: int, payload: bytes, ts: int, marker: bool) -> None:
        dest = self.dest
        if dest is None or self.transport is None:
            return
        self._seq = (self._seq + 1) & 0xFFFF
        self.transport.sendto(_HDR.pack(0x80, pt | (0x80 if marker else 0), self._seq, ts, self.ssrc) + payload, dest)
        self.packets_out += 1
        self.octets_out += len(payload)

    # ------------------------------------------------------------------ RTCP
    def _rtcp_schedule(self, now: float) -> None:
        ticks = int((self.rtcp_session.next_due - now) / self.engine.period) + 1
        self._rtcp_tick = self.engine.ticks + max(1, ticks)

    def _send_rtcp(self, bye: str | None = None) -> None:
        """Our report (SR or RR + SDES CNAME, + BYE when closing), and our receiver's figures
        into the metrics."""
        s = self.rtcp_session
        now = self.engine.loop.time()
        data = s.report(now, time.time(), self.packets_out, self.octets_out, self._ts, bye)
        self._rtcp_schedule(now)
        rx = s.rx
        lost = rx.lost
        media_metrics.reception(lost - self._lost_counted, rx.jitter_seconds if rx.received else None)
        self._lost_counted = max(self._lost_counted, lost)
        dest = self.rtcp_dest or self.sdp_rtcp
        t = getattr(self.rtcp, "transport", None)
        if dest is None or t is None:
            return
        t.sendto(data, dest)
        media_metrics.rtcp_sent()

    def rtcp_received(self, data: bytes, addr) -> None:
        """A datagram on our RTCP port: the peer's reports (accepted from the peer's host only)."""
        if self.closed:
            return
        known = self.latched or self.sdp_addr
        if known is None or addr[0] != known[0]:
            self.dropped += 1
            return
        try:
            reports = self.rtcp_session.receive(data, self.engine.loop.time(), time.time())
        except RtcpError as e:
            media_metrics.rtcp_error()
            with olog.bind(call_id=self.call_id or None, tenant=self.tenant or None):
                log.debug("malformed RTCP from %s:%s dropped: %s", addr[0], addr[1], e)
            return
        self.rtcp_dest = (addr[0], addr[1])  # symmetric RTCP, as for RTP (RFC 4961)
        media_metrics.rtcp_received(reports)

    def rtcp_summary(self) -> dict:
        """The stream's quality figures (logged at close)."""
        s = self.rtcp_session
        rx, peer = s.rx, s.last_peer
        out = {
            "local_port": self.local_port, "rtp_in": self.packets_in, "rtp_out": self.packets_out,
            "rx_expected": rx.expected, "rx_lost": rx.lost, "rx_jitter_ms": round(rx.jitter_seconds * 1000, 2),
            "rtcp_sent": s.sent_reports, "rtcp_received": s.received_reports, "rtcp_errors": s.errors,
        }
        if peer is not None:
            out.update(peer_fraction_lost=round(peer.fraction_lost, 4), peer_cumulative_lost=peer.cumulative_lost,
                       peer_jitter_ms=round(peer.jitter_seconds * 1000, 2))
        if s.rtt_max is not None:
            out["rtt_max_ms"] = round(s.rtt_max * 1000, 2)
        if peer is not None and peer.rtt is not None:
            out["rtt_ms"] = round(peer.rtt * 1000, 2)
        return out

    # ------------------------------------------------------------------ receiving
    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if self.closed:
            return
        if len(data) > 1 and 192 <= data[1] <= 223:
            self.rtcp_received(data, addr)  # RTCP on the RTP port (RFC 5761 demux): neither RTP nor a latch
            return
        src = (addr[0], addr[1])
        if src != self.latched and not self._learn(src):
            self.dropped += 1
            return
        self._last_rx_tick = self.engine.ticks
        if len(data) < 12 or data[0] >> 6 != 2:
            self.dropped += 1
            return
        self.packets_in += 1
        _, b1, seq, ts, ssrc = _HDR.unpack_from(data)
        pt = b1 & 0x7F
        self.rtcp_session.rx.update(ssrc, seq, ts, self.engine.loop.time() * 8000, pt == g711.PCMU or pt == g711.PCMA)
        for tap in self._taps:
            tap(data)
        if data[0] == 0x80:
            payload = memoryview(data)[12:]
        else:
            try:
                payload = parse_rtp(data).payload
            except MediaError:
                self.dropped += 1
                return
        if pt == self.te_rx_pt or (pt == self.te_pt and pt is not None):
            self._on_event(data, payload, b1)
            return
        if pt != g711.PCMU and pt != g711.PCMA:
            return  # comfort noise and the like: nothing to do with it
        peer = self.peer
        if peer is not None:
            peer._forward(data, pt, payload, b1 & 0x80)
        # in-band detection only while nobody sent RFC 4733 events and we are not bridged
        # (a bridged call's keys are the far end's business)
        inband = self._inband if peer is None and self._te.events == 0 else None
        if inband is None and self._recording is None and self.jitter is None:
            return
        pcm = g711.decode(pt, payload)
        if inband is not None:
            digit = inband.feed(pcm)
            if digit is not None:
                self.digits_inband += 1
                self._digit(digit, "inband")
        rec = self._recording
        if rec is not None:
            rec.append(pcm)
            if len(rec) >= self._record_limit:
                self.engine.loop.create_task(self.stop_recording())
        if self.jitter is not None:
            self.jitter.put(seq, pcm)

    def _on_event(self, data: bytes, payload, b1: int) -> None:
        try:
            ev = parse_telephone_event(payload)
        except MediaError:
            self.dropped += 1
            return
        ts = _HDR.unpack_from(data)[3]
        digit = self._te.feed(ts, ev)
        peer = self.peer
        if peer is not None and peer.te_pt is not None:
            peer._forward(data, peer.te_pt, payload, b1 & 0x80)
        if digit is not None:
            self._digit(digit, "rfc4733")

    def _forward(self, data: bytes, in_pt: int, payload, marker: int) -> None:
        """A packet from the bridged partner, re-sent with our SSRC, sequence and timeline."""
        _, _, _, ts, ssrc = _HDR.unpack_from(data)
        fwd = self._fwd
        if fwd is None or fwd[0] != ssrc:
            fwd = self._fwd = (ssrc, (self._ts - ts) & 0xFFFFFFFF)
            marker = 0x80
        out_ts = (ts + fwd[1]) & 0xFFFFFFFF
        if in_pt in g711.NAMES and in_pt != self.pt:
            payload = g711.transcode(in_pt, self.pt, payload)
            in_pt = self.pt
        self._send(in_pt, bytes(payload), out_ts, bool(marker))
        self._ts = out_ts

    def _digit(self, digit: str, how: str) -> None:
        self.digits_received += 1
        pb = self._playback
        if pb is not None and pb.interruptible:
            self._playback = None
            pb._finish("interrupted")
        if self.on_digit is not None:
            self.on_digit(digit, how)
        w = self._digit_waiter
        if w is not None and not w.done():
            self._digit_waiter = None
            w.set_result(digit)
        else:
            self._digits.append(digit)

    def _learn(self, src: tuple[str, int]) -> bool:
        if self.latched is None or src == self.sdp_addr:
            self._latch(src)
            return True
        if self.engine.ticks - self._last_rx_tick >= _RELATCH_TICKS:
            self._latch(src)
            return True
        return False

    def _latch(self, src: tuple[str, int]) -> None:
        self.latched = src
        if not self.held:
            self.dest = src

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def error_received(self, exc: Exception) -> None:
        self.dropped += 1

    def close(self) -> None:
        """Stop everything and give the port back. Idempotent. A running recording is
        written (in the background) so no voicemail is lost to a hang-up."""
        if self.closed:
            return
        self.closed = True
        self.stop_output()
        self.unbridge()
        if self.conference is not None:
            self.conference.remove(self)
        if self._recording is not None:
            self.engine.loop.create_task(self.stop_recording())
        w = self._digit_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self._taps = ()
        try:
            self._send_rtcp(bye="")
        except OSError as e:
            log.debug("final RTCP not sent: %s", e)
        with olog.bind(call_id=self.call_id or None, tenant=self.tenant or None):
            log.info("media stream closed", extra=self.rtcp_summary())
        for t in (self.transport, getattr(self.rtcp, "transport", None)):
            if t is not None:
                t.close()
        self.engine._endpoint_closed(self)

    def __repr__(self) -> str:
        return f"<MediaEndpoint port={self.local_port} tenant={self.tenant!r} call_id={self.call_id!r}>"


def _direction(sd) -> str:
    audio = next((m for m in sd.media if m.type == "audio" and m.port != 0), None)
    return sd.media_direction(audio) if audio is not None else INACTIVE


def _is_g711(media, pt: int) -> bool:
    rm = media.rtpmap(pt)
    return rm is None or rm.encoding.upper() == g711.NAMES[pt]


__all__ = ["MediaEndpoint", "Playback", "ClipPlayer", "LoopSource", "RelayError"]
