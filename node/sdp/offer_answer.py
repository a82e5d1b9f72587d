"""Offer/answer (RFC 3264) for the audio hivepbx terminates itself: G.711 and RFC 4733 events.

Used where the node is the media endpoint (announcements, IVR, voicemail later); a relayed
call does not negotiate, it rewrites addresses (see ``node.sdp.anchoring``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from node.sdp.errors import SdpNotAcceptable
from node.sdp.model import (
    DIRECTIONS,
    INACTIVE,
    RECVONLY,
    SENDONLY,
    SENDRECV,
    Attribute,
    Connection,
    Media,
    Origin,
    RtpMap,
    SessionDescription,
)
from node.sdp.origin import LocalOrigin


@dataclass(frozen=True, slots=True)
class Codec:
    """A payload format we can handle. ``static_pt`` for RFC 3551 static types, else dynamic."""

    name: str
    clock_rate: int = 8000
    channels: int = 1
    static_pt: int | None = None
    #: format parameters we offer (for telephone-event: the events we understand, RFC 4733 §2.4.1)
    fmtp: str | None = None

    def matches(self, rtpmap: RtpMap) -> bool:
        # encoding names are case-insensitive (RFC 4855 §3)
        return (
            rtpmap.encoding.lower() == self.name.lower()
            and rtpmap.clock_rate == self.clock_rate
            and (rtpmap.channels or 1) == self.channels
        )

    @property
    def is_telephone_event(self) -> bool:
        return self.name.lower() == "telephone-event"


PCMU = Codec("PCMU", 8000, static_pt=0)
PCMA = Codec("PCMA", 8000, static_pt=8)
#: DTMF digits 0-9 * # A-D (0-15) and flash (16), RFC 4733 §3.2
TELEPHONE_EVENT = Codec("telephone-event", 8000, fmtp="0-16")
DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA, TELEPHONE_EVENT)

#: RTP profiles we can answer without SRTP keys of our own
_PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
#: RFC 3264 §6.1: what the answerer may do given the offer's direction
_MIRROR = {SENDRECV: SENDRECV, SENDONLY: RECVONLY, RECVONLY: SENDONLY, INACTIVE: INACTIVE}
#: the o= of a description before ``LocalOrigin.stamp`` writes the real one
_PLACEHOLDER = Origin("-", "0", 0, "0.0.0.0")


def answer(
    offer: SessionDescription,
    supported_codecs: Sequence[Codec],
    local_ip: str,
    local_port: int,
    *,
    origin: LocalOrigin | None = None,
    direction: str = SENDRECV,
    ptime: int | None = None,
) -> SessionDescription:
    """Answer ``offer`` for one audio stream on ``local_ip``:``local_port``.

    Keeps the offer's m-line count and order (§6) and the offerer's payload type numbers and
    codec order (§6.1). The first acceptable audio stream gets ``local_port``; every other
    m-line is rejected with port 0. ``direction`` is what we want; the answer's direction is
    that intersected with the mirror of the offer's (sendonly → recvonly ...). ``ptime``
    None echoes the offer's a=ptime. Raises ``SdpNotAcceptable`` (488) when no audio codec
    is common.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    answered: list[Media] = []
    accepted = False
    for m in offer.media:
        am = None
        if not accepted and m.type == "audio" and m.port != 0 and m.proto in _PLAIN_RTP:
            am = _answer_audio(offer, m, supported_codecs, local_port, direction, ptime)
        if am is None:
            # RFC 3264 §6: a rejected stream keeps its m-line, port 0, and at least one format
            am = Media(m.type, 0, m.proto, m.formats)
        else:
            accepted = True
        answered.append(am)
    if not accepted:
        raise SdpNotAcceptable("no common audio codec")
    origin = origin or LocalOrigin()
    sd = SessionDescription(
        origin=_PLACEHOLDER,
        connection=Connection.for_ip(local_ip),
        # RFC 3264 §6: "The t= line in the answer MUST equal that of the offer"
        timing=offer.timing,
        media=tuple(answered),
    )
    return origin.stamp(sd, local_ip)


