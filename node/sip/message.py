"""SIP requests and responses (RFC 3261 §7).

Theory of operation: a message is a start line, an ordered list of ``(name, value)``
header pairs with canonical names (unknown names keep the peer's spelling and are matched
case-insensitively), and a body. Header values are stored unfolded and stripped, so they
serialise back as received; ``to_bytes`` always writes the Content-Length of the body.

The typed views (``call_id``, ``cseq``, ``vias``, ``from_``, ``to``, ``contacts``,
``max_forwards``, ``routes``, ``record_routes``, ``content_type``, ``uri``) are cached. On a
parsed message the parser has checked all of them, so they never raise and mostly cost a
dict lookup; on a message built in code they are parsed on first use and may raise. The
cached objects are shared by every reader: change a message through ``set``/``add``/
``remove`` (which drop the cache), not by mutating what a view returned. ``expires`` stays
lazy and may raise (RFC 4475 §3.1.2.4: a bad Expires alone need not fail the request).
"""

from __future__ import annotations

import re

from node.sip.errors import LocalProtocolError, RemoteProtocolError
from node.sip.headers import KNOWN_NAMES, LIST_HEADERS, NAMES, CSeq, Via, canonical_name
from node.sip.uri import (
    DELTA_LIMIT,
    TOKEN_C,
    NameAddr,
    Uri,
    parse_generic_params,
    split_header_list,
    split_list_strict,
)

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 412: "Conditional Request Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 439: "First Hop Lacks Outbound Support", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

# --- value parsers shared by the views and the parser ----------------------------------
# callid = word [ "@" word ] ; word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`"
#   / "'" / "~" / "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}")
# (several "@" are tolerated: some stacks send them and nothing depends on the split)
_CALL_ID = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}@]++")
# media-type = m-type SLASH m-subtype *(SEMI m-parameter)
_MEDIA_TYPE = re.compile(rf"([{TOKEN_C}]++)[ \t]*+/[ \t]*+([{TOKEN_C}]++)[ \t]*+")
_MISSING = object()


def parse_call_id(value: str) -> str:
    if _CALL_ID.fullmatch(value) is None:
        if not value:
            raise RemoteProtocolError("empty Call-ID")
        raise RemoteProtocolError(f"bad Call-ID {value[:60]!r} (RFC 3261 §25.1 callid)")
    return value


def parse_vias(values: list[str]) -> list[Via]:
    if len(values) == 1 and "," not in values[0]:
        return [Via.parse(values[0])]
    vias: list[Via] = []
    for value in values:
        for elem in split_list_strict(value, "Via"):
            vias.append(Via.parse(elem))
    if not vias:
        raise RemoteProtocolError("missing Via header")
    return vias


def parse_name_addr(value: str, name: str) -> NameAddr:
    try:
        return NameAddr.parse(value)
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"bad {name} header: {e.reason}") from None


def parse_name_addrs(values: list[str], name: str) -> list[NameAddr]:
    out: list[NameAddr] = []
    try:
        for value in values:
            for elem in split_list_strict(value, name):
                out.append(NameAddr.parse(elem))
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"bad {name} header: {e.reason}") from None
    return out


def check_name_addrs(values: "list[str] | tuple[str, ...]", name: str) -> None:
    """Validate without building objects (the parser's check for Contact, Route...)."""
    contact = name == "Contact"
    try:
        for value in values:
            if "," in value:
                for elem in split_list_strict(value, name):
                    NameAddr.check(elem, contact)
            else:
                NameAddr.check(value, contact)
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"bad {name} header: {e.reason}") from None


def parse_contacts(values: list[str]) -> list[NameAddr]:
    """Contact values; a lone ``*`` (REGISTER, RFC 3261 §10.2.2) gives an empty list."""
    if len(values) == 1:
        v = values[0]
        if v == "*":
            return []
        if v and "," not in v and v[0] not in " \t" and v[-1] not in " \t":
            # one phone, one Contact (every REGISTER): what parse_name_addrs does, inline
            try:
                return [NameAddr.parse(v)]
            except RemoteProtocolError as e:
                raise RemoteProtocolError(f"bad Contact header: {e.reason}") from None
    return parse_name_addrs(values, "Contact")


def parse_expires(value: str) -> int:
    """An Expires value (RFC 3261 §20.19: delta-seconds below 2**32)."""
    if not (value.isdigit() and value.isascii() and len(value) <= 10 and int(value) < DELTA_LIMIT):
        raise RemoteProtocolError(f"bad Expires value {value[:20]!r} (delta-seconds below 2**32)")
    return int(value)


