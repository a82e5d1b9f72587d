"""SIP digest authentication (RFC 3261 §22, RFC 7616 as profiled for SIP by RFC 8760), sans-I/O.

* Header values are parsed into ``Challenge`` / ``Credentials`` and formatted back; a bad
  value raises ``AuthHeaderError`` (status hint 400).
* ``DigestServer`` challenges and verifies. Nonces are stateless:
  ``base64url(timestamp ‖ HMAC-SHA256(secret, timestamp ‖ realm)[:16])``, so any node holding
  the same secret verifies any other node's nonce, a nonce is bound to the realm (one tenant's
  nonce is worthless in another tenant), and nothing is stored per challenge.
* Replay: within a nonce's lifetime the same credentials verify again, as in every stateless
  digest server; the registrar's Call-ID/CSeq ordering (RFC 3261 §10.3 step 7) limits what a
  replayed REGISTER can do. ``NonceCounts`` optionally tracks nonce-counts (RFC 7616 §3.4)
  per process; it is off by default (as in Kamailio and Asterisk) because phones that reuse a
  (cnonce, nc) pair would then be refused, and it cannot see requests served by another node.
  RFC 2069-style credentials (no qop) carry no counter and are never tracked.
* ``answer_challenge`` is the client side, for carriers that challenge us.

Time is always the caller's ``now`` (unix seconds); nothing here reads a clock or draws
random numbers (the caller supplies the cnonce).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from node.sip.errors import LocalProtocolError, RemoteProtocolError, SipError

__all__ = [
    "AuthHeaderError", "UnsupportedChallenge", "Challenge", "Credentials", "HA1", "Verdict",
    "NonceCounts", "DigestServer", "parse_challenge", "parse_credentials", "format_challenge",
    "format_credentials", "credential_fields", "CredentialFields", "ha1", "compute_response",
    "answer_challenge", "choose_challenge", "ALGORITHMS",
]


class AuthHeaderError(RemoteProtocolError):
    """A WWW-/Proxy-Authenticate or (Proxy-)Authorization value that cannot be parsed."""

    status_hint = 400


class UnsupportedChallenge(SipError):
    """A well-formed challenge we cannot answer (unknown algorithm, qop or userhash).

    502: the upstream (a carrier trunk) asked for something this node cannot give.
    """

    status_hint = 502


# --------------------------------------------------------------------------- algorithms
def _sha512_256(data: bytes):
    return hashlib.new("sha512_256", data)


_HashFn = Callable[[bytes], Any]

# CPython's own MD5 and SHA-256 cost half (a third less) of OpenSSL's for the few dozen
# bytes a digest hashes: no EVP context per call. Same digests; OpenSSL's when absent.
try:
    from _md5 import md5 as _md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a build without the builtin hashes
    _md5 = hashlib.md5
try:
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _sha256 = hashlib.sha256

#: canonical name → (hash constructor, is a -sess variant); RFC 7616 §3.2, RFC 8760 §2.2
_ALGS: dict[str, tuple[_HashFn, bool]] = {
    "MD5": (_md5, False),
    "MD5-sess": (_md5, True),
    "SHA-256": (_sha256, False),
    "SHA-256-sess": (_sha256, True),
}
if "sha512_256" in hashlib.algorithms_available:  # depends on the OpenSSL build
    _ALGS["SHA-512-256"] = (_sha512_256, False)
    _ALGS["SHA-512-256-sess"] = (_sha512_256, True)
_CANON_ALG = {name.upper(): name for name in _ALGS}

#: algorithms this module can compute, strongest first (RFC 8760 §2.4 order of preference)
ALGORITHMS: tuple[str, ...] = tuple(
    a for a in ("SHA-512-256", "SHA-256", "MD5", "SHA-512-256-sess", "SHA-256-sess", "MD5-sess") if a in _ALGS
)


def _canon_alg(name: str) -> str:
    return _CANON_ALG.get(name.upper(), name)


def _hex(fn: _HashFn, text: str) -> str:
    return fn(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- header values
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"({_TOKEN})(?:[ \t\r\n]+|\Z)")
# one auth-param, with any empty list elements before it (RFC 7230 §7 "#rule");
# token values are read leniently (anything but quote, comma, space) because old phones send
# e.g. an unquoted uri; the possessive quantifiers keep a hostile value linear
_PARAM_RE = re.compile(
    rf'(?:[ \t\r\n,]*+)({_TOKEN})[ \t\r\n]*=[ \t\r\n]*'
    r'(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([^",\s]++))[ \t\r\n]*(?:,|\Z)',
    re.S,
)
_UNESCAPE_RE = re.compile(r"\\(.)", re.S)
_TOKEN_RE = re.compile(_TOKEN)
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")
#: a digest header is a few hundred bytes; anything this large is an attack or a bug
MAX_HEADER_LENGTH = 8192
#: auth-param names already found to be tokens → lower-cased (a handful in practice; bounded)
_NAMES: dict[str, str] = {}


def _split(value: str) -> tuple[str, dict[str, str]]:
    """Scheme and auth-params (names lower-cased, quoted values unescaped) of one header value."""
    if len(value) > MAX_HEADER_LENGTH:
        raise AuthHeaderError("authentication header too long")
    text = value.strip(" \t\r\n")
    if text[:7] == "Digest ":
        scheme, pos = "Digest", 7
    else:
        m = _SCHEME_RE.match(text)
        if m is None:
            raise AuthHeaderError("authentication header has no scheme")
        scheme, pos = m.group(1), m.end()
    params = _params_plain(text, pos) if "\\" not in text else None
    return scheme, params if params is not None else _params_one_by_one(scheme, text, pos)


def _params_plain(text: str, pos: int) -> dict[str, str] | None:
    """The auth-params of the usual shape, ``name=token`` or ``name="text"`` joined by ", ",
    read with string methods alone (a regex pass costs several times more); None for
    anything else, which the loop then reads or refuses. Linear whatever the input.

    Only what the loop accepts gets through: the names are tokens, a token value holds no
    white space, comma or quote, and the quotes counted in the whole value are exactly the
    two around each quoted value, so no quoted value was cut at a ", " inside it and none
    holds a quote.
    """
    rest = text[pos:]
    pieces = rest.split(", ")
    params: dict[str, str] = {}
    quoted = 0
    names = _NAMES
    for piece in pieces:
        name, _, v = piece.partition("=")
        low = names.get(name)
        if low is None:
            if _TOKEN_RE.fullmatch(name) is None:
                return None
            if len(names) >= 64:
                names.clear()
            low = names[name] = name.lower()
        if not v:
            return None
        if v[0] == '"':
            if v[-1] != '"' or len(v) == 1:
                return None
            v = v[1:-1]
            quoted += 1
        elif " " in v or "," in v or not v.isprintable():
            return None  # isprintable: no other white space (``\s``) either
        params[low] = v
    if len(params) != len(pieces) or rest.count('"') != 2 * quoted:
        return None  # a repeated name, or a quote out of place
    return params


def _params_one_by_one(scheme: str, text: str, pos: int) -> dict[str, str]:
    """The auth-params of ``text`` from ``pos`` on, one match at a time: escapes, and an
    error that says where a malformed list goes wrong."""
    params: dict[str, str] = {}
    end = len(text)
    while pos < end:
        p = _PARAM_RE.match(text, pos)
        if p is None:
            if not text[pos:].strip(", \t\r\n"):
                break  # trailing empty list elements
            raise AuthHeaderError(f"malformed auth-param at offset {pos}: {text[pos:pos + 24]!r}")
        name = p.group(1).lower()
        if name in params:
            raise AuthHeaderError(f"duplicate auth-param {name!r}")
        quoted = p.group(2)
        if quoted is None:
            params[name] = p.group(3)
        else:
            params[name] = _UNESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        pos = p.end()
    if not params:
        raise AuthHeaderError(f"{scheme} header without parameters")
    return params


def _digest_params(value: str) -> dict[str, str]:
    scheme, params = _split(value)
    if scheme.lower() != "digest":
        raise AuthHeaderError(f"unsupported authentication scheme {scheme!r}")
    return params


def _require(params: dict[str, str], name: str) -> str:
    v = params.get(name)
    if v is None:
        raise AuthHeaderError(f"digest parameter {name!r} missing")
    return v


def _quote(text: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise LocalProtocolError("CR, LF or NUL in a digest parameter")
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@dataclass(frozen=True, slots=True)
class Challenge:
    """One WWW-Authenticate / Proxy-Authenticate value (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    #: qop options offered; empty = RFC 2069 style (no qop, no cnonce/nc)
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False


@dataclass(frozen=True, slots=True)
class Credentials:
    """One Authorization / Proxy-Authorization value (RFC 7616 §3.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    #: None = RFC 2069 style
    qop: str | None = None
    #: 8 hex digits, as sent
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value; raises ``AuthHeaderError``."""
    p = _digest_params(value)
    qop = p.get("qop")
    return Challenge(
        realm=_require(p, "realm"),
        nonce=_require(p, "nonce"),
        algorithm=_canon_alg(p.get("algorithm", "MD5")),
        qop=tuple(q for q in (t.strip().lower() for t in qop.split(",")) if q) if qop else (),
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
        userhash=p.get("userhash", "").lower() == "true",
    )


#: the fields of ``Credentials``, in order, as ``credential_fields`` returns them
CredentialFields = tuple[str, str, str, str, str, str, "str | None", "str | None", "str | None", "str | None", bool]


def credential_fields(value: str) -> CredentialFields:
    """``parse_credentials`` without building the object: its fields, in order. The frozen
    dataclass costs as much to build as the value costs to check, and a registrar only reads
    the realm and the username before ``DigestServer.verify_fields``."""
    p = _digest_params(value)
    get = p.get
    qop = get("qop")
    nc = get("nc")
    cnonce = get("cnonce")
    if qop is not None:
        qop = qop.lower()
        # RFC 7616 §3.4: with a qop, cnonce and nc are mandatory and nc is 8LHEX
        if cnonce is None or nc is None:
            raise AuthHeaderError("digest qop without cnonce or nc")
        if _NC_RE.fullmatch(nc) is None:
            raise AuthHeaderError(f"digest nc {nc!r} is not 8 hex digits")
    username, realm, nonce, uri, response = get("username"), get("realm"), get("nonce"), get("uri"), get("response")
    if username is None or realm is None or nonce is None or uri is None or response is None:
        for name in ("username", "realm", "nonce", "uri", "response"):
            _require(p, name)  # raises for the first one missing
        raise AssertionError("unreachable")  # tells the type checker (and mypyc) the five are str
    alg = get("algorithm")
    userhash = get("userhash")
    return (  # type: ignore[return-value]  # the five required ones are not None (checked above)
        username, realm, nonce, uri, response, "MD5" if alg is None or alg == "MD5" else _canon_alg(alg),
        qop, nc, cnonce, get("opaque"), userhash is not None and userhash.lower() == "true",
    )


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization / Proxy-Authorization value; raises ``AuthHeaderError``."""
    return Credentials(*credential_fields(value))


def format_challenge(ch: Challenge) -> str:
    parts = [f"Digest realm={_quote(ch.realm)}", f"nonce={_quote(ch.nonce)}", f"algorithm={ch.algorithm}"]
    if ch.qop:
        parts.append(f'qop="{",".join(ch.qop)}"')
    if ch.opaque is not None:
        parts.append(f"opaque={_quote(ch.opaque)}")
    if ch.stale:
        parts.append("stale=true")
    if ch.userhash:
        parts.append("userhash=true")
    return ", ".join(parts)


def format_credentials(cr: Credentials) -> str:
    parts = [
        f"Digest username={_quote(cr.username)}", f"realm={_quote(cr.realm)}", f"nonce={_quote(cr.nonce)}",
        f"uri={_quote(cr.uri)}", f"response={_quote(cr.response)}", f"algorithm={cr.algorithm}",
    ]
    if cr.qop is not None:
        # RFC 7616 §3.4: qop and nc are tokens, never quoted (some servers insist)
        parts.append(f"qop={cr.qop}")
        parts.append(f"nc={cr.nc}")
        parts.append(f"cnonce={_quote(cr.cnonce or '')}")
    if cr.opaque is not None:
        parts.append(f"opaque={_quote(cr.opaque)}")
    if cr.userhash:
        parts.append("userhash=true")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the digest math
def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what a store may keep instead of the password (RFC 7616 §3.4.2).

    For the -sess algorithms this is the base value; the per-nonce step is in ``compute_response``.
    """
    fn, _ = _ALGS[_canon_alg(algorithm)]
    return _hex(fn, f"{username}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1_value: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2069 §2.1.2 when ``qop`` is None)."""
    fn, sess = _ALGS[_canon_alg(algorithm)]
    if sess:
        ha1_value = _hex(fn, f"{ha1_value}:{nonce}:{cnonce}")  # RFC 7616 §3.4.2
    if qop == "auth-int":
        ha2 = _hex(fn, f"{method}:{uri}:{fn(body).hexdigest()}")  # RFC 7616 §3.4.3
    else:
        ha2 = _hex(fn, f"{method}:{uri}")
    if qop is None:
        return _hex(fn, f"{ha1_value}:{nonce}:{ha2}")
    return _hex(fn, f"{ha1_value}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --------------------------------------------------------------------------- client side
def choose_challenge(values: Iterable[str]) -> Challenge | None:
    """The first challenge we can answer, in the order received (RFC 8760 §2.4: the server
    lists its preferred algorithm first). Unparseable and non-Digest values are skipped."""
    for value in values:
        try:
            ch = parse_challenge(value)
        except AuthHeaderError:
            continue
        if ch.algorithm in _ALGS and not ch.userhash and (not ch.qop or "auth" in ch.qop or "auth-int" in ch.qop):
            return ch
    return None


def answer_challenge(
    challenge: str | Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge``.

    ``uri`` is the Request-URI of the request being sent (RFC 3261 §22.4); ``cnonce`` must be
    fresh random text from the caller; ``nc`` counts requests made with this nonce.
    qop=auth is preferred; auth-int (over ``body``) only if it is all that is offered.
    Raises ``AuthHeaderError`` (malformed) or ``UnsupportedChallenge``.
    """
    ch = parse_challenge(challenge) if isinstance(challenge, str) else challenge
    if ch.algorithm not in _ALGS:
        raise UnsupportedChallenge(f"digest algorithm {ch.algorithm!r} not supported")
    if ch.userhash:
        raise UnsupportedChallenge("digest userhash not supported")
    if not ch.qop:
        qop = None
    elif "auth" in ch.qop:
        qop = "auth"
    elif "auth-int" in ch.qop:
        qop = "auth-int"
    else:
        raise UnsupportedChallenge(f"digest qop {','.join(ch.qop)!r} not supported")
    if qop is None:
        nc_text = cnonce_value = None
    else:
        if not 0 < nc <= 0xFFFFFFFF:
            raise LocalProtocolError(f"nonce count {nc} out of range")
        nc_text, cnonce_value = f"{nc:08x}", cnonce
    base = ha1(ch.algorithm, username, ch.realm, password)
    response = compute_response(ch.algorithm, base, ch.nonce, method, uri, qop, nc_text, cnonce_value, body)
    return format_credentials(Credentials(
        username=username, realm=ch.realm, nonce=ch.nonce, uri=uri, response=response,
        algorithm=ch.algorithm, qop=qop, nc=nc_text, cnonce=cnonce_value, opaque=ch.opaque,
    ))


# --------------------------------------------------------------------------- server side
class Verdict(enum.Enum):
    """Outcome of ``DigestServer.verify``; the value is a metrics-friendly label."""

    OK = "ok"
    #: authentic credentials on an expired nonce: re-challenge with stale=true (RFC 7616 §3.3)
    STALE = "stale"
    MALFORMED = "malformed"
    #: algorithm, qop or userhash we did not offer, or no stored HA1 for that algorithm
    UNSUPPORTED = "unsupported"
    REALM_MISMATCH = "realm_mismatch"
    USERNAME_MISMATCH = "username_mismatch"
    URI_MISMATCH = "uri_mismatch"
    #: not a nonce we issued (forged, truncated, other realm, other secret)
    BAD_NONCE = "bad_nonce"
    #: wrong password, or unknown user
    BAD_RESPONSE = "bad_response"
    #: nonce-count seen before (only with ``NonceCounts``)
    REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class HA1:
    """Precomputed ``ha1()`` values for stores that keep no plaintext password.

    HA1 depends on the realm, so it must be computed with the realm ``verify`` is given.
    """

    md5: str = ""
    sha256: str = ""
    sha512_256: str = ""

    def for_algorithm(self, algorithm: str) -> str:
        """The stored value for ``algorithm`` (its -sess variant shares it), "" if none."""
        if algorithm.startswith("MD5"):
            return self.md5
        if algorithm.startswith("SHA-256"):
            return self.sha256
        if algorithm.startswith("SHA-512-256"):
            return self.sha512_256
        return ""


class NonceCounts:
    """Nonce-counts seen per (nonce, cnonce), for replay detection (RFC 7616 §3.4, §5.5).

    A sliding 64-count window per pair, as IPsec's anti-replay window: requests sent with
    consecutive counts may arrive out of order (UDP, parallel transactions) and still pass,
    but a count is accepted once. At most ``capacity`` pairs are kept, oldest dropped first;
    a dropped pair could be replayed until its nonce expires, so size it above the number of
    distinct (nonce, cnonce) pairs seen in one nonce lifetime.
    """

    __slots__ = ("capacity", "_seen")
    WINDOW: ClassVar[int] = 64  # ClassVar: a class attribute also when compiled (mypyc)

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def accept(self, nonce: str, cnonce: str, nc: int) -> bool:
        """Record ``nc``; False if it was seen before or is older than the window."""
        key = (nonce, cnonce)
        state = self._seen.pop(key, None)
        if state is None:
            top, bits = nc, 1
        else:
            top, bits = state
            if nc > top:
                shift = nc - top
                bits = ((bits << shift) | 1) & ((1 << self.WINDOW) - 1) if shift < self.WINDOW else 1
                top = nc
            else:
                age = top - nc
                if age >= self.WINDOW or bits >> age & 1:
                    self._seen[key] = state
                    return False
                bits |= 1 << age
        self._seen[key] = (top, bits)
        if len(self._seen) > self.capacity:
            del self._seen[next(iter(self._seen))]
        return True


_ISSUED_MEMO = 4096
#: H(A1) per (algorithm, user, realm, password) and H(A2) per (algorithm, method, uri); emptied when full
_DIGEST_MEMO = 4096
_HA1_MEMO: dict[tuple[str, str, str, str], str] = {}
_HA2_MEMO: dict[tuple[str, str, str], str] = {}


class DigestServer:
    """Issues and checks digest challenges for any number of realms (one per tenant domain).

    ``secret`` is shared by every node that must accept each other's nonces; ``ttl`` is the
    nonce lifetime in seconds; ``max_skew`` tolerates nodes whose clocks run ahead.
    """

    __slots__ = ("_secret", "ttl", "algorithms", "allow_no_qop", "nonce_counts", "max_skew", "_issued")

    def __init__(
        self,
        secret: bytes,
        ttl: float = 300.0,
        *,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        allow_no_qop: bool = True,
        nonce_counts: NonceCounts | None = None,
        max_skew: float = 30.0,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("digest nonce secret must be at least 16 bytes")
        algs = tuple(_canon_alg(a) for a in algorithms)
        unknown = [a for a in algs if a not in _ALGS]
        if unknown or not algs:
            raise ValueError(f"unsupported digest algorithms: {unknown or 'none given'}")
        self._secret = bytes(secret)
        self.ttl = ttl
        self.algorithms = algs
        #: accept RFC 2069 credentials (no qop) from old phones
        self.allow_no_qop = allow_no_qop
        self.nonce_counts = nonce_counts
        self.max_skew = max_skew
        #: (nonce, realm) -> issue time of nonces that verified: one nonce per realm and
        #: second is handed to every phone challenged in that second (see Authenticator),
        #: so a registration storm checks each nonce's HMAC once. Emptied when full.
        self._issued: dict[tuple[str, str], int] = {}

    # -- nonces
    def _mac(self, stamp: bytes, realm: str) -> bytes:
        return hmac.digest(self._secret, stamp + realm.encode("utf-8"), "sha256")[:16]

    def nonce(self, realm: str, now: float) -> str:
        stamp = max(0, int(now)).to_bytes(8, "big")
        return base64.urlsafe_b64encode(stamp + self._mac(stamp, realm)).decode("ascii")

    def nonce_issued_at(self, nonce: str, realm: str) -> int | None:
        """When we issued ``nonce`` for ``realm``; None if we did not."""
        issued = self._issued.get((nonce, realm))
        if issued is not None:
            return issued
        if len(nonce) != 32:
            return None
        try:
            raw = base64.b64decode(nonce, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        stamp = raw[:8]
        if not hmac.compare_digest(raw[8:], self._mac(stamp, realm)):
            return None
        issued = int.from_bytes(stamp, "big")
        if len(self._issued) >= _ISSUED_MEMO:
            self._issued.clear()
        self._issued[(nonce, realm)] = issued
        return issued

    # -- challenge
    def challenge(self, realm: str, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, preferred first
        (RFC 8760 §2.4); all share one nonce."""
        nonce = self.nonce(realm, now)
        return [
            format_challenge(Challenge(realm=realm, nonce=nonce, algorithm=alg, qop=("auth",), stale=stale))
            for alg in self.algorithms
        ]

    # -- verify
    def verify(
        self,
        authorization: str | Credentials,
        method: str,
        realm: str,
        password: str | HA1 | None,
        now: float,
        *,
        uri: str | None = None,
        username: str | None = None,
    ) -> Verdict:
        """Check one Authorization / Proxy-Authorization value against ``realm``.

        ``password`` is the user's plaintext password or stored ``HA1``; None for an unknown
        user, which fails exactly like a wrong password (same checks, same hashing) so the
        answer does not reveal which users exist. ``uri`` is the Request-URI, compared with
        the digest uri (RFC 3261 §22.4 / RFC 7616 §3.4.6) when given; ``username``, when
        given, must equal the digest username.
        """
        if isinstance(authorization, Credentials):
            cr = authorization
            fields: CredentialFields = (
                cr.username, cr.realm, cr.nonce, cr.uri, cr.response, cr.algorithm, cr.qop, cr.nc,
                cr.cnonce, cr.opaque, cr.userhash,
            )
        else:
            try:
                fields = credential_fields(authorization)
            except AuthHeaderError:
                return Verdict.MALFORMED
        return self.verify_fields(fields, method, realm, password, now, uri=uri, username=username)

    def verify_fields(
        self,
        fields: CredentialFields,
        method: str,
        realm: str,
        password: str | HA1 | None,
        now: float,
        *,
        uri: str | None = None,
        username: str | None = None,
    ) -> Verdict:
        """``verify`` of what ``credential_fields`` returned."""
        cr_username, cr_realm, nonce, cr_uri, response, alg, qop, nc, cnonce, _, userhash = fields
        if cr_realm != realm:
            return Verdict.REALM_MISMATCH
        if username is not None and cr_username != username:
            return Verdict.USERNAME_MISMATCH
        if uri is not None and cr_uri != uri and cr_uri.lower() != uri.lower():
            return Verdict.URI_MISMATCH
        if alg not in self.algorithms or userhash:
            return Verdict.UNSUPPORTED
        if qop is None:
            if not self.allow_no_qop:
                return Verdict.UNSUPPORTED
        elif qop != "auth":
            return Verdict.UNSUPPORTED
        issued = self.nonce_issued_at(nonce, realm)
        if issued is None or issued > now + self.max_skew:
            return Verdict.BAD_NONCE
        fn, sess = _ALGS[alg]
        if password is None:
            base, known = "0" * 64, False  # unknown user: same work, certain failure
        elif isinstance(password, HA1):
            base, known = password.for_algorithm(alg), True
            if not base:
                return Verdict.UNSUPPORTED
        else:
            # a phone re-registers with the same password for months: H(A1) once per
            # (user, realm, password), like a store that keeps HA1 (RFC 7616 §3.4.2)
            key = (alg, cr_username, realm, password)
            memo = _HA1_MEMO.get(key)  # str | None: compiled (mypyc) code checks the type
            if memo is None:
                if len(_HA1_MEMO) >= _DIGEST_MEMO:
                    _HA1_MEMO.clear()
                memo = _HA1_MEMO[key] = fn(f"{cr_username}:{realm}:{password}".encode()).hexdigest()
            base, known = memo, True
        if sess:
            base = _hex(fn, f"{base}:{nonce}:{cnonce}")  # RFC 7616 §3.4.2
        # H(A2) = H(method:uri) (qop auth or none): the same for every REGISTER to a domain
        key2 = (alg, method, cr_uri)
        ha2 = _HA2_MEMO.get(key2)
        if ha2 is None:
            if len(_HA2_MEMO) >= _DIGEST_MEMO:
                _HA2_MEMO.clear()
            ha2 = _HA2_MEMO[key2] = _hex(fn, f"{method}:{cr_uri}")
        if qop is None:
            expected = _hex(fn, f"{base}:{nonce}:{ha2}")
        else:
            expected = _hex(fn, f"{base}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        # compare bytes: compare_digest rejects non-ASCII str, which a peer could send
        if not hmac.compare_digest(expected.encode(), response.lower().encode("utf-8", "replace")) or not known:
            return Verdict.BAD_RESPONSE
        # RFC 7616 §3.3: stale only once the client has shown it knows the password
        if now - issued > self.ttl:
            return Verdict.STALE
        if self.nonce_counts is not None and qop is not None:
            if not self.nonce_counts.accept(nonce, cnonce or "", int(nc or "0", 16)):
                return Verdict.REPLAYED
        return Verdict.OK
