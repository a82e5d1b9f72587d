"""SIP URIs (RFC 3261 §19.1) and name-addr / addr-spec values (§20.10, §25.1).

Parsed once, on demand, from header text. Unknown schemes are kept opaque (RFC 4475
§3.1.1.13 ``unkscm``: a proxy must carry them, not reject them).
"""

from __future__ import annotations

from urllib.parse import unquote

from node.sip.errors import RemoteProtocolError

_SIP_SCHEMES = ("sip", "sips")


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    # host = hostname / IPv4address / IPv6reference ; IPv6reference = "[" IPv6address "]"
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise RemoteProtocolError(f"unterminated IPv6 reference in {hostport!r}")
        host = hostport[: end + 1]
        rest = hostport[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise RemoteProtocolError(f"bad host:port {hostport!r}")
        port_s = rest[1:]
    else:
        host, sep, port_s = hostport.partition(":")
        if not sep:
            if not host:
                raise RemoteProtocolError("empty host")
            return host, None
    if not port_s.isdigit() or len(port_s) > 5 or int(port_s) > 65535:
        raise RemoteProtocolError(f"bad port in {hostport!r}")
    if not host:
        raise RemoteProtocolError("empty host")
    return host, int(port_s)


def _parse_params(text: str) -> dict[str, str | None]:
    """``;a=b;c`` (leading ';' already stripped) → ordered dict, names lower-cased."""
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class Uri:
    """A SIP/SIPS URI, or any other scheme kept as ``opaque``.

    ``user`` is kept percent-encoded as received so the URI serialises back byte-exact;
    ``user_unescaped`` gives the decoded form for lookups (RFC 3261 §19.1.4 comparison).
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "opaque")

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        host: str = "",
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: str = "",
        password: str | None = None,
        opaque: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers
        self.opaque = opaque

    @classmethod
    def parse(cls, text: str) -> "Uri":
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or not scheme or not scheme[0].isalpha():
            raise RemoteProtocolError(f"bad URI {text!r}")
        scheme_l = scheme.lower()
        if scheme_l not in _SIP_SCHEMES:
            # absoluteURI of another scheme (tel:, http:, ...): keep as is
            if any(c in rest for c in " \t<>\""):
                raise RemoteProtocolError(f"bad URI {text!r}")
            return cls(scheme=scheme_l, opaque=rest)
        if any(c in rest for c in " \t\r\n<>\""):
            raise RemoteProtocolError(f"whitespace or delimiter inside URI {text!r}")
        headers = ""
        qpos = rest.find("?")
        if qpos >= 0:
            rest, headers = rest[:qpos], rest[qpos + 1 :]
        user = password = None
        at = rest.rfind("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, psep, pw = userinfo.partition(":")
            if psep:
                password = pw
        hostport, _, ptext = rest.partition(";")
        host, port = _split_hostport(hostport)
        params = _parse_params(ptext) if ptext else {}
        return cls(scheme_l, user, host, port, params, headers, password)

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    @property
    def host_bare(self) -> str:
        """Host without IPv6 brackets, lower-cased (for sockets and lookups)."""
        h = self.host
        if h.startswith("["):
            h = h[1:-1]
        return h.lower()

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += [":", self.password]
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts += [":", str(self.port)]
        if self.params:
            parts.append(format_params(self.params))
        if self.headers:
            parts += ["?", self.headers]
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Uri({str(self)!r})"

    def copy(self) -> "Uri":
        return Uri(self.scheme, self.user, self.host, self.port, dict(self.params), self.headers, self.password, self.opaque)


def _find_unquoted(text: str, char: str, start: int = 0) -> int:
    """Index of ``char`` outside double quotes, honouring backslash escapes; -1 if none."""
    in_quote = False
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == char:
            return i
        i += 1
    return -1


class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Contact, Route, ...)."""

    __slots__ = ("display", "uri", "params")

    def __init__(self, uri: Uri, display: str | None = None, params: dict[str, str | None] | None = None) -> None:
        self.uri = uri
        self.display = display
        self.params = params if params is not None else {}

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        text = text.strip()
        lt = _find_unquoted(text, "<")
        if lt >= 0:
            display = text[:lt].strip()
            gt = text.find(">", lt)
            if gt < 0:
                raise RemoteProtocolError(f"unterminated '<' in {text!r}")
            uri = Uri.parse(text[lt + 1 : gt])
            rest = text[gt + 1 :].strip()
            if rest and not rest.startswith(";"):
                raise RemoteProtocolError(f"junk after '>' in {text!r}")
            if display.startswith('"'):
                if len(display) < 2 or not display.endswith('"'):
                    raise RemoteProtocolError(f"unbalanced quotes in {text!r}")
                display = display[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            return cls(uri, display or None, _parse_params(rest[1:]) if rest else {})
        if '"' in text:
            raise RemoteProtocolError(f"display name without <uri> in {text!r}")
        # addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10)
        uri_text, _, ptext = text.partition(";")
        uri = Uri.parse(uri_text)
        return cls(uri, None, _parse_params(ptext) if ptext else {})

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.display:
            d = self.display.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{d}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + format_params(self.params) if self.params else head

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside quotes or <>."""
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    depth = 0
    in_quote = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]
