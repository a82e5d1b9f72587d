"""Media anchoring for one call: the RTP relay session and the SDP that crosses the bridge.

The B2BUA does not negotiate codecs for its peers (they agree with each other through us);
it only makes every stream flow through the node's relay, so NAT latching works and no
peer ever learns the other's address. SDP from side X tells where X receives (its relay
leg's remote) and, rewritten with the other leg's port, goes to the other side.

Every anchor (this one, and node/pbx/media_rtpengine.py's, which hands the relay to an
rtpengine) offers ``rewrite_async``: call control awaits it, because an external relay is
asked over the network. The local relay answers at once; its ``rewrite`` stays synchronous
for the features that re-wire a call's media inside the node (transfer, park, pickup).
"""

from __future__ import annotations

from prometheus_client import Counter

from node.rtp_engine.relay import RelaySession, RtpRelay
from node.sdp.anchoring import RelayReading, read_for_relay, relayed_stream
from node.sdp.errors import SdpNotAcceptable
from node.sdp.model import SessionDescription
from node.sdp.origin import LocalOrigin
from node.sdp.parser import parse

#: what a leg must offer for us to bridge it (issue scope: G.711 and RFC 4733 events)
SUPPORTED_CODECS = frozenset(("PCMU", "PCMA"))

#: where calls' media is anchored (a call moved mid-call by a fallback counts again), and why:
#: local plain | recording | fallback, rtpengine plain (node/pbx/media_rtpengine.py)
ANCHORED = Counter("hivepbx_media_anchored_calls", "Bridged calls by where their media is relayed, and why",
                   ["where", "reason"])
_LOCAL_PLAIN = ANCHORED.labels("local", "plain")


def check_offer(body: bytes) -> SessionDescription:
    """The parsed offer if it has an active audio stream with G.711; SdpNotAcceptable (488)."""
    sd = parse(body)
    why = _refusal(sd)
    if why:
        raise SdpNotAcceptable(why)
    return sd


def _refusal(sd: SessionDescription) -> str:
    """Why an offer cannot be bridged ("" when it can)."""
    i = relayed_stream(sd)
    if i is None:
        return "no active audio stream in the offer"
    m = sd.media[i]
    for pt in m.payload_types:
        rm = m.rtpmap(pt)
        if rm is not None and rm.encoding.upper() in SUPPORTED_CODECS:
            return ""
    return "no supported audio codec offered (PCMU, PCMA)"


def _check_reading(reading: RelayReading) -> None:
    shape = reading.shape
    if shape is None:
        why = _refusal(reading.description)
    else:  # the verdict depends on the shape only (codecs, which streams are active)
        why = shape.memo.get("bridgeable")
        if why is None:
            why = shape.memo["bridgeable"] = _refusal(shape.sample)
    if why:
        raise SdpNotAcceptable(why)


class MediaAnchor:
    __slots__ = ("session", "advertise", "_origins", "_checked")

    def __init__(self, session: RelaySession, advertise: str | None) -> None:
        self.session = session
        self.advertise = advertise
        #: our o= line towards each side (RFC 3264 §8)
        self._origins = {"a": LocalOrigin(), "b": LocalOrigin()}
        #: the offer ``check_offer`` read, until ``rewrite`` uses it: the caller's offer is
        #: checked, then rewritten for the callee, and need not be read twice. (Kept no
        #: longer: a call outlives its SDP by its transactions' timers.)
        self._checked: tuple[bytes, RelayReading] | None = None

    #: where this call's media flows (metrics, tests): the node's own relay
    where = "local"
    #: call control may use the synchronous ``rewrite`` (nothing to wait for)
    needs_await = False

    def check_offer(self, body: bytes) -> None:
        """Refuse (488) an offer with no G.711 audio before ringing anybody."""
        reading = read_for_relay(body)
        _check_reading(reading)
        self._checked = (body, reading)

    async def rewrite_async(self, from_side: str, body: bytes, local_ip: str, *, offer: bool | None = None) -> bytes:
        """``rewrite`` for call control, which awaits every anchor alike (``offer`` is what an
        external relay needs to know; the local relay does not care)."""
        return self.rewrite(from_side, body, local_ip)

    def initial_offer(self, body: bytes, local_ip: str) -> bytes:
        """The caller's offer as every B leg (fork, attempt) of the call gets it."""
        return self.rewrite("a", body, local_ip)

    def rewrite(self, from_side: str, body: bytes, local_ip: str) -> bytes:
        """SDP received from ``from_side`` → the SDP to send to the other side."""
        checked, self._checked = self._checked, None
        reading = checked[1] if checked is not None and checked[0] == body else read_for_relay(body)
        addr = reading.address
        session = self.session
        if from_side == "a":
            leg, to_side, other = session.a, "b", session.b
        else:
            leg, to_side, other = session.leg(from_side), "a", session.a
        if addr is not None:
            leg.set_remote(addr.host, addr.port, addr.rtcp_port, addr.rtcp_host)
        else:
            leg.set_remote("0.0.0.0", 0)
        ip = self.advertise or local_ip
        lines, o = reading.render(ip, other.local_port)
        return self._origins[to_side].stamp_lines(lines, o, ip)

    def close(self) -> None:
        self.session.close()


class MediaAnchors:
    """Factory the PBX service calls once per call."""

    def __init__(self, relay: RtpRelay, advertise: str | None = None) -> None:
        self.relay = relay
        self.advertise = advertise

    async def open(self, call_id: str, tenant: str, call=None, *, reason: str = "plain") -> MediaAnchor:
        """``call`` (the B2BUA call, when known) lets other factories choose per call;
        ``reason``: why the call is on the node's relay (metrics)."""
        (_LOCAL_PLAIN if reason == "plain" else ANCHORED.labels("local", reason)).inc()
        return MediaAnchor(await self.relay.open_session(call_id, tenant), self.advertise)
