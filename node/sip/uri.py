"""SIP URIs (RFC 3261 §19.1) and name-addr / addr-spec values (§20.10, §25.1).

Grammar is checked by anchored regular expressions transcribed from the §25.1 ABNF (each
rule is quoted above its pattern). Repetitions are possessive or atomic (Python ≥ 3.11), so
no input can make a pattern backtrack: matching stays linear in the input. A value the strict
fast pattern rejects goes through a slower scanner whose only jobs are to be liberal where
RFC 4475 allows it (spaces inside ``< >``) and to say precisely what is wrong.

Validated prefixes are memoised (see MEMO_SIZE), and whole name-addr values with parameters
(a From/To with its tag comes back in every response and in-dialog request): SIP repeats the
same values message after message, and the patterns are the costly part of parsing them.

Unknown schemes are kept opaque (RFC 4475 §3.3.2 ``unkscm``: a parser must accept them and
leave the 416 to the application).
"""

from __future__ import annotations

import re
from functools import lru_cache
from ipaddress import IPv6Address
from urllib.parse import unquote

from node.sip.errors import RemoteProtocolError

_SIP_SCHEMES = ("sip", "sips")

# --- §25.1 character classes (inside [...]) ----------------------------------------------
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_C = r"A-Za-z0-9\-.!%*_+`'~"
# gen-value = token / host / quoted-string   (host adds ":" "[" "]" for IPv6)
GENVAL_C = TOKEN_C + r":\[\]"
# unreserved = alphanum / mark ; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
_UNRESERVED_C = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
_USER_C = _UNRESERVED_C + r"%&=+$,;?/"
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD_C = _UNRESERVED_C + r"%&=+$,"
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
_PARAM_C = _UNRESERVED_C + r"%\[\]/:&+$"
# hname / hvalue = *( hnv-unreserved / unreserved / escaped )
# hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HNV_C = _UNRESERVED_C + r"%\[\]/?:+$"

# hostname = *( domainlabel "." ) toplabel [ "." ] — relaxed: labels of alphanum and "-",
# starting with alphanum, no empty label (IPv4address matches it too)
HOSTNAME = r"[A-Za-z0-9][A-Za-z0-9\-]*+(?:\.[A-Za-z0-9][A-Za-z0-9\-]*+)*+\.?"
# IPv6reference = "[" IPv6address "]"  (the address itself is checked by ipaddress)
IPV6REF = r"\[[0-9A-Fa-f:.]++\]"
HOST = f"(?:{HOSTNAME}|{IPV6REF})"
# port = 1*DIGIT, 0-65535 checked by the pattern (atomic: nothing outside backtracks into it;
# a few leading zeros at most, so int() never sees a huge digit string)
PORT = r"(?>0{0,5}(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))"

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII ; quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]++|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*+"'

# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
# uri-parameters = *( ";" uri-parameter ) ; other-param = pname [ "=" pvalue ]
# headers = "?" header *( "&" header ) ; header = hname "=" hvalue
_SIP_URI_PARTS = (
    r"((?i:sips?)):"
    rf"(?:([{_USER_C}]++)(?::([{_PASSWORD_C}]*+))?@)?"
    rf"({HOST})(?::({PORT}))?"
    rf"((?:;[{_PARAM_C}]++(?:=[{_PARAM_C}]++)?+)*+)"
    rf"(?:\?([{_HNV_C}]++=[{_HNV_C}]*+(?:&[{_HNV_C}]++=[{_HNV_C}]*+)*+))?"
)
_SIP_URI = re.compile(_SIP_URI_PARTS)
# absoluteURI = scheme ":" ( hier-part / opaque-part )  (RFC 2396 uric characters)
_ABS_URI = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*+):([A-Za-z0-9\-_.!~*'();/?:@&=+$,%\[\]#]++)")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_IPV6REF_RE = re.compile(IPV6REF)

# *( SEMI generic-param ), no whitespace, no quoted values: the common case
_GEN_PARAMS_FAST = re.compile(rf"(?:;[{TOKEN_C}]++(?:=[{GENVAL_C}]++)?+)*+")
_TAG_ONLY = re.compile(rf";tag=([{TOKEN_C}]++)")
# generic-param = token [ EQUAL gen-value ] with LWS around "=" (SEMI/EQUAL = SWS ";"/"=" SWS)
_GEN_PARAM = re.compile(rf"[ \t]*+([{TOKEN_C}]++)[ \t]*+(?:=[ \t]*+([{GENVAL_C}]++|{QUOTED})[ \t]*+)?+")

# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT ; display-name = *(token LWS) / quoted-string
# (the common case: a SIP URI in <>, parameters without LWS; groups 3-9 are the URI's)
_NAME_ADDR_FAST = re.compile(
    rf"(?:({QUOTED})[ \t]*+|([{TOKEN_C}]++(?:[ \t]++[{TOKEN_C}]++)*+)[ \t]*+)?+"
    rf"<{_SIP_URI_PARTS}>((?:;[{TOKEN_C}]++(?:=[{GENVAL_C}]++)?+)*+)"
)
_DISPLAY_TOKENS = re.compile(rf"[{TOKEN_C}]++(?:[ \t]++[{TOKEN_C}]++)*+")
_QUOTED_AT = re.compile(QUOTED)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_QUOTE_NEEDED = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')
_QUOTE_ESCAPE = re.compile(r'(["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f])')
_WS = " \t"


# --- memos of values already validated -----------------------------------------------
# SIP repeats itself: a transaction's responses carry its request's Via, From, To, Call-ID
# and CSeq; a dialog's requests repeat From, To and Call-ID; a phone sends the same Contact
# for months. Remembering the checked, immutable result of a value (never an object a
# caller could change) skips the patterns on a repeat. Bounded: emptied when full.
MEMO_SIZE = 4096
MEMO_KEY_MAX = 256  # longer values are checked every time: a memo must stay small


# "display <uri>" (everything before the header parameters) → (uri match, display): a
# From keeps its prefix from call to call and only the tag changes
_NA_PREFIX: dict[str, tuple] = {}
_NA_WHOLE: dict[str, tuple] = {}  # whole values parsed → (uri match, display, params)
_NA_CHECKED: dict[str, bool] = {}  # whole values already checked (Route, Record-Route)
_CONTACT_CHECKED: dict[str, bool] = {}  # whole Contact values already checked, params included


def _ipv6_ok(ref: str) -> bool:
    """``[IPv6address]`` (an address is at most 45 characters, RFC 4291 §2.2)."""
    return len(ref) <= 47 and _ipv6_address_ok(ref)


@lru_cache(maxsize=1024)
def _ipv6_address_ok(ref: str) -> bool:
    try:
        IPv6Address(ref[1:-1])
    except ValueError:
        return False
    return True


# c-p-q = "q" EQUAL qvalue ; qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
DELTA_LIMIT = 2**32  # delta-seconds are below 2**32 (RFC 3261 §20.19, §20.10 c-p-expires)


def check_contact_params(params: dict[str, str | None]) -> None:
    """``expires`` and ``q`` of a Contact (RFC 3261 §20.10), which a registrar turns into
    numbers: checked when the message is parsed so that never fails later."""
    exp = params.get("expires", "0")
    if exp is None or not (exp.isdigit() and exp.isascii() and len(exp) <= 10 and int(exp) < DELTA_LIMIT):
        raise RemoteProtocolError(f"bad Contact expires parameter {str(exp)[:20]!r} (delta-seconds)")
    q = params.get("q", "1")
    if q is None or _QVALUE.fullmatch(q) is None:
        raise RemoteProtocolError(f"bad Contact q parameter {str(q)[:20]!r} (0 to 1, 3 decimals)")


def _params_fast(text: str) -> dict[str, str | None]:
    """``;a=b;c`` already validated by a pattern: split, lower-case the names, refuse repeats."""
    params: dict[str, str | None] = {}
    it = iter(text.split(";"))
    next(it)
    for part in it:
        name, sep, value = part.partition("=")
        if not name.islower():
            name = name.lower()
        if name in params:
            raise RemoteProtocolError(f"parameter {name!r} appears twice")
        params[name] = value if sep else None
    return params


def parse_generic_params(text: str) -> dict[str, str | None]:
    """``*( SEMI generic-param )`` starting at the first ';' (or empty), LWS allowed.

    Names are lower-cased; values are kept as received (quoted strings keep their quotes),
    so the parameters serialise back unchanged.
    """
    if not text:
        return {}
    if _GEN_PARAMS_FAST.fullmatch(text):
        return _params_fast(text)
    params: dict[str, str | None] = {}
    n = len(text)
    pos = 0
    while True:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos == n:
            return params
        if text[pos] != ";":
            raise RemoteProtocolError(f"expected ';' before {text[pos:pos + 20]!r}")
        m = _GEN_PARAM.match(text, pos + 1)
        if m is None:
            bad = text[pos + 1 : pos + 21].strip(_WS)
            raise RemoteProtocolError("empty parameter" if not bad or bad[0] in ";," else f"malformed parameter {bad!r}")
        name = m.group(1).lower()
        if name in params:
            raise RemoteProtocolError(f"parameter {name!r} appears twice")
        params[name] = m.group(2)
        pos = m.end()
        if pos < n and text[pos] == "=":
            raise RemoteProtocolError(f"empty value for parameter {name!r}")


def format_params(params: dict[str, str | None]) -> str:
    return "".join([f";{k}" if v is None else f";{k}={v}" for k, v in params.items()]) if params else ""


def unquote_string(quoted: str) -> str:
    """The content of a quoted-string (with its quotes), quoted-pairs resolved."""
    inner = quoted[1:-1]
    return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner


def quote_string(text: str) -> str:
    """``text`` as a quoted-string; CR and LF cannot be escaped (§25.1) and become spaces."""
    if _QUOTE_NEEDED.search(text):
        text = text.replace("\r", " ").replace("\n", " ")
        text = _QUOTE_ESCAPE.sub(r"\\\1", text)
    return f'"{text}"'


def _why_bad_sip_uri(text: str) -> str:
    """Human reason for a SIP URI the strict pattern refused (never raises)."""
    if any(c in text for c in " \t\r\n"):
        return "whitespace inside the URI"
    if "<" in text or ">" in text or '"' in text:
        return "'<', '>' or '\"' inside the URI"
    rest = text.partition(":")[2]
    m = _BAD_ESCAPE.search(rest)
    if m:
        return f"bad %-escape {rest[m.start():m.start() + 3]!r}"
    user, at, hostpart = rest.rpartition("@")
    if at and not user:
        return "empty user part"
    hostport = re.split(r"[;?]", hostpart, maxsplit=1)[0]
    if not hostport:
        return "empty host"
    if hostport.startswith("["):
        if "]" not in hostport:
            return f"unterminated IPv6 reference {hostport[:48]!r}"
        ref, _, port = hostport.partition("]")
        if not _IPV6REF_RE.fullmatch(ref + "]") or not _ipv6_ok(ref + "]"):
            return f"bad IPv6 reference {ref + ']'!r}"
        port = port[1:] if port.startswith(":") else port
    else:
        host, _, port = hostport.partition(":")
        if not re.fullmatch(HOSTNAME, host):
            return f"bad host {host!r}"
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        return f"bad port {port[:10]!r}"
    return "invalid character or structure (RFC 3261 §19.1.1)"



def check_uri_match(m: re.Match[str]) -> None:
    """``check_uri_parts`` for a ``_SIP_URI`` match of a whole string."""
    t = m.string
    if "%" in t or "[" in t:
        check_uri_parts(m.groups(), t)
    elif t.count(";") > 1:
        ptext = m.group(6)
        if ptext.count(";") > 1:
            _params_fast(ptext)


def check_uri_parts(parts: tuple, text: str) -> None:
    """What ``_SIP_URI`` cannot say: bad escapes, the IPv6 address, repeated parameters."""
    if "%" in text and _BAD_ESCAPE.search(text):
        raise RemoteProtocolError(f"malformed SIP URI {text!r}: {_why_bad_sip_uri(text)}")
    host, ptext = parts[3], parts[5]
    if host[0] == "[" and not _ipv6_ok(host):
        raise RemoteProtocolError(f"malformed SIP URI {text!r}: bad IPv6 reference {host!r}")
    if ptext and ptext.count(";") > 1:
        _params_fast(ptext)  # raises on a repeated name


class Uri:
    """A SIP/SIPS URI, or any other scheme kept as ``opaque``.

    ``user`` and ``params`` are kept percent-encoded as received so the URI serialises back
    unchanged; ``user_unescaped`` gives the decoded user for lookups (§19.1.4 comparison).
    Parameter names are lower-cased (they compare case-insensitively, §19.1.4).
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
        text = text.strip(_WS)
        m = _SIP_URI.fullmatch(text)
        if m is not None:
            parts = m.groups()
            check_uri_parts(parts, text)
            return cls._from_parts(parts)
        scheme = text.partition(":")[0]
        if scheme.lower() in _SIP_SCHEMES:
            raise RemoteProtocolError(f"malformed SIP URI {text!r}: {_why_bad_sip_uri(text)}")
        a = _ABS_URI.fullmatch(text)
        if a is None:
            raise RemoteProtocolError(f"malformed URI {text!r} (RFC 3261 §25.1 absoluteURI)")
        return cls(scheme=a.group(1).lower(), opaque=a.group(2))

    @classmethod
    def _from_parts(cls, parts: tuple) -> "Uri":
        """From the groups of ``_SIP_URI``, already checked by ``check_uri_parts``."""
        scheme, user, password, host, port, ptext, headers = parts
        return Uri(
            scheme if scheme == "sip" or scheme == "sips" else scheme.lower(), user, host,
            int(port) if port is not None else None,  # range checked by the pattern
            _params_fast(ptext) if ptext else {}, headers or "", password,
        )

    @property
    def is_sip(self) -> bool:
        """True for sip: and sips: (anything else is opaque: 416 territory, RFC 3261 §8.2.2.1)."""
        return self.opaque is None

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


class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Contact, Route, ...).

    ``display`` is the unquoted display name (None when absent); ``params`` are the header
    parameters (``tag``, ``expires``, ``q``...), distinct from the URI's own parameters
    (RFC 4475 §3.3.12/§3.3.13: ``cparam01`` vs ``cparam02``).
    """

    __slots__ = ("display", "_uri", "_uri_parts", "params")

    def __init__(self, uri: Uri | None, display: str | None = None, params: dict[str, str | None] | None = None) -> None:
        # None only from parse(), which sets _uri_parts
        self._uri: Uri | None = uri
        self._uri_parts: re.Match[str] | None = None  # a checked match, until the Uri is built
        self.display = display
        self.params = params if params is not None else {}

    @property
    def uri(self) -> Uri:
        u = self._uri
        if u is None:
            # checked when the header was parsed; built on first use
            u = self._uri = Uri._from_parts(self._uri_parts.groups()[2:9])  # type: ignore[union-attr]
            self._uri_parts = None
        return u

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self._uri_parts = None

    # What a registrar reads of To and Contact, taken from the checked match while the Uri
    # is not built (building it costs more than the reads): same answers as through ``uri``.
    @property
    def uri_host_bare(self) -> str:
        """``self.uri.host_bare``."""
        m = self._uri_parts
        if m is None:
            return self.uri.host_bare
        h = m.group(6)
        return (h[1:-1] if h[0] == "[" else h).lower()

    @property
    def uri_user_unescaped(self) -> str | None:
        """``self.uri.user_unescaped``."""
        m = self._uri_parts
        if m is None:
            return self.uri.user_unescaped
        user = m.group(4)
        return None if user is None else unquote(user)

    @property
    def uri_text(self) -> str:
        """``str(self.uri)``: the URI as received when that is already its serialised form
        (lower-case scheme and parameter names, no leading zero in the port)."""
        m = self._uri_parts
        if m is not None:
            scheme, port, ptext = m.group(3, 7, 8)
            if (
                (scheme == "sip" or scheme == "sips")
                and (port is None or port[0] != "0" or len(port) == 1)
                and (not ptext or ptext == ptext.lower())
            ):
                return m.string[m.start(3) : m.start(10) - 1]
        return str(self.uri)

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        hit = _NA_WHOLE.get(text)
        if hit is not None:
            # the whole value was parsed before (a transaction's responses, a dialog's
            # requests, retransmissions repeat From/To): a fresh object, its own params
            na = NameAddr(None, hit[1], hit[2].copy())
            na._uri_parts = hit[0]
            return na
        gt = text.rfind(">")
        if gt > 0:
            hit = _NA_PREFIX.get(text[: gt + 1])
            if hit is not None:
                # the prefix was checked before: only the parameters are new (see _NA_PREFIX);
                # anything unusual after it takes the full path, for the same answer
                rest = text[gt + 1 :]
                tag = _TAG_ONLY.fullmatch(rest) if rest else None
                if tag is not None or not rest or _GEN_PARAMS_FAST.fullmatch(rest) is not None:
                    if tag is not None:  # the usual From/To parameter, alone
                        params = {"tag": tag.group(1)}
                    else:
                        params = _params_fast(rest) if rest else {}
                    na = NameAddr(None, hit[1], params)
                    na._uri_parts = hit[0]
                    if rest and len(text) <= MEMO_KEY_MAX:  # no parameters: nothing to save
                        if len(_NA_WHOLE) >= MEMO_SIZE:
                            _NA_WHOLE.clear()
                        _NA_WHOLE[text] = (na._uri_parts, na.display, params.copy())
                    return na
        m = _NAME_ADDR_FAST.fullmatch(text)
        if m is None:
            stripped = text.strip(_WS)
            m = _NAME_ADDR_FAST.fullmatch(stripped)
            if m is None:
                return cls._parse_slow(stripped)
        g = m.groups()
        t = m.string
        # what the pattern cannot check (see check_uri_parts): rare, so found by a scan
        if "%" in t or "[" in t:
            check_uri_parts(g[2:9], t[m.start(3) : m.start(10) - 1])
        else:
            uparams = g[7]
            if uparams and uparams.count(";") > 1:
                _params_fast(uparams)
        ptext = g[9]
        params = _params_fast(ptext) if ptext else {}
        quoted = g[0]
        if quoted is None:
            display = g[1]
        else:
            display = (_QUOTED_PAIR.sub(r"\1", quoted[1:-1]) if "\\" in quoted else quoted[1:-1]) or None
        na = NameAddr(None, display, params)
        na._uri_parts = m
        if len(t) <= MEMO_KEY_MAX:
            if len(_NA_PREFIX) >= MEMO_SIZE:
                _NA_PREFIX.clear()
            _NA_PREFIX[t[: m.start(10)]] = (m, na.display)
        return na

    @classmethod
    def check_lazy(cls, text: str) -> "NameAddr | None":
        """Raise as ``parse`` would; None when the value is valid and nothing was built (a
        From/To seen before, or a checked prefix and plain parameters: a parsed message
        builds its From and To when first read, and most responses never read them), else
        the NameAddr the general path built."""
        if text in _NA_WHOLE:
            return None
        gt = text.rfind(">")
        if gt > 0 and text[: gt + 1] in _NA_PREFIX:
            rest = text[gt + 1 :]
            if not rest or _TAG_ONLY.fullmatch(rest) is not None:
                return None
            if _GEN_PARAMS_FAST.fullmatch(rest) is not None:
                _params_fast(rest)  # raises on a repeated name
                return None
        return cls.parse(text)

    @classmethod
    def check(cls, text: str, contact: bool = False) -> None:
        """Raise if ``text`` is not a valid name-addr / addr-spec with parameters; with
        ``contact``, also check the ``expires`` and ``q`` a registrar turns into numbers."""
        memo = _CONTACT_CHECKED if contact else _NA_CHECKED
        if text in memo:
            return
        m = _NAME_ADDR_FAST.fullmatch(text)
        if m is None:
            na = cls._parse_slow(text.strip(_WS))
            if contact:
                check_contact_params(na.params)
            return
        if "%" in text or "[" in text:
            check_uri_parts(m.groups()[2:9], text[m.start(3) : m.start(10) - 1])
        if text.count(";") > 1 or contact:
            uparams, ptext = m.group(8, 10)
            if ptext and (contact or ptext.count(";") > 1):
                params = _params_fast(ptext)
                if contact:
                    check_contact_params(params)
            if uparams and uparams.count(";") > 1:
                _params_fast(uparams)
        if len(text) <= MEMO_KEY_MAX:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[text] = True
            # a checked value is often parsed next (a registrar reads the Contact of every
            # REGISTER): let ``parse`` find its prefix
            quoted = m.group(1)
            if quoted is None:
                display = m.group(2)
            else:
                display = (_QUOTED_PAIR.sub(r"\1", quoted[1:-1]) if "\\" in quoted else quoted[1:-1]) or None
            if len(_NA_PREFIX) >= MEMO_SIZE:
                _NA_PREFIX.clear()
            _NA_PREFIX[text[: m.start(10)]] = (m, display)

    @classmethod
    def _parse_slow(cls, text: str) -> "NameAddr":
        if not text:
            raise RemoteProtocolError("empty name-addr")
        display: str | None = None
        pos = 0
        if text[0] == '"':
            q = _QUOTED_AT.match(text)
            if q is None:
                raise RemoteProtocolError(f"unterminated quoted string in {text!r}")
            display = unquote_string(q.group()) or None
            pos = q.end()
            while pos < len(text) and text[pos] in _WS:
                pos += 1
            if pos == len(text) or text[pos] != "<":
                raise RemoteProtocolError(f"quoted display name not followed by <URI> in {text!r}")
            lt = pos
        else:
            lt = text.find("<")
            if '"' in text[: lt if lt >= 0 else len(text)]:
                raise RemoteProtocolError(f"misplaced '\"' in {text!r}")
            if lt > 0:
                words = text[:lt].strip(_WS)
                if words:
                    if not _DISPLAY_TOKENS.fullmatch(words):
                        # RFC 4475 §3.1.2.15 baddn: non-token display names must be quoted
                        raise RemoteProtocolError(f"display name {words!r} must be a quoted string")
                    display = words
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise RemoteProtocolError(f"unterminated '<' in {text!r}")
            # liberal (RFC 4475 §3.1.2.14 badaspec): spaces just inside the brackets are ignored
            uri_text = text[lt + 1 : gt].strip(_WS)
            if "<" in uri_text:
                raise RemoteProtocolError(f"nested '<' in {text!r}")
            uri = Uri.parse(uri_text)
            rest = text[gt + 1 :]
            if rest.strip(_WS) and rest.lstrip(_WS)[0] != ";":
                raise RemoteProtocolError(f"unexpected {rest.strip(_WS)[:20]!r} after '>' in {text!r}")
            return cls(uri, display, parse_generic_params(rest.strip(_WS)))
        # addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10)
        semi = text.find(";")
        uri_text = (text if semi < 0 else text[:semi]).strip(_WS)
        if ">" in uri_text:
            raise RemoteProtocolError(f"'>' without '<' in {text!r}")
        if "," in uri_text or " " in uri_text or "\t" in uri_text:
            raise RemoteProtocolError(f"more than one value, or whitespace, in {text!r}")
        uri = Uri.parse(uri_text)
        if "?" in uri_text:
            # RFC 3261 §20.10: a URI with headers (or ',' '?' ';') MUST be enclosed in <>
            raise RemoteProtocolError(f"URI with '?' must be enclosed in <> (RFC 3261 §20.10) in {text!r}")
        return cls(uri, None, parse_generic_params(text[semi:]) if semi >= 0 else {})

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        head = f"{quote_string(self.display)} <{self.uri}>" if self.display else f"<{self.uri}>"
        return head + format_params(self.params) if self.params else head

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside quotes or <>; empty
    elements are dropped (see ``split_list_strict`` for the validating form)."""
    if "," not in value:
        return [value.strip()]
    return [v for v in _split(value) if v]


def split_list_strict(value: str, what: str) -> list[str]:
    """Like ``split_header_list`` but an empty element (``a,,b``, a trailing comma) is an
    error: the §25.1 lists of Via, Contact, Route... have none (RFC 4475 §3.1.2.1)."""
    if "," not in value:
        v = value.strip(_WS)
        if not v:
            raise RemoteProtocolError(f"empty {what} value")
        return [v]
    out = _split(value)
    if not all(out):
        raise RemoteProtocolError(f"empty element in the {what} list {value[:80]!r}")
    return out


def _split(value: str) -> list[str]:
    out: list[str] = []
    in_angle = False
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
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            out.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    out.append(value[start:].strip(_WS))
    return out
