"""SDP rewriting for media anchored in the node (the B2BUA's relay).

The B2BUA does not negotiate for its peers: codecs, payload types, fmtp, direction and
crypto pass through untouched, so the two phones still agree with each other. Only where
media goes changes: every address becomes the relay's and the audio port becomes the relay
leg's port, so no packet can flow phone to phone around the relay.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.sdp.model import Attribute, Connection, Media, Origin, SessionDescription, is_unspecified
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


# ---------------------------------------------------------------------------------------------
# Rewriting without the model. A phone (or a carrier's SBC) sends the same SDP in every call
# but for its o= line, its address and its port; the rewrite of such a body is that of the
# first one seen, with the relay's port put in. ``read_for_relay`` keeps, per *shape* (the
# body with those parts masked), what the full parse and ``rewrite_for_relay`` made of the
# first body, and only checks the masked parts of later ones: a call's three SDP steps
# (offer check, two rewrites) skip parsing, model objects and rendering.

#: shapes kept (phones, trunks and their codec sets: a node sees a few dozen)
SHAPES_MAX = 256
#: relay addresses rendered per shape (the node's own addresses)
_OUT_MAX = 8


class RelayShape:
    """What all SDP bodies of one shape have in common: the description parsed from the first
    one (``sample``: its o=, c= addresses and non-zero ports are that body's), where the
    relayed stream's address and port are read, and its rewrite per relay address.
    ``memo``: facts callers derive from ``sample`` alone (a codec check), kept with it."""

    __slots__ = ("sample", "relayed", "addr_line", "port_line", "memo", "_out")

    def __init__(self, sample: SessionDescription, relayed: int | None, addr_line: int, port_line: int) -> None:
        self.sample = sample
        self.relayed = relayed
        #: input line of the relayed stream's c= (its own, else the session's); -1: none
        self.addr_line = addr_line
        #: input line of the relayed stream's m=; -1: no relayed stream
        self.port_line = port_line
        self.memo: dict = {}
        #: relay address -> (output lines, index of o=, index of the relayed m=, its prefix, suffix)
        self._out: dict[str, tuple[tuple[str, ...], int, int, str, str]] = {}

    def rendered(self, ip: str) -> tuple[tuple[str, ...], int, int, str, str]:
        out = self._out.get(ip)
        if out is None:
            lines = rewrite_for_relay(self.sample, ip, 1).lines()
            o = next(i for i, ln in enumerate(lines) if ln.startswith("o="))
            m, prefix, suffix = -1, "", ""
            if self.relayed is not None:
                m = [i for i, ln in enumerate(lines) if ln.startswith("m=")][self.relayed]
                mtype = self.sample.media[self.relayed].type
                prefix = f"m={mtype} "
                assert lines[m].startswith(prefix + "1 ")
                suffix = lines[m][len(prefix) + 1:]
            out = (tuple(lines), o, m, prefix, suffix)
            if len(self._out) < _OUT_MAX:
                self._out[ip] = out
        return out


class RelayReading:
    """One SDP body as the relay needs it: where its sender receives (``address``) and the
    body for the other side (``render``). Made by ``read_for_relay``."""

    __slots__ = ("shape", "address", "_sd")

    def __init__(self, shape: RelayShape | None, address: MediaAddress | None, sd: SessionDescription | None) -> None:
        #: None when the body's shape is not kept (ICE or a=rtcp: their lines vary per call)
        self.shape = shape
        self.address = address
        self._sd = sd

    @property
    def description(self) -> SessionDescription:
        """The body's description; for a kept shape its ``sample`` stands in for it (the same
        but for o=, c= addresses and ports), which is all that codec checks read."""
        return self._sd if self._sd is not None else self.shape.sample  # type: ignore[union-attr]

    def render(self, ip: str, port: int) -> tuple[list[str], int]:
        """The lines of ``rewrite_for_relay(body, ip, port)`` and the index of its o= line
        (for ``LocalOrigin.stamp_lines``)."""
        if self._sd is not None:
            lines = rewrite_for_relay(self._sd, ip, port).lines()
            return lines, next(i for i, ln in enumerate(lines) if ln.startswith("o="))
        out, o, m, prefix, suffix = self.shape.rendered(ip)  # type: ignore[union-attr]
        lines = list(out)
        if m >= 0:
            lines[m] = f"{prefix}{port}{suffix}"
        return lines, o


_shapes: dict[tuple[str, ...], RelayShape] = {}


def read_for_relay(body: bytes) -> RelayReading:
    """``body`` read for the relay: as ``parse`` + ``media_address`` + ``rewrite_for_relay``
    would, and raising the same ``SdpError`` for a malformed body, but from the memo of its
    shape when one is kept."""
    text = body.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    key = _shape_key(lines, text)
    if key is not None:
        shape = _shapes.get(key)
        if shape is not None:
            return RelayReading(shape, _address(shape, lines), None)
    sd = parse(text)
    if key is None or any(a.name in _REWRITTEN for m in sd.media for a in m.attributes) or any(
        a.name in _ICE_ATTRIBUTES for a in sd.attributes
    ):
        return RelayReading(None, media_address(sd), sd)
    shape = _make_shape(sd, key)
    if len(_shapes) >= SHAPES_MAX:
        _shapes.clear()  # a flood of one-off shapes: start over rather than grow
    _shapes[key] = shape
    return RelayReading(shape, _address(shape, lines), None)


_MASKED = ("o=", "c=", "m=")


def _shape_key(lines: list[str], text: str) -> tuple[str, ...] | None:
    """``lines`` with the o= line, unicast c= addresses and non-zero m= ports masked, after
    checking those parts as ``parse`` would; None when the body is not plain CRLF lines or a
    masked part is malformed (the full parse then says what is wrong)."""
    if text.count("\n") != len(lines) - (0 if text.endswith("\r\n") else 1) or text.count("\r") != text.count("\n"):
        return None  # bare LF or CR line ends: left to the parser
    key: list[str] = []
    append = key.append
    for ln in lines:
        if not ln.startswith(_MASKED):  # a=, s=, t= ...: the bulk, part of the shape as they are
            append(ln)
            continue
        letter = ln[:2]
        if letter == "o=":
            parts = ln[2:].split()
            if len(parts) != 6 or not (parts[1] + parts[2]).isascii() or not parts[1].isdigit() or not parts[2].isdigit():
                return None
            append("o=")
        elif letter == "c=":
            parts = ln[2:].split()
            if len(parts) != 3:
                return None
            if is_unspecified(parts[2].split("/", 1)[0]):
                append(ln)  # hold is part of the shape
            else:
                append(f"c={parts[0]} {parts[1]} \0")
        elif letter == "m=":
            parts = ln[2:].split()
            if len(parts) < 4 or not parts[1].isascii() or not parts[1].isdigit() or int(parts[1]) > 65535:
                append(ln)  # port 0 / port count / no formats: whatever it is, the parser sees it
            elif parts[1] == "0" or parts[1].strip("0") == "":
                append(ln)
            else:
                append(f"m={parts[0]} \0 {' '.join(parts[2:])}")
    return tuple(key)


def _address(shape: RelayShape, lines: list[str]) -> MediaAddress | None:
    if shape.port_line < 0 or shape.addr_line < 0:
        return None
    port = int(lines[shape.port_line][2:].split()[1].partition("/")[0])
    host = lines[shape.addr_line][2:].split()[2].split("/", 1)[0]
    return MediaAddress(host, port, host, port + 1)


def _make_shape(sd: SessionDescription, key: tuple[str, ...]) -> RelayShape:
    relayed = relayed_stream(sd)
    session_c = -1
    m_lines: list[int] = []
    media_c: list[int] = []
    for i, ln in enumerate(key):
        if ln.startswith("m="):
            m_lines.append(i)
            media_c.append(-1)
        elif ln.startswith("c="):
            if m_lines:
                media_c[-1] = i
            else:
                session_c = i
    if relayed is None:
        return RelayShape(sd, None, -1, -1)
    addr = media_c[relayed] if media_c[relayed] >= 0 else session_c
    return RelayShape(sd, relayed, addr, m_lines[relayed])
