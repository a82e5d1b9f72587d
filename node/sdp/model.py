"""The SDP model (RFC 8866, formerly RFC 4566) and its wire form.

Immutable: offer/answer and relay rewriting build new descriptions with ``replace`` and
never touch what a peer sent, so the original stays available for logs and retries.
Only the lines hivepbx reasons about are typed (o=, c=, t=, m=, a=); every other line
(i=, u=, e=, p=, b=, r=, z=, k= and letters we do not know) is kept verbatim in ``other``
and written back in its RFC 8866 §5 place, so a parse → serialize round trip of a
well-formed description is byte-identical (bar LF → CRLF).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Iterator

#: RFC 8866 §6.7 media directions; the default when none is given is sendrecv.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
SENDRECV, SENDONLY, RECVONLY, INACTIVE = DIRECTIONS

#: RFC 3551 §6: static payload types usable without an a=rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

# RFC 8866 §5: the order of lines. Letters we do not know go after k=, before a=.
SESSION_ORDER = "vosiuepcbtrzk"
MEDIA_ORDER = "micbk"


def frozen(cls):
    """``@dataclass(frozen=True, slots=True)`` whose ``__init__`` stores through the slots'
    own descriptors. The generated one calls ``object.__setattr__`` per field (the way
    around frozenness), which made building descriptions a third of the SDP cost of a call;
    a field's slot descriptor does the same store at half the price. Everything else
    (equality, hashing, immutability, ``dataclasses.replace``) is the dataclass's."""
    cls = dataclass(frozen=True, slots=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    ns: dict = {}
    params = []
    for f in dataclasses.fields(cls):
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        else:
            assert f.default_factory is dataclasses.MISSING, "default factories are not supported"
            params.append(f.name)
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names)
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", ns)  # noqa: S102  (our own field names)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls


@frozen
class Origin:
    """o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (§5.2)."""

    username: str
    sess_id: str
    sess_version: int
    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    def __str__(self) -> str:
        return f"{self.username} {self.sess_id} {self.sess_version} {self.nettype} {self.addrtype} {self.address}"


@frozen
class Connection:
    """c=<nettype> <addrtype> <connection-address> (§5.7). ``address`` keeps any /ttl suffix."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def for_ip(cls, ip: str) -> "Connection":
        return cls(ip, addrtype_of(ip))

    @property
    def host(self) -> str:
        """The address without the multicast /ttl[/count] suffix."""
        return self.address.split("/", 1)[0]

    @property
    def unspecified(self) -> bool:
        """0.0.0.0 (RFC 2543 hold, RFC 3264 §8.4) or its IPv6 twin ``::``: "send me nothing"."""
        return is_unspecified(self.host)

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@frozen
class Attribute:
    """a=<name>[:<value>] (§5.13). ``value`` None is a property attribute (a=sendrecv)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@frozen
class RtpMap:
    """a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>] (§6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    def __str__(self) -> str:
        ch = f"/{self.channels}" if self.channels is not None else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{ch}"


def _attr_values(attributes: tuple[Attribute, ...], name: str) -> Iterator[str | None]:
    for a in attributes:
        if a.name == name:
            yield a.value


def _direction_of(attributes: tuple[Attribute, ...]) -> str | None:
    for a in attributes:
        if a.value is None and a.name in DIRECTIONS:
            return a.name
    return None


@frozen
class Media:
    """One media description: m=<media> <port>[/<count>] <proto> <fmt> ... and its lines (§5.14)."""

    type: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    connection: Connection | None = None
    attributes: tuple[Attribute, ...] = ()
    #: i=, b=, k= and unknown lines as (letter, value), in RFC 8866 order (as received within a letter)
    other: tuple[tuple[str, str], ...] = ()

    # --- attribute views
    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name:value``; '' for a property attribute; None if absent."""
        for a in self.attributes:
            if a.name == name:
                return "" if a.value is None else a.value
        return None

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    @property
    def direction(self) -> str | None:
        """The media-level direction attribute, None when absent (then the session's applies)."""
        return _direction_of(self.attributes)

    @property
    def ptime(self) -> int | None:
        v = self.attribute("ptime")
        if v:
            try:
                return int(float(v))
            except ValueError:
                return None
        return None

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats that are RTP payload type numbers (all of them for RTP/AVP)."""
        return tuple(int(f) for f in self.formats if f.isdigit())

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The a=rtpmap for ``payload_type``, else the RFC 3551 static assignment, else None."""
        prefix = f"{payload_type} "
        for v in _attr_values(self.attributes, "rtpmap"):
            if v and v.startswith(prefix):
                m = parse_rtpmap(v)
                if m is not None:
                    return m
        static = STATIC_PAYLOAD_TYPES.get(payload_type)
        if static is not None:
            name, rate, ch = static
            return RtpMap(payload_type, name, rate, ch if ch != 1 else None)
        return None

    def fmtp(self, payload_type: int) -> str | None:
        prefix = f"{payload_type} "
        for v in _attr_values(self.attributes, "fmtp"):
            if v and v.startswith(prefix):
                return v[len(prefix):].strip()
        return None

    def replace(self, **changes) -> "Media":
        return dataclasses.replace(self, **changes)

    def lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={' '.join((self.type, port, self.proto, *self.formats))}"]
        if self.other:
            out.extend(_ordered(MEDIA_ORDER, self.other, {"c": [str(self.connection)] if self.connection else []}))
        elif self.connection:
            # the common case (no i=/b=/k= lines) without the generic merge
            out.append(f"c={self.connection}")
        out.extend([f"a={a}" for a in self.attributes])
        return out


