"""RTP packets (RFC 3550 §5.1) without copying payloads.

``parse_rtp`` reads the fixed header with one precompiled ``struct`` call and hands back
the payload (and extension data) as ``memoryview`` slices of the datagram, so inspecting a
packet never copies audio. ``RtpPacket.pack_into`` writes into a caller's buffer for
senders that reuse one. The ``peek_*`` helpers read a single field of a raw datagram for
hot paths that must not build an object at all.

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |V=2|P|X|  CC   |M|     PT      |       sequence number         |
   |                           timestamp                           |
   |           synchronization source (SSRC) identifier            |
   |            contributing source (CSRC) identifiers             |
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from node.media.errors import RtpError

RTP_VERSION = 2
HEADER_SIZE = 12
_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """The header extension (RFC 3550 §5.3.1): a profile word and 32-bit-aligned data."""

    profile: int
    data: Buffer


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. ``payload`` excludes padding; ``padding`` counts the padding bytes
    (0 = P bit clear), so a parsed packet re-serializes to the same bytes."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: Buffer = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0

    @property
    def version(self) -> int:
        return RTP_VERSION

    @property
    def size(self) -> int:
        ext = 0 if self.extension is None else 4 + len(self.extension.data)
        return HEADER_SIZE + 4 * len(self.csrc) + ext + len(self.payload) + self.padding

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the packet at ``buf[offset:]``; returns the number of bytes written."""
        self._check()
        ext = self.extension
        b0 = (RTP_VERSION << 6) | (0x20 if self.padding else 0) | (0x10 if ext is not None else 0) | len(self.csrc)
        b1 = (0x80 if self.marker else 0) | self.payload_type
        _HEADER.pack_into(buf, offset, b0, b1, self.sequence, self.timestamp, self.ssrc)
        pos = offset + HEADER_SIZE
        for c in self.csrc:
            _U32.pack_into(buf, pos, c)
            pos += 4
        if ext is not None:
            _EXT_HEADER.pack_into(buf, pos, ext.profile, len(ext.data) // 4)
            pos += 4
            buf[pos:pos + len(ext.data)] = ext.data
            pos += len(ext.data)
        n = len(self.payload)
        buf[pos:pos + n] = self.payload
        pos += n
        if self.padding:
            # RFC 3550 §5.1: the last padding octet counts the padding, itself included
            buf[pos:pos + self.padding - 1] = bytes(self.padding - 1)
            buf[pos + self.padding - 1] = self.padding
            pos += self.padding
        return pos - offset

    def to_bytes(self) -> bytes:
        buf = bytearray(self.size)
        self.pack_into(buf)
        return bytes(buf)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _check(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} out of range 0-127")
        if not 0 <= self.sequence <= 0xFFFF:
            raise RtpError(f"sequence {self.sequence} out of range")
        if not 0 <= self.timestamp <= 0xFFFFFFFF or not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise RtpError("timestamp/ssrc out of 32-bit range")
        if len(self.csrc) > 15 or any(not 0 <= c <= 0xFFFFFFFF for c in self.csrc):
            raise RtpError("at most 15 32-bit CSRCs")
        if self.extension is not None and (
            len(self.extension.data) % 4 or len(self.extension.data) > 4 * 0xFFFF
            or not 0 <= self.extension.profile <= 0xFFFF
        ):
            raise RtpError("extension data must be a multiple of 4 bytes, at most 65535 words")
        if not 0 <= self.padding <= 255:
            raise RtpError("padding is 0-255 bytes")


def parse_rtp(data: Buffer) -> RtpPacket:
    """Parse a datagram as RTP. Payload and extension data are views into ``data``."""
    n = len(data)
    if n < HEADER_SIZE:
        raise RtpError(f"{n} bytes is shorter than an RTP header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    cc = b0 & 0x0F
    pos = HEADER_SIZE + 4 * cc
    if pos > n:
        raise RtpError("CSRC list runs past the packet")
    csrc = struct.unpack_from(f"!{cc}I", data, HEADER_SIZE) if cc else ()
    mv = memoryview(data)
    extension = None
    if b0 & 0x10:
        if pos + 4 > n:
            raise RtpError("extension header runs past the packet")
        profile, words = _EXT_HEADER.unpack_from(data, pos)
        end = pos + 4 + 4 * words
        if end > n:
            raise RtpError("extension runs past the packet")
        extension = RtpExtension(profile, mv[pos + 4:end])
        pos = end
    end = n
    padding = 0
    if b0 & 0x20:
        padding = data[n - 1]
        if padding == 0 or pos + padding > n:
            raise RtpError(f"bad padding count {padding}")
        end = n - padding
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, mv[pos:end], bool(b1 & 0x80), csrc, extension, padding)


def peek_ssrc(data: Buffer) -> int | None:
    """SSRC of an RTP datagram (offset 8), None when too short."""
    return _U32.unpack_from(data, 8)[0] if len(data) >= HEADER_SIZE else None


def peek_rtcp_ssrc(data: Buffer) -> int | None:
    """Sender SSRC of a (compound) RTCP datagram (RFC 3550 §6.4: offset 4), None when too short."""
    return _U32.unpack_from(data, 4)[0] if len(data) >= 8 else None


def is_rtcp(data: Buffer) -> bool:
    """RFC 5761 §4: on a muxed port, RTCP packet types 192-223 sit where RTP has M+PT 64-95."""
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


def is_rtp(data: Buffer) -> bool:
    """RFC 7983 demux: first octet 128-191 is RTP/RTCP (0-3 STUN, 20-63 DTLS); RTCP excluded."""
    return len(data) >= HEADER_SIZE and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223
