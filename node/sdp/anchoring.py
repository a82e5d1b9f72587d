"""SDP rewriting for media anchored in the node (the B2BUA's relay).

The B2BUA does not negotiate for its peers: codecs, payload types, fmtp, direction and
crypto pass through untouched, so the two phones still agree with each other. Only where
media goes changes: every address becomes the relay's and the audio port becomes the relay
leg's port, so no packet can flow phone to phone around the relay.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.sdp.model import Attribute, Connection, Media, Origin, SessionDescription
from node.sdp.origin import LocalOrigin
from node.sdp.parser import parse

#: ICE (RFC 8445/8839) would let the phones find a path around the relay; anchoring removes
#: it, as rtpengine's ICE=remove does. a=rtcp is rewritten, not removed (RFC 3605).
_ICE_ATTRIBUTES = frozenset(
    ("candidate", "remote-candidates", "end-of-candidates", "ice-ufrag", "ice-pwd",
     "ice-options", "ice-lite", "ice-mismatch", "ice-pacing")
)


#: media attributes ``rewrite_for_relay`` drops or changes
_REWRITTEN = _ICE_ATTRIBUTES | {"rtcp"}
#: c= of the relay per address it advertises
_relay_connections: dict[str, Connection] = {}


def _relayed_attributes(
    attributes: tuple[Attribute, ...], relayed: bool, port: int, relay_conn: Connection
) -> tuple[Attribute, ...]:
    """A media section's attributes without ICE, a=rtcp pointing at the relay (kept on the
    relayed stream only)."""
    out: list[Attribute] = []
    for a in attributes:
        if a.name in _ICE_ATTRIBUTES:
            continue
        if a.name == "rtcp":
            if not relayed:
                continue
            has_addr = a.value is not None and len(a.value.split()) == 4
            a = Attribute("rtcp", f"{port + 1} {relay_conn}" if has_addr else str(port + 1))
        out.append(a)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MediaAddress:
    """Where a peer wants its audio: feed this to ``RelayLeg.set_remote``.

    ``host`` may be 0.0.0.0 / :: (hold, RFC 3264 §8.4): the relay then sends nothing.
    """

    host: str
    port: int
    rtcp_host: str
    rtcp_port: int


def relayed_stream(sd: SessionDescription) -> int | None:
    """Index of the m-line the relay carries: the first audio stream with a non-zero port."""
    for i, m in enumerate(sd.media):
        if m.type == "audio" and m.port != 0:
            return i
    return None


def media_address(sd: SessionDescription) -> MediaAddress | None:
    """The peer's RTP/RTCP destination for the relayed stream, None when there is none."""
    i = relayed_stream(sd)
    if i is None:
        return None
    m = sd.media[i]
    conn = sd.media_connection(m)
    if conn is None:
        return None
    host = conn.host
    rtcp_host, rtcp_port = host, m.port + 1
    rtcp = m.attribute("rtcp")
    if rtcp:
        # a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1)
        parts = rtcp.split()
        if parts and parts[0].isdigit() and 0 < int(parts[0]) <= 65535:
            rtcp_port = int(parts[0])
            if len(parts) == 4:
                rtcp_host = parts[3]
    return MediaAddress(host, m.port, rtcp_host, rtcp_port)


def rewrite_for_relay(
    sdp: SessionDescription | bytes | str,
    ip: str,
    port: int,
    origin: LocalOrigin | None = None,
) -> SessionDescription:
    """``sdp`` as the other leg must see it: media at ``ip``:``port`` (RTCP ``port``+1).

    Every c= becomes ``ip`` except unspecified ones (0.0.0.0 / ::), which are hold and must
    survive. The relayed audio stream gets ``port``; any other active stream gets port 0
    (disabled, RFC 3264 §8.2) since the relay carries only one. ICE attributes are dropped
    and a=rtcp points at the relay. With ``origin`` (one per leg) the o= line is ours and
    stable (RFC 3264 §8); without it only the o= address is replaced.
    Raises ``SdpError`` when ``sdp`` is bytes and malformed.
    """
    sd = sdp if isinstance(sdp, SessionDescription) else parse(sdp)
    relay_conn = _relay_connections.get(ip)
    if relay_conn is None:
        relay_conn = Connection.for_ip(ip)
        if len(_relay_connections) < 64:  # the node's own addresses: a handful
            _relay_connections[ip] = relay_conn
    relayed = relayed_stream(sd)
    media: list[Media] = []
    missing_conn = False
    for i, m in enumerate(sd.media):
        conn = m.connection
        if conn is not None and not conn.unspecified:
            conn = relay_conn
        elif conn is None and sd.connection is None:
            missing_conn = True
        attrs = m.attributes
        for a in attrs:
            if a.name in _REWRITTEN:  # else the attributes pass as they are (the usual case)
                attrs = _relayed_attributes(attrs, i == relayed, port, relay_conn)
                break
        # built directly rather than with .replace(): dataclasses.replace is several times
        # slower, and this runs for every SDP crossing the bridge
        media.append(Media(m.type, port if i == relayed else 0, m.proto, m.formats, None, conn, attrs, m.other))
    session_conn = sd.connection
    if (session_conn is not None and not session_conn.unspecified) or missing_conn:
        session_conn = relay_conn
    attributes = sd.attributes
    for a in attributes:
        if a.name in _ICE_ATTRIBUTES:
            attributes = tuple(a for a in attributes if a.name not in _ICE_ATTRIBUTES)
            break
    if origin is None:
        o = sd.origin
        o = Origin(o.username, o.sess_id, o.sess_version, ip, relay_conn.addrtype, o.nettype)
    else:
        o = sd.origin  # replaced by origin.stamp below
    out = SessionDescription(o, sd.name, session_conn, sd.timing, attributes, tuple(media), sd.other, sd.version)
    return out if origin is None else origin.stamp(out, ip)
