"""Music on hold across the B2BUA bridge, and the tenant's music files.

How a hold works (what keeps phones happy): the holding phone's re-INVITE (a=sendonly or
a=inactive, or the old c=0.0.0.0) is still forwarded end to end, so the held phone learns it
is held (shows it, answers a=recvonly) exactly as without us. Once that re-INVITE has been
answered with a 2xx, the node plays music to the held party *through the relay leg that
faces it*: same source address and port as the call's media, so no re-INVITE of the held
phone, no new port, no NAT pinhole to open. Meanwhile whatever the holding phone still sends
(silence, its own music) is not relayed, so the held party hears only our music. The
resuming re-INVITE (a=sendrecv / recvonly), once answered, stops the music and restores the
two-way relay at once. An a=inactive offer is forwarded unchanged; the music is sent anyway
(phones play or drop what arrives on an inactive stream; none we know of complains).

Music: one shared ``MusicOnHold`` source per file and engine (node/media_engine/moh.py), so
a thousand held callers cost one position and a thousand ``sendto`` per tick. Each tenant
may upload its own (``hivepbx moh upload TENANT FILE``, converted by sox to 8 kHz mono);
otherwise a generated default tune is used. ``moh_source(engine, data_dir, tenant_id)`` is
the API for other features (call park, queues).
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter, Gauge

from node.media import g711
from node.media.tones import FRAME
from node.media.wav import WavFormatError, read_wav, write_wav
from node.media_engine.moh import MusicOnHold
from node.sdp.errors import SdpError
from node.sdp.model import INACTIVE, SENDONLY, is_unspecified
from node.sdp.parser import parse

if TYPE_CHECKING:
    from node.media_engine.engine import MediaEngine

log = logging.getLogger("hivepbx.hold")

_HDR = struct.Struct("!BBHII")
MOH_NAME = "moh.wav"
MOH_FEEDS = Gauge("hivepbx_moh_feeds", "Held parties of bridged calls hearing music on hold now")
HOLDS = Counter("hivepbx_holds", "Holds of bridged calls answered with music on hold")


class MohError(ValueError):
    """A music-on-hold upload or file problem, with a message for the operator."""


# ------------------------------------------------------------------ the music files
def moh_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "moh"


def tenant_file(data_dir: str | Path, tenant_id: int) -> Path:
    if isinstance(tenant_id, bool) or not isinstance(tenant_id, int) or tenant_id < 0:
        raise MohError(f"bad tenant id {tenant_id!r}")
    return moh_dir(data_dir) / "tenant" / str(tenant_id) / MOH_NAME


def default_tune() -> np.ndarray:
    """Eight seconds of a soft arpeggio (C major, A minor, F, G), so the default is music
    rather than a beep: easy to tell from speech and from call-progress tones."""
    notes = [261.63, 329.63, 392.0, 523.25, 220.0, 261.63, 329.63, 440.0,
             174.61, 220.0, 261.63, 349.23, 196.0, 246.94, 293.66, 392.0]
    n = 4000  # 0.5 s per note
    t = np.arange(n) / 8000
    env = np.minimum(1.0, t / 0.02) * np.exp(-2.5 * t)
    out = [0.25 * env * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) for f in notes]
    return np.round(np.concatenate(out) * 32767 / 1.3).astype(np.int16)


def default_file(data_dir: str | Path) -> Path:
    p = moh_dir(data_dir) / "default" / MOH_NAME
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        write_wav(p, default_tune())
    return p


def music_file(data_dir: str | Path, tenant_id: int) -> Path:
    """The tenant's uploaded music, else the generated default."""
    own = tenant_file(data_dir, tenant_id)
    return own if own.exists() else default_file(data_dir)


def upload(data_dir: str | Path, tenant_id: int, src: str | Path) -> Path:
    """Store ``src`` (any format sox reads) as the tenant's music on hold."""
    from node.media_engine.prompts import PromptError, convert

    if not Path(src).is_file():
        raise MohError(f"no such file: {src}")
    dst = tenant_file(data_dir, tenant_id)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        convert(src, dst)
        if len(read_wav(dst)) < FRAME:
            dst.unlink()
            raise MohError(f"{src} holds no audio")
    except (PromptError, WavFormatError) as e:
        dst.unlink(missing_ok=True)
        raise MohError(str(e)) from None
    return dst


def delete(data_dir: str | Path, tenant_id: int) -> bool:
    p = tenant_file(data_dir, tenant_id)
    if p.exists():
        p.unlink()
        return True
    return False


_SOURCES: "weakref.WeakKeyDictionary[MediaEngine, dict[tuple[str, int], MusicOnHold]]" = weakref.WeakKeyDictionary()


def moh_source(engine: "MediaEngine", data_dir: str | Path, tenant_id: int) -> MusicOnHold:
    """The tenant's shared music source on this engine (``ep.listen(src)`` for an endpoint,
    ``MohFeed`` for a relay leg). A new upload is picked up by the next hold."""
    path = music_file(data_dir, tenant_id)
    key = (str(path), os.stat(path).st_mtime_ns)
    per = _SOURCES.get(engine)
    if per is None:
        per = _SOURCES[engine] = {}
    src = per.get(key)
    if src is None:
        for k in [k for k in per if k[0] == key[0]]:
            if per[k].listeners == 0:
                del per[k]  # an older version of the file nobody hears any more
        src = per[key] = MusicOnHold(engine, path)
    return src


