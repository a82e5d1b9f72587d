"""SIP requests and responses (RFC 3261 §7).

Theory of operation: a message is a start line, an ordered list of ``(name, value)``
header pairs with canonical names, and a body. The parser stores raw header text; the
typed views the core needs (Via, CSeq, From/To, Contact, ...) are parsed on first use
and cached, so a message that is only relayed never pays for parsing headers it does not
read. Any mutation through ``set``/``add``/``remove`` drops the cache.
"""

from __future__ import annotations

from node.sip.errors import RemoteProtocolError
from node.sip.headers import LIST_HEADERS, CSeq, Via, canonical_name
from node.sip.uri import NameAddr, Uri, split_header_list

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 302: "Moved Temporarily",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


class Message:
    __slots__ = ("headers", "body", "_cache")

    def __init__(self, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.body = body
        self._cache: dict[str, object] = {}

    # --- raw header access -------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name`` (any spelling)."""
        name = canonical_name(name)
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split for list headers."""
        name = canonical_name(name)
        vals = [v for n, v in self.headers if n == name]
        if name in LIST_HEADERS:
            out: list[str] = []
            for v in vals:
                out.extend(split_header_list(v))
            return out
        return vals

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value`` (in the first one's place)."""
        name = canonical_name(name)
        self._cache.clear()
        for i, (n, _) in enumerate(self.headers):
            if n == name:
                self.headers[i] = (name, value)
                self.headers[i + 1 :] = [h for h in self.headers[i + 1 :] if h[0] != name]
                return
        self.headers.append((name, value))

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Add a header; ``first`` puts it before any same-named one (e.g. a new top Via)."""
        name = canonical_name(name)
        self._cache.clear()
        if first:
            for i, (n, _) in enumerate(self.headers):
                if n == name:
                    self.headers.insert(i, (name, value))
                    return
        self.headers.append((name, value))

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._cache.clear()
        self.headers = [h for h in self.headers if h[0] != name]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    # --- typed views (lazy) -------------------------------------------------
    def _required(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise RemoteProtocolError(f"missing {name} header")
        return v

    @property
    def call_id(self) -> str:
        c = self._cache.get("call_id")
        if c is None:
            c = self._required("Call-ID").strip()
            if not c:
                raise RemoteProtocolError("empty Call-ID")
            self._cache["call_id"] = c
        return c  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        c = self._cache.get("cseq")
        if c is None:
            c = self._cache["cseq"] = CSeq.parse(self._required("CSeq"))
        return c  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        c = self._cache.get("vias")
        if c is None:
            vals = self.get_all("Via")
            if not vals:
                raise RemoteProtocolError("missing Via header")
            c = self._cache["vias"] = [Via.parse(v) for v in vals]
        return c  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        return self.vias[0]

    @property
    def from_(self) -> NameAddr:
        c = self._cache.get("from")
        if c is None:
            c = self._cache["from"] = NameAddr.parse(self._required("From"))
        return c  # type: ignore[return-value]

    @property
    def to(self) -> NameAddr:
        c = self._cache.get("to")
        if c is None:
            c = self._cache["to"] = NameAddr.parse(self._required("To"))
        return c  # type: ignore[return-value]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; a lone ``*`` (REGISTER) is returned as an empty list — see ``contact_star``."""
        c = self._cache.get("contacts")
        if c is None:
            vals = self.get_all("Contact")
            c = [] if vals == ["*"] else [NameAddr.parse(v) for v in vals]
            self._cache["contacts"] = c
        return c  # type: ignore[return-value]

    @property
    def contact_star(self) -> bool:
        return [v.strip() for v in self.get_all("Contact")] == ["*"]

    def _int_header(self, name: str) -> int | None:
        v = self.get(name)
        if v is None:
            return None
        v = v.strip()
        if not v.isdigit():
            raise RemoteProtocolError(f"bad {name} value {v!r}")
        return int(v)

    @property
    def max_forwards(self) -> int | None:
        return self._int_header("Max-Forwards")

    @property
    def expires(self) -> int | None:
        return self._int_header("Expires")

    @property
    def routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.get_all("Route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.get_all("Record-Route")]

    @property
    def content_type(self) -> str | None:
        v = self.get("Content-Type")
        return None if v is None else v.split(";", 1)[0].strip().lower()

    # --- serialisation ---------------------------------------------------------
    def _start_line(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        lines = [self._start_line()]
        for n, v in self.headers:
            if n != "Content-Length":
                lines.append(f"{n}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        return head + self.body if self.body else head

    __bytes__ = to_bytes


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
        c = self._cache.get("uri")
        if c is None:
            c = self._cache["uri"] = Uri.parse(self.uri_text)
        return c  # type: ignore[return-value]

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


# Headers a response copies from its request (RFC 3261 §8.2.6.2)
_COPIED = ("Via", "From", "To", "Call-ID", "CSeq")


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
    hdrs: list[tuple[str, str]] = []
    for n, v in request.headers:
        if n in _COPIED:
            if n == "To" and to_tag is not None and status != 100:
                to = request.to
                if to.tag is None:
                    v = f"{v};tag={to_tag}"
            hdrs.append((n, v))
        elif n == "Record-Route" and 100 < status < 300:
            # RFC 3261 §12.1.1: copied into responses that establish a dialog
            hdrs.append((n, v))
        elif n == "Timestamp" and status == 100:
            hdrs.append((n, v))
    if headers:
        hdrs.extend(headers)
    return Response(status, reason, hdrs, body)
