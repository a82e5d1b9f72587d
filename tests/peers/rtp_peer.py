"""The RTP side of a SIPp caller, played by the test: one UDP socket that is the SDP address
SIPp offers (tests/interop/sipp/uac_media_call.xml), records what arrives and sends RFC 4733
key presses and PCMU tones in real time. Sending and receiving on the same socket keeps the
node's symmetric-RTP latch on it, so what the node sends is what the test analyses.

``open(rtcp=True)`` also binds the RTCP port (RTP port + 1, RFC 3550 §11): reports arriving
there are kept in ``rtcp_packets``, and ``send_rtcp`` sends from it (so the node's symmetric
RTCP answers there)."""

from __future__ import annotations

import asyncio
import struct
import time

import numpy as np

from node.media import g711
from node.media.tones import sine
from tests.peers.net import free_port
from tests.peers.rtp_pcap import rfc4733_packets


class RtpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._seq = 5000
        self._ts = 80_000
        self.ssrc = 0
        self.rtcp_packets: list[tuple[float, bytes]] = []
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        #: RTP packets sent, and sequence numbers skipped on purpose (``send_tone(lose_every=)``)
        self.sent = self.skipped = 0

    @classmethod
    async def open(cls, *, rtcp: bool = False) -> "RtpPeer":
        loop = asyncio.get_running_loop()
        peer = cls()
        peer.port = free_port("127.0.0.1", span=2 if rtcp else 1)  # free_port keeps port + 1 unhanded anyway
        peer.ssrc = 0x10000000 + peer.port
        await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", peer.port))
        if rtcp:
            peer.rtcp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _RtcpSink(peer.rtcp_packets), local_addr=("127.0.0.1", peer.port + 1))
        return peer

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.packets.append((time.monotonic(), data))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.rtcp_transport is not None:
            self.rtcp_transport.close()

    def send_rtcp(self, dest: tuple[str, int], data: bytes) -> None:
        """A (compound) RTCP packet from our RTCP port (``open(rtcp=True)``)."""
        assert self.rtcp_transport is not None, "open(rtcp=True) first"
        self.rtcp_transport.sendto(data, dest)

    async def send_digits(self, dest: tuple[str, int], digits: str) -> None:
        """Key presses as RFC 4733 events, on this stream's own sequence and timeline (so a
        second press of the same key is a new event, as from a phone)."""
        start = time.monotonic()
        packets = rfc4733_packets(digits, ssrc=self.ssrc, gap_ms=100)
        base = int.from_bytes(packets[0][1][4:8], "big")
        for at, pkt in packets:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._seq = (self._seq + 1) & 0xFFFF
            ts = (self._ts + 160 + int.from_bytes(pkt[4:8], "big") - base) & 0xFFFFFFFF
            self.transport.sendto(pkt[:2] + struct.pack("!HI", self._seq, ts) + pkt[8:], dest)  # type: ignore[union-attr]
        self._ts = (self._ts + int((time.monotonic() - start) * 8000)) & 0xFFFFFFFF

    async def send_tone(self, dest: tuple[str, int], freq: float, seconds: float, *, lose_every: int = 0) -> None:
        """A steady sine as PCMU, 20 ms packets paced by the clock. ``lose_every`` N: every
        Nth packet is not sent (its sequence number and timestamp are skipped: network loss)."""
        frames = int(seconds * 50)
        pcm = sine((freq,), 160 * frames, 0.2)
        payload = g711.ulaw_encode(pcm)
        start = time.monotonic()
        for i in range(frames):
            delay = start + 0.02 * i - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + 160) & 0xFFFFFFFF
            if lose_every and i % lose_every == lose_every - 1:
                self.skipped += 1
                continue
            hdr = struct.pack("!BBHII", 0x80, 0, self._seq, self._ts, self.ssrc)
            self.transport.sendto(hdr + payload[160 * i:160 * (i + 1)], dest)  # type: ignore[union-attr]
            self.sent += 1

    def audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        """PCMU received in [since, until) (monotonic), in sequence order, decoded."""
        chosen = sorted((int.from_bytes(p[2:4], "big"), p[12:]) for t, p in self.packets
                        if since <= t < until and len(p) > 12 and p[1] & 0x7F == 0)
        return g711.ulaw_decode(b"".join(pl for _, pl in chosen)).astype(np.float64)


class _RtcpSink(asyncio.DatagramProtocol):
    def __init__(self, packets: list[tuple[float, bytes]]) -> None:
        self.packets = packets

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.packets.append((time.monotonic(), data))


def tone_level(samples: np.ndarray, freq: float, width: float = 25.0) -> float:
    """Share of the signal's power within ``width`` Hz of ``freq`` (0..1)."""
    if len(samples) < 800:
        return 0.0
    x = samples - samples.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    total = spec.sum() + 1e-9
    return float(spec[(freqs > freq - width) & (freqs < freq + width)].sum() / total)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0


def best_correlation(reference: np.ndarray, signal: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``reference`` inside ``signal`` (any delay)."""
    ref = reference.astype(np.float64) - reference.mean()
    n = len(signal) + len(ref)
    c = np.fft.irfft(np.fft.rfft(signal, n) * np.conj(np.fft.rfft(ref, n)), n)
    k = int(np.argmax(c[: len(signal)]))
    window = signal[k:k + len(ref)]
    if len(window) < len(ref):
        return 0.0
    window = window - window.mean()
    return float(np.dot(window, ref) / (np.linalg.norm(window) * np.linalg.norm(ref) + 1e-9))


async def node_media_of(pbx, peer: RtpPeer, timeout: float = 10.0) -> tuple[str, int]:
    """Where the node's endpoint for this caller receives (the port in its SDP answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ep in list(pbx.node.media.endpoints):
            if ep.sdp_addr is not None and ep.sdp_addr[1] == peer.port:
                return ("127.0.0.1", ep.local_port)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no node endpoint for the caller at port {peer.port}")
