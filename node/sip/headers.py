"""Header names (canonical and compact forms) and the few typed headers the core reads.

Everything else stays raw text: a B2BUA or proxy passes unknown headers through untouched
(sippy's lesson), and only what routing needs is ever parsed.
"""

from __future__ import annotations

from node.sip.errors import RemoteProtocolError
from node.sip.uri import _parse_params, _split_hostport, format_params

# RFC 3261 §7.3.3 and later RFCs: compact forms
COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "u": "Allow-Events",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}

_KNOWN = [
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition",
    "Content-Encoding", "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date",
    "Error-Info", "Event", "Expires", "From", "In-Reply-To", "Max-Forwards", "Min-Expires",
    "MIME-Version", "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path",
    "Priority", "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck",
    "Reason", "Record-Route", "Refer-To", "Referred-By", "Reply-To", "Replaces", "Require",
    "Retry-After", "Route", "RSeq", "Server", "Session-Expires", "Min-SE", "Subject",
    "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
    "Warning", "WWW-Authenticate",
]
_CANON = {n.lower(): n for n in _KNOWN}
_CANON.update(COMPACT)

#: headers whose value is a comma-separated list (RFC 3261 §7.3.1)
LIST_HEADERS = frozenset(
    ["Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require", "Proxy-Require",
     "Unsupported", "Accept", "Accept-Encoding", "Accept-Language", "Allow-Events", "Path",
     "Content-Encoding", "Content-Language", "In-Reply-To", "Call-Info", "Alert-Info", "Error-Info",
     "Warning", "Reason", "P-Asserted-Identity"]
)

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name; unknown names keep the peer's spelling."""
    c = _CANON.get(name.lower())
    if c is not None:
        return c
    if not name or any(ch not in _TOKEN_CHARS for ch in name):
        raise RemoteProtocolError(f"bad header name {name!r}")
    return name


class Via:
    """``SIP/2.0/UDP host:port;branch=...;rport`` (RFC 3261 §20.42, RFC 3581)."""

    __slots__ = ("transport", "host", "port", "params")

    def __init__(self, transport: str, host: str, port: int | None, params: dict[str, str | None]) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    @classmethod
    def parse(cls, text: str) -> "Via":
        # via-parm = sent-protocol LWS sent-by *( SEMI via-params )
        # sent-protocol = protocol-name SLASH protocol-version SLASH transport (LWS allowed around SLASH)
        proto, sep, rest = text.partition(";")
        ptext = rest if sep else ""
        parts = proto.split("/")
        if len(parts) != 3:
            raise RemoteProtocolError(f"bad Via sent-protocol in {text!r}")
        name = parts[0].strip()
        version = parts[1].strip()
        tail = parts[2].strip().split(None, 1)
        if name.upper() != "SIP" or len(tail) != 2:
            raise RemoteProtocolError(f"bad Via {text!r}")
        if version != "2.0":
            raise RemoteProtocolError(f"unsupported SIP version in Via {text!r}", 505)
        transport, sent_by = tail[0].upper(), tail[1].replace(" ", "").replace("\t", "")
        host, port = _split_hostport(sent_by)
        params = _parse_params(ptext) if ptext else {}
        return cls(transport, host, port, params)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def host_bare(self) -> str:
        h = self.host
        return h[1:-1] if h.startswith("[") else h

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hp}{format_params(self.params)}"


class CSeq:
    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    @classmethod
    def parse(cls, text: str) -> "CSeq":
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise RemoteProtocolError(f"bad CSeq {text!r}")
        seq = int(parts[0])
        # RFC 3261 §8.1.1.5: MUST be less than 2**31
        if seq >= 2**31:
            raise RemoteProtocolError(f"CSeq number too large {text!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