def parse_max_forwards(value: str) -> int:
    # Max-Forwards = 1*DIGIT, 0-255 (RFC 3261 §20.22)
    n = int(value) if value.isdigit() and value.isascii() and len(value) <= 5 else 256
    if n > 255:
        raise RemoteProtocolError(f"bad Max-Forwards {value[:20]!r} (0 to 255)")
    return n


def parse_content_type(value: str) -> str:
    """The media type, lower-cased, without parameters (RFC 3261 §20.15)."""
    c = _CT_SEEN.get(value)
    if c is not None:
        return c
    m = _MEDIA_TYPE.match(value)
    if m is None:
        raise RemoteProtocolError(f"bad Content-Type {value[:60]!r} (type/subtype)")
    rest = value[m.end() :]
    if rest:
        try:
            parse_generic_params(rest)
        except RemoteProtocolError as e:
            raise RemoteProtocolError(f"bad Content-Type {value[:60]!r}: {e.reason}") from None
    c = f"{m.group(1)}/{m.group(2)}".lower()
    if len(value) <= 128:
        if len(_CT_SEEN) >= 256:
            _CT_SEEN.clear()
        _CT_SEEN[value] = c
    return c


_CT_SEEN: dict[str, str] = {}  # valid Content-Type values seen → media type (few distinct ones)


def _same_name(stored: str, key: str, low: str | None) -> bool:
    return stored == key or (low is not None and stored.lower() == low)