def make_offer(
    codecs: Sequence[Codec],
    local_ip: str,
    local_port: int,
    *,
    origin: LocalOrigin | None = None,
    direction: str = SENDRECV,
    ptime: int | None = 20,
    first_dynamic_pt: int = 101,
) -> SessionDescription:
    """An offer of one audio stream with ``codecs`` in preference order (RFC 3264 §5)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    if not any(not c.is_telephone_event for c in codecs):
        raise ValueError("an offer needs at least one audio codec")
    pts: list[str] = []
    attrs: list[Attribute] = []
    dynamic = first_dynamic_pt
    for c in codecs:
        if c.static_pt is not None:
            pt = c.static_pt
        else:
            pt, dynamic = dynamic, dynamic + 1
        pts.append(str(pt))
        ch = f"/{c.channels}" if c.channels != 1 else ""
        attrs.append(Attribute("rtpmap", f"{pt} {c.name}/{c.clock_rate}{ch}"))
        if c.fmtp:
            attrs.append(Attribute("fmtp", f"{pt} {c.fmtp}"))
    if ptime:
        attrs.append(Attribute("ptime", str(ptime)))
    attrs.append(Attribute(direction))
    media = Media("audio", local_port, "RTP/AVP", tuple(pts), attributes=tuple(attrs))
    sd = SessionDescription(origin=_PLACEHOLDER, connection=Connection.for_ip(local_ip), media=(media,))
    return (origin or LocalOrigin()).stamp(sd, local_ip)


def _answer_audio(
    offer: SessionDescription,
    m: Media,
    supported: Sequence[Codec],
    local_port: int,
    direction: str,
    ptime: int | None,
) -> Media | None:
    chosen: list[tuple[str, Codec, RtpMap]] = []
    for fmt in m.formats:
        if not fmt.isdigit():
            continue
        rtpmap = m.rtpmap(int(fmt))
        if rtpmap is None:
            continue
        for c in supported:
            if c.matches(rtpmap):
                chosen.append((fmt, c, rtpmap))
                break
    audio_rates = {c.clock_rate for _, c, _ in chosen if not c.is_telephone_event}
    if not audio_rates:
        return None
    formats: list[str] = []
    attrs: list[Attribute] = []
    for fmt, c, rtpmap in chosen:
        fmtp = None
        if c.is_telephone_event:
            if c.clock_rate not in audio_rates:
                continue  # RFC 4733 §2.1: events share the clock of the audio they go with
            # RFC 4733 §2.4.1: no fmtp means events 0-15
            events = _events(m.fmtp(int(fmt)) or "0-15") & _events(c.fmtp or "0-15")
            if not events:
                continue
            fmtp = _event_ranges(events)
        formats.append(fmt)
        attrs.append(Attribute("rtpmap", str(RtpMap(int(fmt), rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels))))
        if fmtp is not None:
            attrs.append(Attribute("fmtp", f"{fmt} {fmtp}"))
    ptime = ptime if ptime is not None else m.ptime
    if ptime:
        attrs.append(Attribute("ptime", str(ptime)))
    attrs.append(Attribute(_intersect(_MIRROR[offer.media_direction(m)], direction)))
    return Media("audio", local_port, m.proto, tuple(formats), attributes=tuple(attrs))


def _intersect(a: str, b: str) -> str:
    send = a in (SENDRECV, SENDONLY) and b in (SENDRECV, SENDONLY)
    recv = a in (SENDRECV, RECVONLY) and b in (SENDRECV, RECVONLY)
    return SENDRECV if send and recv else SENDONLY if send else RECVONLY if recv else INACTIVE


def _events(spec: str) -> set[int]:
    """'0-15,16' → {0..16}; malformed pieces are ignored (we then offer fewer events, never more)."""
    out: set[int] = set()
    for piece in spec.replace(" ", "").split(","):
        lo, dash, hi = piece.partition("-")
        if lo.isdigit() and (not dash or hi.isdigit()):
            a, b = int(lo), int(hi) if dash else int(lo)
            if a <= b <= 255:
                out.update(range(a, b + 1))
    return out


def _event_ranges(events: set[int]) -> str:
    ordered = sorted(events)
    pieces: list[str] = []
    start = prev = ordered[0]
    for e in ordered[1:] + [None]:  # type: ignore[list-item]
        if e is not None and e == prev + 1:
            prev = e
            continue
        pieces.append(str(start) if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ",".join(pieces)
