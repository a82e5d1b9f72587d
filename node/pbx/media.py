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
from node.sdp.anchoring import media_address, relayed_stream, rewrite_for_relay
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
    i = relayed_stream(sd)
    if i is None:
        raise SdpNotAcceptable("no active audio stream in the offer")
    m = sd.media[i]
    for pt in m.payload_types:
        rm = m.rtpmap(pt)
        if rm is not None and rm.encoding.upper() in SUPPORTED_CODECS:
            return sd
    raise SdpNotAcceptable("no supported audio codec offered (PCMU, PCMA)")


class MediaAnchor:
    __slots__ = ("session", "advertise", "_origins", "_checked")

    def __init__(self, session: RelaySession, advertise: str | None) -> None:
        self.session = session
        self.advertise = advertise
        #: our o= line towards each side (RFC 3264 §8)
        self._origins = {"a": LocalOrigin(), "b": LocalOrigin()}
        #: the offer ``check_offer`` parsed, until ``rewrite`` uses it: the caller's offer is
        #: checked, then rewritten for the callee, and need not be parsed twice. (Kept no
        #: longer: a call outlives its SDP by its transactions' timers, and parsed SDP is
        #: many small objects for the garbage collector to scan.)
        self._checked: tuple[bytes, SessionDescription] | None = None

    #: where this call's media flows (metrics, tests): the node's own relay
    where = "local"
    #: call control may use the synchronous ``rewrite`` (nothing to wait for)
    needs_await = False

    def check_offer(self, body: bytes) -> None:
        """Refuse (488) an offer with no G.711 audio before ringing anybody."""
        self._checked = (body, check_offer(body))

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
        sd = checked[1] if checked is not None and checked[0] == body else parse(body)
        addr = media_address(sd)
        leg = self.session.leg(from_side)
        if addr is not None:
            leg.set_remote(addr.host, addr.port, addr.rtcp_port, addr.rtcp_host)
        else:
            leg.set_remote("0.0.0.0", 0)
        to_side = "b" if from_side == "a" else "a"
        ip = self.advertise or local_ip
        out = rewrite_for_relay(sd, ip, self.session.leg(to_side).local_port)
        return self._origins[to_side].stamp_bytes(out, ip)

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
