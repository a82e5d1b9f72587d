"""Header names (canonical and compact forms) and the few typed headers the core reads.

Everything else stays raw text: a B2BUA or proxy passes unknown headers through untouched
(sippy's lesson), and only what routing needs is ever parsed.
"""

from __future__ import annotations

import re

from node.sip.errors import RemoteProtocolError
from node.sip.uri import (
    GENVAL_C,
    HOST,
    HOSTNAME,
    IPV6REF,
    MEMO_KEY_MAX,
    MEMO_SIZE,
    PORT,
    TOKEN_C,
    _GEN_PARAMS_FAST,
    _ipv6_ok,
    _params_fast,
    format_params,
    parse_generic_params,
)

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
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Type",
    "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity", "In-Reply-To",
    "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "P-Asserted-Identity",
    "P-Preferred-Identity", "Path", "Priority", "Privacy", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Reject-Contact", "Reply-To", "Replaces", "Request-Disposition", "Require",
    "Retry-After", "Route", "RSeq", "Server", "Session-Expires", "Min-SE", "Subject",
    "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
    "Warning", "WWW-Authenticate",
]
_CANON = {n.lower(): n for n in _KNOWN}
_CANON.update(COMPACT)
KNOWN_NAMES = frozenset(_KNOWN)

#: every spelling seen on the wire that maps without lower-casing: canonical, lower, upper
#: and compact forms. The parser's hot loop is one lookup here per header line.
NAMES: dict[str, str] = {}
for _n in _KNOWN:
    NAMES[_n] = NAMES[_n.lower()] = NAMES[_n.upper()] = _n
for _c, _n in COMPACT.items():
    NAMES[_c] = NAMES[_c.upper()] = _n
NAMES["Call-Id"] = "Call-ID"
NAMES["Cseq"] = "CSeq"
NAMES["Content-length"] = "Content-Length"
NAMES["Content-type"] = "Content-Type"
NAMES["Max-forwards"] = "Max-Forwards"
NAMES["Record-route"] = "Record-Route"
NAMES["User-agent"] = "User-Agent"

#: methods defined by RFC 3261 and the extensions in common use (RFC 3262, 3311, 3428, 3515,
#: 3903, 6086, 6665). An unknown method is still a valid request: the TU answers 501.
METHODS = frozenset(
    ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "MESSAGE",
     "REFER", "PUBLISH", "SUBSCRIBE", "NOTIFY", "INFO"]
)

#: headers whose value is a comma-separated list (RFC 3261 §7.3.1)
LIST_HEADERS = frozenset(
    ["Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require", "Proxy-Require",
     "Unsupported", "Accept", "Accept-Encoding", "Accept-Language", "Allow-Events", "Path",
     "Content-Encoding", "Content-Language", "In-Reply-To", "Call-Info", "Alert-Info", "Error-Info",
     "Warning", "Reason", "P-Asserted-Identity"]
)

#: headers that may appear once only (RFC 3261 §7.3.1, §20; RFC 4475 §3.3.8 multi01, §3.3.9 mcl01)
SINGLE_HEADERS = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type")

_TOKEN = re.compile(f"[{TOKEN_C}]++")


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name; unknown names keep the peer's spelling."""
    c = NAMES.get(name)
    if c is not None:
        return c
    c = _CANON.get(name.lower())
    if c is not None:
        return c
    if _TOKEN.fullmatch(name) is None:
        raise RemoteProtocolError(f"bad header name {name!r}")
    return name


# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport ; SLASH = SWS "/" SWS
# sent-by = host [ COLON port ]
_VIA_FAST = re.compile(
    rf"(?i:SIP)/2\.0/([{TOKEN_C}]++) ({HOSTNAME}|{IPV6REF})(?::({PORT}))?"
    rf"((?:;[{TOKEN_C}]++(?:=[{GENVAL_C}]++)?+)*+)"
)
_VIA_SLOW = re.compile(
    rf"[ \t]*+([{TOKEN_C}]++)[ \t]*+/[ \t]*+([{TOKEN_C}]++)[ \t]*+/[ \t]*+([{TOKEN_C}]++)"
    rf"[ \t]++({HOST})(?:[ \t]*+:[ \t]*+({PORT}))?[ \t]*+"
)


# "SIP/2.0/UDP host:port" (a Via before its first ';', as received) → (transport, host,
# port, version): a phone or proxy sends the same one message after message
_VIA_PREFIX: dict[str, tuple] = {}
# the parameters phones and proxies usually send, in the usual order: matching this leaves
# nothing for _check_via_params (values present, rport digits, no name twice)
_VIA_USUAL_PARAMS = re.compile(
    rf";branch=([{TOKEN_C}]++)(;rport(?:=([0-9]{{1,5}}))?+)?+(?:;received=([{GENVAL_C}]++))?+"
)


def _check_via_params(params: dict[str, str | None], text: str) -> None:
    # via-branch / via-received / via-maddr / via-ttl take a value; rport's is digits (RFC 3581)
    get = params.get
    if get("branch", "") is None or get("received", "") is None or get("maddr", "") is None or get("ttl", "") is None:
        raise RemoteProtocolError(f"a Via parameter needs a value in {text!r}")
    rport = get("rport")
    if rport is not None and not (rport.isdigit() and rport.isascii() and len(rport) <= 5):
        raise RemoteProtocolError(f"bad rport value in Via {text!r}")


