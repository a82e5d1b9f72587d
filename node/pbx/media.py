"""Media anchoring for one call: the RTP relay session and the SDP that crosses the bridge.

The B2BUA does not negotiate codecs for its peers (they agree with each other through us);
it only makes every stream flow through the node's relay, so NAT latching works and no
peer ever learns the other's address. SDP from side X tells where X receives (its relay
leg's remote) and, rewritten with the other leg's port, goes to the other side.
"""

from __future__ import annotations

from node.rtp_engine.relay import RelaySession, RtpRelay
from node.sdp.anchoring import media_address, relayed_stream, rewrite_for_relay
from node.sdp.errors import SdpNotAcceptable
from node.sdp.model import SessionDescription
from node.sdp.origin import LocalOrigin
from node.sdp.parser import parse

#: what a leg must offer for us to bridge it (issue scope: G.711 and RFC 4733 events)
SUPPORTED_CODECS = frozenset(("PCMU", "PCMA"))


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

    def check_offer(self, body: bytes) -> None:
        """Refuse (488) an offer with no G.711 audio before ringing anybody."""
        sd = parse(body)
        i = relayed_stream(sd)
        if i is None:
            raise SdpNotAcceptable("no active audio stream in the offer")
        m = sd.media[i]
        for pt in m.payload_types:
            rm = m.rtpmap(pt)
            if rm is not None and rm.encoding.upper() in SUPPORTED_CODECS:
                self._checked = (body, sd)
                return
        raise SdpNotAcceptable("no supported audio codec offered (PCMU, PCMA)")

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

    async def open(self, call_id: str, tenant: str) -> MediaAnchor:
        return MediaAnchor(await self.relay.open_session(call_id, tenant), self.advertise)
