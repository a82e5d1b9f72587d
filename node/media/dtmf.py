"""RFC 4733 telephone-events (DTMF) carried as RTP payload.

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |     event     |E|R| volume    |          duration             |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from node.media.errors import TelephoneEventError

PAYLOAD_SIZE = 4
_EVENT = struct.Struct("!BBH")

#: RFC 4733 §3.2 DTMF event codes
DTMF_EVENTS: dict[str, int] = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
EVENT_DIGITS: dict[int, str] = {v: k for k, v in DTMF_EVENTS.items()}
FLASH = 16


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One event report. ``volume`` is -dBm0 (0-63); ``duration`` in RTP timestamp units."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @property
    def digit(self) -> str | None:
        """'0'-'9', '*', '#', 'A'-'D' for DTMF events, None for others."""
        return EVENT_DIGITS.get(self.event)

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63 or not 0 <= self.duration <= 0xFFFF:
            raise TelephoneEventError(f"event/volume/duration out of range: {self}")
        # R (reserved) is sent as zero (§2.3.4)
        _EVENT.pack_into(buf, offset, self.event, (0x80 if self.end else 0) | self.volume, self.duration)
        return PAYLOAD_SIZE

    def to_bytes(self) -> bytes:
        buf = bytearray(PAYLOAD_SIZE)
        self.pack_into(buf)
        return bytes(buf)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def for_digit(cls, digit: str, **kw) -> "TelephoneEvent":
        try:
            return cls(DTMF_EVENTS[digit.upper()], **kw)
        except KeyError:
            raise TelephoneEventError(f"not a DTMF digit: {digit!r}") from None


def parse_telephone_event(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """The event in an RTP payload. Extra bytes after the first 4 are ignored (the R bit too,
    §2.3.4); fewer than 4 is an error."""
    if len(payload) < PAYLOAD_SIZE:
        raise TelephoneEventError(f"telephone-event payload of {len(payload)} bytes, need 4")
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)