class Via:
    """``SIP/2.0/UDP host:port;branch=...;rport`` (RFC 3261 §20.42, RFC 3581).

    ``transport`` is upper-cased; ``version`` is the sent-protocol's version, a token that
    only the start line's version decides on (RFC 4475 §3.1.2.16: answer 505, routed by it).
    """

    __slots__ = ("transport", "host", "port", "params", "version")

    def __init__(
        self, transport: str, host: str, port: int | None, params: dict[str, str | None], version: str = "2.0"
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.version = version

    @classmethod
    def parse(cls, text: str) -> "Via":
        """One via-parm (split a Via header's list first: ``split_list_strict``)."""
        semi = text.find(";")
        prefix = text if semi < 0 else text[:semi]
        hit = _VIA_PREFIX.get(prefix)
        if hit is not None:
            # "SIP/2.0/UDP host:port" was checked before: only the parameters are new
            ptext = "" if semi < 0 else text[semi:]
            usual = _VIA_USUAL_PARAMS.fullmatch(ptext) if ptext else None
            if usual is not None:  # nothing left to check
                branch, rport, rport_value, received = usual.groups()
                params = {"branch": branch}
                if rport is not None:
                    params["rport"] = rport_value
                if received is not None:
                    params["received"] = received
                return Via(hit[0], hit[1], hit[2], params, hit[3])
            if not ptext or _GEN_PARAMS_FAST.fullmatch(ptext) is not None:
                params = _params_fast(ptext) if ptext else {}
                if params:
                    _check_via_params(params, text)
                return Via(hit[0], hit[1], hit[2], params, hit[3])
        v = cls._parse(text)
        if len(prefix) <= MEMO_KEY_MAX:
            if len(_VIA_PREFIX) >= MEMO_SIZE:
                _VIA_PREFIX.clear()
            _VIA_PREFIX[prefix] = (v.transport, v.host, v.port, v.version)
        return v

    @classmethod
    def check(cls, text: str) -> None:
        """Raise as ``parse`` would, building nothing in the common case (a parsed message
        builds its Vias when first read: the transaction layer matches responses on text)."""
        semi = text.find(";")
        hit = _VIA_PREFIX.get(text if semi < 0 else text[:semi])
        if hit is not None:
            if semi < 0:
                return
            ptext = text[semi:]
            if _VIA_USUAL_PARAMS.fullmatch(ptext) is not None:
                return
            if _GEN_PARAMS_FAST.fullmatch(ptext) is not None:
                _check_via_params(_params_fast(ptext), text)
                return
        cls.parse(text)

    @classmethod
    def _parse(cls, text: str) -> "Via":
        m = _VIA_FAST.fullmatch(text)
        if m is not None:
            transport, host, port, ptext = m.groups()
            version = "2.0"
            params = _params_fast(ptext) if ptext else {}
        else:
            m = _VIA_SLOW.match(text)
            if m is None:
                raise RemoteProtocolError(f"bad Via sent-protocol or sent-by in {text!r}")
            name, version, transport, host, port = m.groups()
            if name.upper() != "SIP":
                raise RemoteProtocolError(f"Via protocol is not SIP in {text!r}")
            rest = text[m.end() :]
            if rest and rest[0] != ";":
                if rest[0].isdigit():
                    raise RemoteProtocolError(f"bad Via port (0 to 65535) in {text!r}")
                raise RemoteProtocolError(f"unexpected {rest[:20]!r} in Via {text!r}")
            try:
                params = parse_generic_params(rest)
            except RemoteProtocolError as e:
                raise RemoteProtocolError(f"{e.reason} in Via {text!r}") from None
        if host[0] == "[" and not _ipv6_ok(host):
            raise RemoteProtocolError(f"bad IPv6 reference in Via {text!r}")
        if params:
            _check_via_params(params, text)
        return Via(
            transport if transport.isupper() else transport.upper(), host,
            int(port) if port is not None else None, params, version,  # range checked by the pattern
        )

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def host_bare(self) -> str:
        h = self.host
        return h[1:-1] if h.startswith("[") else h

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/{self.version}/{self.transport} {hp}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method
_CSEQ = re.compile(rf"([0-9]++)[ \t]++([{TOKEN_C}]++)")
CSEQ_LIMIT = 2**31  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31


class CSeq:
    """``CSeq: 4711 INVITE`` (RFC 3261 §20.16)."""

    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    @classmethod
    def parse(cls, text: str) -> "CSeq":
        digits, sp, method = text.partition(" ")
        if not (sp and digits.isdigit() and digits.isascii() and method in METHODS):
            m = _CSEQ.fullmatch(text.strip(" \t"))
            if m is None:
                raise RemoteProtocolError(f"bad CSeq {text[:60]!r} (RFC 3261 §20.16: number and method)")
            digits, method = m.groups()
        seq = int(digits) if len(digits) <= 10 else CSEQ_LIMIT
        if seq >= CSEQ_LIMIT:
            raise RemoteProtocolError(f"CSeq number {digits[:24]} is not below 2**31 (RFC 3261 §8.1.1.5)")
        return CSeq(seq, method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"
