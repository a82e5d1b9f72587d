"""Bytes → SessionDescription (RFC 8866 §5, §9 grammar).

Strict where a mistake would misroute media (o=, c=, m=, ports), liberal elsewhere: bare-LF
line ends, blank lines, a missing s=/t= and unknown type letters are accepted (unknown
letters are kept, not dropped, so relaying never loses what a peer said). Every failure is
an ``SdpError`` (400) or ``SdpNotAcceptable`` (488) naming the offending line.
"""

from __future__ import annotations

from node.sdp.errors import SdpError, SdpNotAcceptable
from node.sdp.model import MEDIA_ORDER, SESSION_ORDER, Attribute, Connection, Media, Origin, SessionDescription

#: type letters that may only appear before the first m= line (§5)
_SESSION_ONLY = frozenset("vosuepztr")
_KNOWN = frozenset("vosiuepcbtrzkam")

#: attributes that read the same in every call of a phone (codecs, packet time, direction):
#: parsed once and shared (they are immutable), which saves building them and the garbage
#: collector scanning them. Per-call ones (crypto keys, ICE, ports) are never kept.
_SHARED_NAMES = frozenset(("rtpmap", "fmtp", "ptime", "maxptime", "sendrecv", "sendonly", "recvonly",
                           "inactive", "rtcp-mux", "rtcp-fb", "silenceSupp"))
_shared: dict[str, Attribute] = {}
_SHARED_MAX = 512


def parse(data: bytes | str) -> SessionDescription:
    """Parse an SDP body. Raises ``SdpError`` (status_hint 400/488) on anything unusable."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, (bytes, bytearray, memoryview)) else data
    # lines end in LF, one CR before it dropped: CRLF → LF first, then split (one pass each in C)
    raw = (text.replace("\r\n", "\n") if "\r" in text else text).split("\n")
    if raw[-1].endswith("\r"):
        raw[-1] = raw[-1][:-1]
    lines: list[str] = []
    append = lines.append
    for ln in raw:
        if len(ln) > 1 and ln[1] == "=" and "a" <= ln[0] <= "z":
            append(ln)
        elif ln.strip():
            raise SdpError(f"malformed SDP line {ln[:60]!r}")
        # else a blank line
    if not lines:
        raise SdpError("empty SDP body")
    if lines[0][0] != "v":
        raise SdpError("SDP must start with v=")
    if lines[0][2:].strip() != "0":
        raise SdpError(f"unsupported SDP version {lines[0][2:]!r}")

    origin: Origin | None = None
    name: str | None = None
    connection: Connection | None = None
    timing: list[str] = []
    attributes: list[Attribute] = []
    other: list[tuple[str, str]] = []
    media: list[Media] = []

    i = 1
    n = len(lines)
    while i < n and lines[i][0] != "m":
        letter, value = lines[i][0], lines[i][2:]
        if letter == "v":
            raise SdpError("more than one v= line")
        elif letter == "o":
            if origin is not None:
                raise SdpError("more than one o= line")
            origin = _origin(value)
        elif letter == "s":
            if name is not None:
                raise SdpError("more than one s= line")
            name = value
        elif letter == "c":
            if connection is not None:
                raise SdpError("more than one session-level c= line")
            connection = _connection(value)
        elif letter == "t":
            timing.append(value)
        elif letter == "a":
            attributes.append(_shared.get(value) or _attribute(value))
        else:
            other.append((letter, value))
        i += 1
    if origin is None:
        raise SdpError("SDP without o= line")

    while i < n:
        m, i = _media(lines, i)
        media.append(m)

    return SessionDescription(
        origin=origin,
        name="-" if name is None else name,
        connection=connection,
        timing=tuple(timing) or ("0 0",),
        attributes=tuple(attributes),
        media=tuple(media),
        other=_in_order(other, SESSION_ORDER) if other else (),
    )


def _in_order(lines: list[tuple[str, str]], order: str) -> tuple[tuple[str, str], ...]:
    """``lines`` in the order serialization writes them (RFC 8866 §5; stable within a letter),
    so that parse(serialize(sd)) == sd even for a peer that sent lines out of order."""
    if not lines:
        return ()
    rank = {letter: i for i, letter in enumerate(order)}
    return tuple(sorted(lines, key=lambda kv: rank.get(kv[0], len(order))))


def _media(lines: list[str], i: int) -> tuple[Media, int]:
    """The media section starting at ``lines[i]`` (an m= line) and the index after it."""
    mline = lines[i][2:]
    parts = mline.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line {mline!r}")
    mtype, portspec, proto = parts[0], parts[1], parts[2]
    formats = tuple(parts[3:])
    port_s, slash, count_s = portspec.partition("/")
    port = _port(port_s, mline)
    port_count = None
    if slash:
        if not count_s.isdigit() or int(count_s) < 1:
            raise SdpError(f"bad port count in m= line {mline!r}")
        port_count = int(count_s)
    if not formats and port != 0:
        raise SdpError(f"m= line without formats {mline!r}")
    connection: Connection | None = None
    attributes: list[Attribute] = []
    other: list[tuple[str, str]] = []
    i += 1
    n = len(lines)
    while i < n:
        line = lines[i]
        letter = line[0]
        if letter == "a":
            value = line[2:]
            attributes.append(_shared.get(value) or _attribute(value))
        elif letter == "m":
            break
        elif letter == "c":
            if connection is not None:
                # RFC 8866 §5.7 allows several only for layered multicast, which we do not relay
                raise SdpNotAcceptable("several c= lines in one media section")
            connection = _connection(line[2:])
        elif letter in _SESSION_ONLY:
            raise SdpError(f"{letter}= line inside a media section")
        else:
            other.append((letter, line[2:]))
        i += 1
    return Media(
        mtype, port, proto, formats, port_count, connection, tuple(attributes),
        _in_order(other, MEDIA_ORDER) if other else (),
    ), i


def _port(s: str, line: str) -> int:
    if not s.isdigit() or int(s) > 65535:
        raise SdpError(f"bad port in m= line {line!r}")
    return int(s)


def _origin(value: str) -> Origin:
    # o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (§5.2)
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"malformed o= line {value!r}")
    username, sess_id, version, nettype, addrtype, address = parts
    if not sess_id.isdigit() or not version.isdigit():
        raise SdpError(f"non-numeric session id or version in o= line {value!r}")
    return Origin(username, sess_id, int(version), address, addrtype, nettype)


#: c= values seen (a phone's address recurs in all its calls): shared, like ``_shared``
_connections: dict[str, Connection] = {}


def _connection(value: str) -> Connection:
    c = _connections.get(value)
    if c is None:
        c = _parse_connection(value)
        if len(_connections) < _SHARED_MAX:
            _connections[value] = c
    return c


def _parse_connection(value: str) -> Connection:
    # c=<nettype> <addrtype> <connection-address> (§5.7)
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"malformed c= line {value!r}")
    nettype, addrtype, address = parts
    if nettype != "IN":
        raise SdpNotAcceptable(f"unsupported network type {nettype!r}")
    if addrtype not in ("IP4", "IP6"):
        raise SdpNotAcceptable(f"unsupported address type {addrtype!r}")
    return Connection(address, addrtype, nettype)


def _attribute(value: str) -> Attribute:
    name, colon, v = value.partition(":")
    if not name or " " in name:
        raise SdpError(f"malformed a= line {value[:60]!r}")
    a = Attribute(name, v if colon else None)
    if name in _SHARED_NAMES and len(_shared) < _SHARED_MAX and len(value) <= 200:
        _shared[value] = a
    return a
