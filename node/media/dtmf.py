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


class TelephoneEventReceiver:
    """Turns a stream of RFC 4733 packets into digits, each reported once.

    One key press is many packets sharing one RTP timestamp (§2.5.1.2: updates every 50 ms
    or so, and the end packet sent three times). A digit is reported on the first packet of
    a new (timestamp, event) pair: the start packet if it arrives, otherwise an update or
    an end packet; later packets of the same press are duplicates. ``last_end`` guards the
    retransmitted end packets arriving after a new press began (reordering).
    """

    __slots__ = ("_current", "_ended", "events", "duplicates")

    def __init__(self) -> None:
        self._current: tuple[int, int] | None = None
        self._ended: set[tuple[int, int]] = set()
        self.events = 0
        self.duplicates = 0

    def feed(self, timestamp: int, event: TelephoneEvent) -> str | None:
        """The digit a packet newly announces, or None (duplicate, non-DTMF event)."""
        key = (timestamp, event.event)
        if key == self._current or key in self._ended:
            self.duplicates += 1
            if event.end and key == self._current:
                self._end(key)
            return None
        self._current = key
        self.events += 1
        if event.end:
            self._end(key)
        return event.digit

    def _end(self, key: tuple[int, int]) -> None:
        self._ended.add(key)
        if len(self._ended) > 16:
            # only recent presses can still have retransmissions in flight
            self._ended = {key}


def telephone_event_payloads(digit: str, duration_ms: int = 100, volume: int = 10,
                             packet_ms: int = 20, end_repeats: int = 3) -> list[tuple[bytes, bool]]:
    """The payloads (and whether the RTP marker is set) that send ``digit`` per RFC 4733:
    all share one timestamp, the duration grows by ``packet_ms`` per packet, the first
    carries the marker, the final one has E set and is sent ``end_repeats`` times
    (§2.5.1.4). The caller sends one per 20 ms tick with the timestamp of the press."""
    if duration_ms < packet_ms or duration_ms % packet_ms:
        raise TelephoneEventError(f"DTMF duration {duration_ms} ms: use a multiple of {packet_ms} ms")
    steps = duration_ms // packet_ms
    unit = packet_ms * 8
    out: list[tuple[bytes, bool]] = []
    for i in range(1, steps):
        out.append((TelephoneEvent.for_digit(digit, volume=volume, duration=i * unit).to_bytes(), i == 1))
    end = TelephoneEvent.for_digit(digit, end=True, volume=volume, duration=min(steps * unit, 0xFFFF)).to_bytes()
    out.extend((end, steps == 1 and k == 0) for k in range(end_repeats))
    return out