# ------------------------------------------------------------------ music into a relay leg
class MohFeed:
    """Music sent to one relay leg's peer every engine tick (an engine ticker), in our own
    RTP stream (SSRC, sequence, timestamps)."""

    def __init__(self, engine: "MediaEngine", moh: MusicOnHold, leg, pt: int) -> None:
        self.engine = engine
        self.leg = leg
        self.pt = pt if pt in g711.NAMES else g711.PCMU
        self._listener = moh.listener()
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._marker = True
        self.sent = 0
        self._open = True
        engine.add_ticker(self)
        MOH_FEEDS.inc()

    def tick(self) -> None:
        payload = self._listener.read(self.pt)
        if not payload:
            return
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + FRAME) & 0xFFFFFFFF
        pkt = _HDR.pack(0x80, self.pt | (0x80 if self._marker else 0), self._seq, self._ts, self.ssrc) + payload
        if self.leg.inject(pkt):
            self._marker = False
            self.sent += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            MOH_FEEDS.dec()
        self.engine.remove_ticker(self)
        self._listener.close()


def _drop(data: bytes) -> bool:
    return False


class HoldState:
    """The music of one call, if a side holds: which side is held and its feed."""

    __slots__ = ("held_side", "feed", "_muted_leg")

    def __init__(self) -> None:
        self.held_side: str | None = None
        self.feed: MohFeed | None = None
        self._muted_leg = None

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        if self._muted_leg is not None:
            self._muted_leg.remove_tap(_drop)
            self._muted_leg = None
        self.held_side = None


def is_hold_offer(body: bytes) -> bool | None:
    """True: the offer puts the other side on hold (sendonly / inactive / c=0.0.0.0); False:
    it does not; None: not SDP we understand (leave things as they are)."""
    try:
        sd = parse(body)
    except SdpError:
        return None
    audio = next((m for m in sd.media if m.type == "audio" and m.port != 0), None)
    if audio is None:
        return None
    if sd.media_direction(audio) in (SENDONLY, INACTIVE):
        return True
    conn = sd.media_connection(audio)
    return bool(conn is not None and is_unspecified(conn.host))


def answer_codec(body: bytes) -> int:
    """The first G.711 payload type of an SDP answer (PCMU when it says nothing usable)."""
    try:
        sd = parse(body)
    except SdpError:
        return g711.PCMU
    audio = next((m for m in sd.media if m.type == "audio" and m.port != 0), None)
    if audio is None:
        return g711.PCMU
    return next((pt for pt in audio.payload_types if pt in g711.NAMES), g711.PCMU)


def on_offer_answered(call, offerer: str, offer: bytes, answer: bytes) -> None:
    """A re-INVITE / UPDATE from ``offerer`` was answered 2xx by the other side: start music
    towards the other side if it is a hold, stop it if it resumes. Never raises: music is a
    nicety, the call itself must go on whatever happens here."""
    try:
        _offer_answered(call, offerer, offer, answer)
    except Exception:
        log.exception("music on hold failed (call %s)", getattr(call, "id", "?"))


def _offer_answered(call, offerer: str, offer: bytes, answer: bytes) -> None:
    media = getattr(call, "media", None)
    session = getattr(media, "session", None)
    apps = getattr(call.host, "apps", None)
    if session is None and getattr(media, "remote_hold", None) is not None:
        # rtpengine relays this call: it plays the music (node/pbx/media_rtpengine.py)
        media.remote_hold(call, offerer, is_hold_offer(offer))
        return
    if session is None or apps is None:
        return  # no relay or no media engine: hold is forwarded end to end only
    hold = is_hold_offer(offer)
    if hold is None:
        return
    state: HoldState | None = getattr(call, "hold", None)
    if state is None:
        state = call.hold = HoldState()
    held = "b" if offerer == "a" else "a"
    if not hold:
        if state.held_side is not None and state.held_side == held:
            state.stop()
            log.info("call %s resumed: music off", call.id)
        return
    if state.held_side == held:
        return  # already playing (a refreshed hold offer)
    state.stop()
    src = moh_source(apps.engine, call.host.cfg.data_dir, call.tenant.id)
    state.feed = MohFeed(apps.engine, src, session.leg(held), answer_codec(answer))
    state._muted_leg = session.leg(offerer)
    state._muted_leg.add_tap(_drop)
    state.held_side = held
    HOLDS.inc()
    if getattr(call, "span", None) is not None:
        call.span.add_event("music-on-hold", {"hivepbx.held_side": held})
    log.info("call %s: side %s holds, music to side %s", call.id, offerer, held)


def on_call_ended(call) -> None:
    state: HoldState | None = getattr(call, "hold", None)
    if state is not None:
        state.stop()