class Message:
    __slots__ = ("headers", "body", "_cache")

    def __init__(self, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.body = body
        self._cache: dict[str, object] = {}

    # --- raw header access -------------------------------------------------
    @staticmethod
    def _key(name: str) -> tuple[str, str | None]:
        key = canonical_name(name)
        # unknown names are stored as the peer spelt them: compare those case-insensitively
        return key, (None if key in KNOWN_NAMES else key.lower())

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name`` (any spelling)."""
        key = NAMES.get(name)
        if key is not None:  # a known name: stored canonical, compared exactly
            for n, v in self.headers:
                if n == key:
                    return v
            return default
        key, low = self._key(name)
        for n, v in self.headers:
            if n == key or (low is not None and n.lower() == low):
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split for list headers."""
        key = NAMES.get(name)
        if key is not None:  # a known name: stored canonical, compared exactly (as ``get``)
            vals = [v for n, v in self.headers if n == key]
        else:
            key, low = self._key(name)
            vals = [v for n, v in self.headers if _same_name(n, key, low)]
        if key in LIST_HEADERS:
            out: list[str] = []
            for v in vals:
                out.extend(split_header_list(v))
            return out
        return vals

    def _values(self, key: str) -> list[str]:
        """Raw values of a known header (no list splitting)."""
        return [v for n, v in self.headers if n == key]

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value`` (in the first one's place)."""
        key, low = self._key(name)
        self._cache.clear()
        for i, (n, _) in enumerate(self.headers):
            if _same_name(n, key, low):
                self.headers[i] = (key, value)
                self.headers[i + 1 :] = [h for h in self.headers[i + 1 :] if not _same_name(h[0], key, low)]
                return
        self.headers.append((key, value))

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Add a header; ``first`` puts it before any same-named one (e.g. a new top Via)."""
        key, low = self._key(name)
        self._cache.clear()
        if first:
            for i, (n, _) in enumerate(self.headers):
                if _same_name(n, key, low):
                    self.headers.insert(i, (key, value))
                    return
        self.headers.append((key, value))

    def remove(self, name: str) -> None:
        key, low = self._key(name)
        self._cache.clear()
        self.headers = [h for h in self.headers if not _same_name(h[0], key, low)]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    # --- typed views (cached) ------------------------------------------------
    def _required(self, name: str) -> str:
        vals = self._values(name)
        if not vals:
            raise RemoteProtocolError(f"missing {name} header")
        if len(vals) > 1:
            raise RemoteProtocolError(f"{len(vals)} {name} headers where one is allowed")
        return vals[0]

    @property
    def call_id(self) -> str:
        try:
            return self._cache["call_id"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["call_id"] = parse_call_id(self._required("Call-ID"))
            return c

    @property
    def cseq(self) -> CSeq:
        try:
            return self._cache["cseq"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["cseq"] = CSeq.parse(self._required("CSeq"))
            return c

    @property
    def vias(self) -> list[Via]:
        try:
            return self._cache["vias"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["vias"] = parse_vias(self._values("Via"))
            return c

    @property
    def top_via(self) -> Via:
        return self.vias[0]

    @property
    def from_(self) -> NameAddr:
        try:
            return self._cache["from"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["from"] = parse_name_addr(self._required("From"), "From")
            return c

    @property
    def to(self) -> NameAddr:
        try:
            return self._cache["to"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["to"] = parse_name_addr(self._required("To"), "To")
            return c

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; a lone ``*`` (REGISTER) is returned as an empty list — see ``contact_star``."""
        try:
            return self._cache["contacts"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["contacts"] = parse_contacts(self._values("Contact"))
            return c

    @property
    def contact_star(self) -> bool:
        vals = self._values("Contact")
        if not vals or (len(vals) == 1 and "*" not in vals[0]):
            return False  # the common answer without splitting the list
        return [v.strip() for v in self.get_all("Contact")] == ["*"]

    @property
    def max_forwards(self) -> int | None:
        c = self._cache.get("max_forwards", _MISSING)
        if c is _MISSING:
            vals = self._values("Max-Forwards")
            if len(vals) > 1:
                raise RemoteProtocolError(f"{len(vals)} Max-Forwards headers where one is allowed")
            c = self._cache["max_forwards"] = parse_max_forwards(vals[0]) if vals else None
        return c  # type: ignore[return-value]

    @property
    def expires(self) -> int | None:
        """Expires in seconds (RFC 3261 §20.19: delta-seconds below 2**32); lazy, may raise."""
        v = self.get("Expires")
        return None if v is None else parse_expires(v)

    @property
    def routes(self) -> list[NameAddr]:
        try:
            return self._cache["routes"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["routes"] = parse_name_addrs(self._values("Route"), "Route")
            return c

    @property
    def record_routes(self) -> list[NameAddr]:
        try:
            return self._cache["record_routes"]  # type: ignore[return-value]
        except KeyError:
            c = self._cache["record_routes"] = parse_name_addrs(self._values("Record-Route"), "Record-Route")
            return c

    @property
    def content_type(self) -> str | None:
        """Media type, lower-cased and without parameters (``application/sdp``), or None."""
        c = self._cache.get("content_type", _MISSING)
        if c is _MISSING:
            v = self.get("Content-Type")
            c = self._cache["content_type"] = None if v is None else parse_content_type(v)
        return c  # type: ignore[return-value]

    # --- serialisation ---------------------------------------------------------
    def _start_line(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form, always with a Content-Length that matches the body (RFC 3261 §18.3)."""
        body = self.body
        lines = [self._start_line()]
        lines += [f"{n}: {v}" for n, v in self.headers if n != "Content-Length"]
        lines.append(f"Content-Length: {len(body)}")
        # a CR or LF inside a value would start a header of its own (header injection): looked
        # for in the lines joined without separators (two memchr scans; counting the CRs and
        # LFs of the whole head, as this did, walked it twice character by character)
        probe = "".join(lines)
        if "\n" in probe or "\r" in probe:
            raise LocalProtocolError("CR or LF inside the start line or a header value")
        lines.append("\r\n")
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        return data + body if body else data

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("method", "uri_text", "version")

    def __init__(
        self,
        method: str,
        uri: str | Uri,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri_text = str(uri)
        self.version = version

    @property
    def uri(self) -> Uri:
        """The Request-URI, parsed from ``uri_text`` (re-parsed if ``uri_text`` was changed)."""
        text = self.uri_text
        c = self._cache.get("uri")
        if c is not None and c[0] is text:  # type: ignore[index]
            u = c[1]  # type: ignore[index]
            if type(u) is not Uri:  # a match checked by the parser, built on first use
                u = Uri._from_parts(u.groups())
                self._cache["uri"] = (text, u)
            return u  # type: ignore[return-value]
        u = Uri.parse(text)
        self._cache["uri"] = (text, u)
        return u

    @uri.setter
    def uri(self, value: str | Uri) -> None:
        self.uri_text = str(value)
        self._cache.pop("uri", None)

    def _start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    __slots__ = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason
        self.version = version

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# Headers a response copies from its request (RFC 3261 §8.2.6.2); Record-Route too when the
# response may establish a dialog (RFC 3261 §12.1.1), Timestamp into a 100 (§8.2.6.1)
_COPIED = frozenset(("Via", "From", "To", "Call-ID", "CSeq"))
_COPIED_RR = _COPIED | {"Record-Route"}
_COPIED_100 = _COPIED | {"Timestamp"}


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request`` with Via/From/To/Call-ID/CSeq copied and an optional To tag."""
    copied = _COPIED_RR if 100 < status < 300 else _COPIED_100 if status == 100 else _COPIED
    # the request's own (immutable) pairs: nothing re-built
    hdrs = [h for h in request.headers if h[0] in copied]
    if to_tag is not None and status != 100:
        for i, h in enumerate(hdrs):
            if h[0] == "To" and request.to.tag is None:
                hdrs[i] = ("To", f"{h[1]};tag={to_tag}")
    if headers:
        hdrs.extend(headers)
    return Response(status, reason, hdrs, body)