@frozen
class SessionDescription:
    """A whole SDP body. Serialize with ``to_bytes()`` (CRLF line ends, §5)."""

    origin: Origin
    name: str = "-"
    connection: Connection | None = None
    #: t= values; r=/z= lines live in ``other``
    timing: tuple[str, ...] = ("0 0",)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[Media, ...] = ()
    #: i=, u=, e=, p=, b=, r=, z=, k= and unknown lines as (letter, value), in RFC 8866 order
    #: (as received within a letter)
    other: tuple[tuple[str, str], ...] = ()
    version: int = 0

    def attribute(self, name: str) -> str | None:
        for a in self.attributes:
            if a.name == name:
                return "" if a.value is None else a.value
        return None

    @property
    def direction(self) -> str | None:
        """The session-level direction attribute, None when absent."""
        return _direction_of(self.attributes)

    def media_direction(self, media: Media) -> str:
        """Effective direction of ``media``: its own, else the session's, else sendrecv (§6.7)."""
        return media.direction or self.direction or SENDRECV

    def media_connection(self, media: Media) -> Connection | None:
        """Effective c= of ``media``: its own, else the session-level one (§5.7)."""
        return media.connection or self.connection

    def replace(self, **changes) -> "SessionDescription":
        return dataclasses.replace(self, **changes)

    def lines(self) -> list[str]:
        if self.other:
            typed = {
                "v": [str(self.version)],
                "o": [str(self.origin)],
                "s": [self.name],
                "c": [str(self.connection)] if self.connection else [],
                "t": list(self.timing),
            }
            out = list(_ordered(SESSION_ORDER, self.other, typed))
        else:
            # the common case (no i=/u=/e=/p=/b=/r=/z=/k= lines): v o s c t, in SESSION_ORDER
            out = [f"v={self.version}", f"o={self.origin}", f"s={self.name}"]
            if self.connection:
                out.append(f"c={self.connection}")
            out.extend([f"t={t}" for t in self.timing])
        out.extend([f"a={a}" for a in self.attributes])
        for m in self.media:
            out.extend(m.lines())
        return out

    def to_bytes(self) -> bytes:
        return serialize(self.lines())

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"


def serialize(lines: list[str]) -> bytes:
    """SDP lines → the body: CRLF line ends (§5)."""
    # surrogateescape: bytes that were not UTF-8 on the way in go back out unchanged
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _pairs(order: str, other: tuple[tuple[str, str], ...], typed: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    """(letter, value) in RFC 8866 order: typed fields and ``other`` lines merged by letter."""
    for letter in order:
        if letter in typed:
            for v in typed[letter]:
                yield letter, v
        for k, v in other:
            if k == letter:
                yield k, v
    for k, v in other:  # letters RFC 8866 does not define, kept where they most likely were
        if k not in order:
            yield k, v


def _ordered(order: str, other: tuple[tuple[str, str], ...], typed: dict[str, list[str]]) -> Iterator[str]:
    for k, v in _pairs(order, other, typed):
        yield f"{k}={v}"


def parse_rtpmap(value: str) -> RtpMap | None:
    """``value`` of an a=rtpmap line, or None when it is not well-formed."""
    pt, _, rest = value.strip().partition(" ")
    parts = rest.strip().split("/")
    if not pt.isdigit() or len(parts) < 2 or not parts[0] or not parts[1].isdigit():
        return None
    channels = None
    if len(parts) > 2:
        if not parts[2].isdigit():
            return None
        channels = int(parts[2])
    return RtpMap(int(pt), parts[0], int(parts[1]), channels)


def addrtype_of(ip: str) -> str:
    """'IP6' for an IPv6 literal, else 'IP4' (RFC 8866 §5.7 addrtype)."""
    return "IP6" if ":" in ip else "IP4"


def is_unspecified(host: str) -> bool:
    if "%" not in host and host.strip("0.:"):
        # any character but 0 . : (a zone id aside) means a non-zero address or no address
        # at all: no need for the (slow) ipaddress parse on every c= line
        return False
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
