"""Bytes → Request/Response (RFC 3261 §7, §25), for datagrams and for TCP streams (§18.3).

What a parsed message guarantees: its start line and every header line are well formed
(token names, line folds joined, no CR/LF inside a line and no other control character
except right after a backslash, as in a quoted-pair); the headers
the core routes on — Via, From, To, Call-ID, CSeq, Contact, Route, Record-Route,
Max-Forwards, Content-Type, Content-Length and the Request-URI — are syntactically valid
and the single-valued ones appear once. Their typed views never raise afterwards: most are
cached as the parser checks them, Contact/Route/Record-Route and the Request-URI objects
are built on first use from values already checked. Other headers stay raw text.

Failures raise ``RemoteProtocolError`` whose ``status_hint`` is the response to send and
whose ``message`` is the message as far as it parsed (None when the bytes are not SIP:
drop them). Where RFC 4475 lets the receiver choose:

* tolerated (liberal, nothing ambiguous, and our serialisation never repeats the fault):
  extra SP in the request line (§3.1.2.9 lwsstart), trailing SP (§3.1.2.10 trws), spaces
  inside ``< >`` (§3.1.2.14 badaspec), a non-GMT Date (§3.1.2.12 baddate: never read),
  bare-LF line ends;
* refused with 400: LWS inside the Request-URI (§3.1.2.8), a Request-URI in ``< >``
  (§3.1.2.7), headers in a Request-URI (§3.1.2.11 escruri), an unbracketed URI with
  headers (§3.1.2.13 regbadct), unquoted non-token display names (§3.1.2.15 baddn);
* a CSeq method that differs from an unknown request method gets 501 (§3.1.2.18 prefers it).

Sizes: a message longer than ``max_size`` is refused with 513 Message Too Large (RFC 3261
§21.5.14: the limit is on the whole message, so 513 rather than 413, which is about a body
the server will not process); the error still carries the head when it parsed.

Speed: this runs on every message, so the common shapes take inline fast paths and the
checked prefixes of From/To/Contact/Via values are memoised (see ``node.sip.uri``); any
unusual input falls back to the general parsers, which give the precise error.
"""

from __future__ import annotations

import re

from node.sip.errors import RemoteProtocolError
from node.sip.headers import METHODS, NAMES, SINGLE_HEADERS, CSeq, Via, canonical_name, is_token
from node.sip.message import (
    _CALL_ID,
    Message,
    Request,
    Response,
    check_name_addrs,
    parse_call_id,
    parse_content_type,
    parse_max_forwards,
    parse_vias,
)
from node.sip.uri import (
    _CONTACT_CHECKED,
    _SIP_URI,
    MEMO_KEY_MAX,
    MEMO_SIZE,
    NameAddr,
    Uri,
    check_uri_match,
)

DEFAULT_MAX_SIZE = 65535

_E = RemoteProtocolError
_CRLF2 = b"\r\n\r\n"
_MANDATORY = ("To", "From", "CSeq", "Call-ID", "Via")  # RFC 3261 §8.1.1
# headers the parser validates and caches (the rest stay raw)
_EAGER = frozenset(
    ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length",
     "Content-Type", "Route", "Record-Route"]
)
# control characters, CR and LF (HTAB excluded): counting them finds stray ones in one pass
_CTL_CRLF = bytes(c for c in range(0x20) if c != 0x09) + b"\x7f"
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FOLD = re.compile(r"\n[ \t]++")  # LWS: a line fold is one SP (RFC 3261 §7.3.1)
_VERSION = re.compile(r"(?i:SIP)/[0-9]++\.[0-9]++")
_VERSION_B = re.compile(rb"(?i:SIP)/[0-9]++\.[0-9]++")


# "Name: value" lines seen → their (immutable) header pair: Max-Forwards, Expires,
# Content-Length, User-Agent, CSeq, a phone's To and Contact come back line for line, and a
# dict hit costs a third of splitting, looking up and stripping the line again. Short lines
# only (a long one costs more to hash than it saves); bounded like the memos of node.sip.uri.
_LINES: dict[str, tuple[str, str]] = {}
_LINE_MEMO_MAX = 100


class _Reframe(Exception):
    """The head given to ``_parse_head`` holds a blank line: the caller split it wrongly."""


# --- head: start line and header lines --------------------------------------------------
def _new_request(method: str, uri_text: str) -> Request:
    return Request(method, uri_text)


def _start_line(line: str) -> tuple[Message, RemoteProtocolError | None]:
    """Raises only when ``line`` is not recognisably SIP; else returns the message and the
    first problem found in it (reported once the headers are read, with the message)."""
    parts = line.split(" ")
    if len(parts) == 3 and parts[2] == "SIP/2.0" and parts[0] in METHODS:
        # the common case: a standard method, single SPs
        uri_text = parts[1]
        m = _RURI_MEMO.get(uri_text)
        if m is not None:
            msg = _new_request(parts[0], uri_text)
            msg._cache["uri"] = (uri_text, m)
            return msg, None
        m = _SIP_URI.fullmatch(uri_text)
        if m is not None and m.group(7) is None:
            msg = _new_request(parts[0], uri_text)
            try:
                check_uri_match(m)
            except RemoteProtocolError as e:
                return msg, _E(f"bad Request-URI: {e.reason}")
            msg._cache["uri"] = (uri_text, m)  # the Uri is built on first use
            if len(uri_text) <= MEMO_KEY_MAX:
                if len(_RURI_MEMO) >= MEMO_SIZE:
                    _RURI_MEMO.clear()
                _RURI_MEMO[uri_text] = m
            return msg, None
    if line[:4].upper() == "SIP/":
        return _status_line(line)
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF
    if len(parts) != 3 or not (parts[0] and parts[1] and parts[2]):
        # RFC 4475 §3.1.2.9 lwsstart and §3.1.2.10 trws: extra SP tolerated (never re-sent)
        parts = [p for p in parts if p]
        if len(parts) < 3:
            raise _E(f"malformed request line {line[:80]!r}")
    method, version = parts[0], parts[-1]
    if version != "SIP/2.0" and not _VERSION.fullmatch(version):
        raise _E(f"not a SIP request line {line[:80]!r}")
    if len(parts) > 3:
        # RFC 4475 §3.1.2.8 lwsruri
        msg = _new_request(method, " ".join(parts[1:-1]))
        return msg, _E(f"whitespace inside the Request-URI {msg.uri_text[:80]!r}")
    uri_text = parts[1]
    msg = _new_request(method, uri_text)
    if method not in METHODS and not is_token(method):
        return msg, _E(f"method {method[:40]!r} is not a token")
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        # RFC 4475 §3.1.2.16 badvers
        return msg, _E(f"unsupported SIP version {version[:16]!r}", 505)
    if uri_text[0] == "<":
        # RFC 4475 §3.1.2.7 ltgtruri
        return msg, _E(f"Request-URI must not be enclosed in <> ({uri_text[:80]!r})")
    try:
        uri = Uri.parse(uri_text)
    except RemoteProtocolError as e:
        return msg, _E(f"bad Request-URI: {e.reason}")
    if uri.headers:
        # RFC 3261 §19.1.1 (no headers in a Request-URI); RFC 4475 §3.1.2.11 escruri
        return msg, _E(f"header fields ('?{uri.headers[:40]}') inside the Request-URI")
    msg._cache["uri"] = (uri_text, uri)
    return msg, None


def _status_line(line: str) -> tuple[Message, RemoteProtocolError | None]:
    # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
    parts = line.split(" ", 2)
    standard = parts[0] == "SIP/2.0"
    if len(parts) < 2 or not (standard or _VERSION.fullmatch(parts[0])):
        raise _E(f"malformed status line {line[:80]!r}")
    code = parts[1]
    if not (len(code) == 3 and code.isascii() and code.isdigit()) or not "100" <= code <= "699":
        # RFC 4475 §3.1.2.19 bigcode: a receiver drops it
        raise _E(f"bad status code {code[:16]!r} (RFC 3261 §7.2: 100 to 699)")
    resp = Response(int(code), parts[2] if len(parts) == 3 else "")
    if not standard and parts[0].upper() != "SIP/2.0":
        return resp, _E(f"unsupported SIP version {parts[0][:16]!r}", 505)
    return resp, None


def _header_lines(lines: list[str], headers: list[tuple[str, str]]) -> tuple[RemoteProtocolError | None, bool]:
    """Header lines (``lines[1:]``) → ``headers``. Returns the first bad line's error and
    whether a folded line was seen (then the caller unfolds and calls again)."""
    names = NAMES
    append = headers.append
    seen = _LINES
    seen_get = seen.get
    err: RemoteProtocolError | None = None
    it = iter(lines)
    next(it)
    for line in it:
        pair = seen_get(line)
        if pair is not None:
            append(pair)
            continue
        name, sep, value = line.partition(": ")  # the usual "Name: value"
        key = names.get(name)
        if key is not None and sep:
            pair = (key, value.strip(" \t"))
            append(pair)
            if len(line) <= _LINE_MEMO_MAX:
                if len(seen) >= MEMO_SIZE:
                    seen.clear()
                seen[line] = pair
            continue
        name, sep, value = line.partition(":")
        key = names.get(name)
        if key is not None and sep:
            append((key, value.strip(" \t")))
            continue
        # the slow lane: continuation, unknown or odd name, no colon
        if not line:
            continue
        if line[0] == " " or line[0] == "\t":
            if not headers:
                err = err or _E("header section starts with a continuation line")
                continue
            return err, True
        if not sep:
            err = err or _E(f"header line without ':' {line[:60]!r}")
            continue
        raw = name.rstrip(" \t")  # HCOLON = *( SP / HTAB ) ":" SWS
        try:
            key = canonical_name(raw)
        except RemoteProtocolError:
            err = err or _E(f"bad header name {raw[:60]!r}")
            continue
        append((key, value.strip(" \t")))
    return err, False


def _control_error(lines: list[str]) -> RemoteProtocolError | None:
    """A control character is legal only as a quoted-pair (``\\`` + char, RFC 3261 §25.1)."""
    for line in lines:
        for m in _CTL.finditer(line):
            i = m.start()
            if i == 0 or line[i - 1] != "\\":
                return _E(f"control character {line[i]!r} in header line {line[:40]!r}")
    return None


def _parse_head(head: bytes) -> tuple[Message, RemoteProtocolError | None]:
    """Start line and header lines. Raises when the bytes are not SIP; otherwise returns the
    message and the first problem found in it."""
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    err: RemoteProtocolError | None = None
    # CR, LF and control characters all come in CRLF pairs in a clean head
    if len(head) - len(head.translate(None, _CTL_CRLF)) != 2 * (len(lines) - 1):
        norm = text.replace("\r\n", "\n")
        if "\r" in norm:
            raise _E("bare CR in the header section")
        if "\n\n" in norm:
            raise _Reframe  # a bare-LF sender's blank line ends the head earlier
        lines = norm.split("\n")  # bare-LF line ends are tolerated
        err = _control_error(lines)
    if not lines[0]:
        raise _E("empty start line")
    msg, start_err = _start_line(lines[0])
    line_err, folded = _header_lines(lines, msg.headers)
    if folded:
        msg.headers.clear()
        unfolded = _FOLD.sub(" ", "\n".join(lines[1:])).split("\n")
        unfolded.insert(0, lines[0])
        line_err, _ = _header_lines(unfolded, msg.headers)
    return msg, start_err or err or line_err


def _collect(headers: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]] | None]:
    """(last value of each header, every value of the validated headers — None when no
    header name repeats, the common case)."""
    last = dict(headers)
    if len(last) == len(headers):
        return last, None
    multi: dict[str, list[str]] = {}
    eager = _EAGER
    for n, v in headers:
        if n in eager:
            vals = multi.get(n)
            if vals is None:
                multi[n] = [v]
            else:
                vals.append(v)
    return last, multi


def _validate(msg: Message, last: dict[str, str], multi: dict[str, list[str]] | None) -> None:
    """Check and cache the typed headers (RFC 3261 §8.2, §16.3 step 1: a request must be
    well formed before anything acts on it).

    This runs on every message, so the common shapes (each header once, a SIP/2.0 Via,
    a standard CSeq method) are handled inline; anything else goes through the general
    parsers of ``node.sip.headers`` / ``node.sip.uri``, which give the precise error.
    """
    get = last.get
    via = get("Via")
    frm = get("From")
    to = get("To")
    call_id = get("Call-ID")
    cseq_v = get("CSeq")
    if via is None or frm is None or to is None or call_id is None or cseq_v is None:
        missing = [n for n in _MANDATORY if n not in last]
        raise _E(f"missing {', '.join(missing)} header{'s' if len(missing) > 1 else ''} (RFC 3261 §8.1.1)")
    if multi is not None:
        for n in SINGLE_HEADERS:
            vals = multi.get(n)
            if vals is not None and len(vals) > 1:
                # RFC 4475 §3.3.8 multi01, §3.3.9 mcl01
                raise _E(f"{len(vals)} {n} headers where one is allowed (RFC 3261 §7.3.1)")
    # CSeq: number below 2**31 (RFC 3261 §8.1.1.5) and a method
    digits, sp, method = cseq_v.partition(" ")
    if sp and len(digits) < 10 and digits.isdigit() and digits.isascii() and method in METHODS:
        cseq = CSeq(int(digits), method)
    else:
        cseq = CSeq.parse(cseq_v)
    if call_id not in _CALL_IDS:  # a call's every message repeats its Call-ID
        if _CALL_ID.fullmatch(call_id) is None:
            parse_call_id(call_id)  # raises with the reason
        if len(call_id) <= MEMO_KEY_MAX:
            if len(_CALL_IDS) >= MEMO_SIZE:
                _CALL_IDS.clear()
            _CALL_IDS[call_id] = True
    cache = msg._cache  # holds the Request-URI's match at most
    cache["call_id"] = call_id
    cache["cseq"] = cseq
    # Via, From and To of a response: checked now, built when first read (a response is
    # matched on its Via's text and seldom reads From or To); a request's are read by the
    # transaction layer and the dialog match, so they are built now (but a REGISTER's From)
    request = type(msg) is Request
    if multi is None and "," not in via:
        if request:
            cache["vias"] = [_parse_via(via)]
        else:
            _check_via(via)
    else:
        cache["vias"] = parse_vias(multi["Via"] if multi is not None else [via])
    try:
        # a REGISTER's From is read by nothing on the registrar's path (RFC 3261 §10.3 keys
        # on the To): checked now, built when first read, like a response's
        na = _parse_name_addr(frm) if request and msg.method != "REGISTER" else _check_name_addr(frm)  # type: ignore[attr-defined]
    except RemoteProtocolError as e:
        raise _E(f"bad From header: {e.reason}") from None
    if na is not None:
        cache["from"] = na
    try:
        na = _parse_name_addr(to) if request else _check_name_addr(to)
    except RemoteProtocolError as e:
        raise _E(f"bad To header: {e.reason}") from None
    if na is not None:
        cache["to"] = na
    v = get("Max-Forwards")
    cache["max_forwards"] = None if v is None else 70 if v == "70" else parse_max_forwards(v)
    v = get("Content-Type")
    cache["content_type"] = None if v is None else parse_content_type(v)
    # Contact, Route, Record-Route: checked now, built on first use (often never read)
    v = get("Contact")
    if v is None:
        cache["contacts"] = []
    elif multi is None:
        if v != "*" and v not in _CONTACT_CHECKED:
            check_name_addrs((v,), "Contact")
    else:
        vals = multi["Contact"]
        if not (len(vals) == 1 and v == "*"):
            check_name_addrs(vals, "Contact")
    v = get("Route")
    if v is None:
        cache["routes"] = []
    else:
        check_name_addrs((v,) if multi is None else multi["Route"], "Route")
    v = get("Record-Route")
    if v is None:
        cache["record_routes"] = []
    else:
        check_name_addrs((v,) if multi is None else multi["Record-Route"], "Record-Route")
    if request and cseq.method != msg.method:  # type: ignore[attr-defined]
        # RFC 4475 §3.1.2.17 mismatch01 (400); §3.1.2.18 mismatch02: 501 for an unknown method
        raise _E(
            f"CSeq method {cseq.method} does not match the request method {msg.method}",  # type: ignore[attr-defined]
            400 if msg.method in METHODS else 501,  # type: ignore[attr-defined]
        )


_RURI_MEMO: dict[str, re.Match[str]] = {}
_CALL_IDS: dict[str, bool] = {}  # Call-IDs checked (bounded like the memos of node.sip.uri)
_check_via = Via.check
_parse_via = Via.parse
_check_name_addr = NameAddr.check_lazy
_parse_name_addr = NameAddr.parse


def _content_length(last: dict[str, str], multi: dict[str, list[str]] | None) -> int | None:
    v = last.get("Content-Length")
    if v is None:
        return None
    if multi is not None and len(multi["Content-Length"]) > 1:
        # RFC 4475 §3.3.9 mcl01: the body cannot be framed
        raise _E(f"{len(multi['Content-Length'])} Content-Length headers: the body cannot be delimited")
    if not (v.isascii() and v.isdigit()) or len(v) > 10:
        # RFC 4475 §3.1.2.3 ncl (and "Content-Length: five")
        raise _E(f"bad Content-Length {v[:20]!r} (RFC 3261 §20.14: 1*DIGIT)")
    return int(v)


def parse_head(head: bytes) -> Message:
    """Start line and headers only (no body, no cross-header checks); raises the first
    problem, with ``.message`` attached when there is one."""
    msg, err = _parse_head(head)
    if err is not None:
        err.message = msg
        raise err
    return msg


# --- datagrams -------------------------------------------------------------------------
def _head_end(buf: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """(end of the head, start of the body) at the first empty line, whatever the line ends
    (CRLF, or a bare-LF sender's LF); (-1, -1) if there is none yet."""
    i = buf.find(b"\n\r\n", start)
    j = buf.find(b"\n\n", start, i if i >= 0 else len(buf))
    if j >= 0:
        return (j - 1 if j and buf[j - 1] == 13 else j), j + 2
    if i >= 0:
        return (i - 1 if i and buf[i - 1] == 13 else i), i + 3
    return -1, -1


def _split_datagram(data: bytes) -> tuple[bytes, int]:
    """(head, body offset) of a datagram. A message with no empty line at all (and so no
    body) is accepted over UDP."""
    end, off = _head_end(data)
    if end < 0:
        return data.rstrip(b"\r\n"), len(data)
    return data[:end], off


def parse_datagram(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """One UDP datagram → message (RFC 3261 §18.3: the body is Content-Length octets, or the
    rest of the datagram when the header is absent; octets past it are discarded)."""
    if type(data) is not bytes:
        data = bytes(data)
    if not data or data[0] == 13 or data[0] == 10:
        data = data.lstrip(b"\r\n")  # keep-alive CRLFs in front of a message
        if not data:
            raise _E("empty datagram")
    if len(data) > max_size:
        _too_large(data, max_size)
    end = data.find(_CRLF2)
    try:
        if end > 0:
            head, off = data[:end], end + 4
            try:
                msg, err = _parse_head(head)
            except _Reframe:  # not CRLF line ends after all
                head, off = _split_datagram(data)
                msg, err = _parse_head(head)
        else:
            head, off = _split_datagram(data)
            msg, err = _parse_head(head)
    except _Reframe:
        raise _E("empty line inside the header section") from None
    framed = False
    try:
        if err is not None:
            raise err
        last, multi = _collect(msg.headers)
        cl = _content_length(last, multi)
        framed = True
        if cl is None:
            msg.body = data[off:]
        else:
            if off + cl > len(data):
                # RFC 4475 §3.1.2.2 clerr
                raise _E(f"Content-Length {cl} is larger than the {len(data) - off} body octets received")
            msg.body = data[off : off + cl] if cl else b""
        _validate(msg, last, multi)
    except RemoteProtocolError as e:
        # the head parsed: keep it so the caller can still answer (400, 505, ...)
        if not framed:
            msg.body = data[off:]
        e.message = msg
        raise
    return msg


def _too_large(data: bytes, max_size: int) -> None:
    err = _E(f"message of {len(data)} octets exceeds the limit of {max_size} (RFC 3261 §21.5.14)", 513)
    end, _ = _head_end(data[:max_size])
    if end > 0:
        try:
            msg, problem = _parse_head(data[:end])
            if problem is None:
                err.message = msg  # enough to answer 513
        except (RemoteProtocolError, _Reframe):
            pass
    raise err


# --- streams ---------------------------------------------------------------------------
class _Fatal(Exception):
    """Framing is lost: carries the error to report."""

    def __init__(self, err: RemoteProtocolError) -> None:
        self.err = err


class StreamParser:
    """Frames SIP messages out of a TCP byte stream (RFC 3261 §18.3: Content-Length is
    mandatory on streams). Feed bytes, get complete messages back.

    A message that frames but is invalid comes back as a ``RemoteProtocolError`` item (with
    ``.message``) and the stream stays usable. A framing error (not SIP, a bad or repeated
    Content-Length, a message over ``max_size``) is fatal: the stream cannot be
    resynchronised and the connection must close (RFC 4475 §3.1.2.3, §3.3.9). ``feed`` raises
    it, with ``.message`` when the head parsed so a 400/513 can go out first — unless the
    same call framed messages before it: those are returned, ``failed`` is set, and the next
    ``feed`` raises (nothing that framed is lost). After that every ``feed`` raises.

    CRLFs between messages are skipped (§7.5); each double CRLF counts one RFC 5626 §3.5.1
    keep-alive ping in ``pings``, for the adapter to answer with a single CRLF.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, *, require_content_length: bool = True) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        #: a message without Content-Length is an error item (framed as if it were 0)
        self.require_content_length = require_content_length
        #: CRLF keep-alive pings seen (RFC 5626 §3.5.1): the adapter answers each with CRLF
        self.pings = 0
        #: the framing error, once the stream is lost (the connection should close)
        self.failed: RemoteProtocolError | None = None
        self._reported = False
        self._crlfs = 0  # CRLFs since the last message: two make a ping
        self._scan = 0  # where to resume looking for the end of the head
        self._start_checked = False
        self._pending: tuple[Message, RemoteProtocolError | None, int, int] | None = None

    def feed(self, data: bytes) -> list[Message | RemoteProtocolError]:
        """Returns complete messages, or a RemoteProtocolError for a message that framed
        correctly but failed to parse (the stream stays usable). Raises when framing breaks."""
        if self.failed is not None:
            if self._reported:
                raise _E(f"stream already failed: {self.failed.reason}", self.failed.status_hint)
            self._reported = True
            raise self.failed
        self._buf += data
        out: list[Message | RemoteProtocolError] = []
        try:
            self._frame(out)
        except _Fatal as f:
            self.failed = f.err
            self._buf.clear()
            self._pending = None
            if not out:
                self._reported = True
                raise f.err from None
        return out

    def _frame(self, out: list[Message | RemoteProtocolError]) -> None:
        buf = self._buf
        while buf:
            if self._pending is not None:
                msg, err, total, off = self._pending
                if len(buf) < total:
                    return
                msg.body = bytes(buf[off:total])
                del buf[:total]
                self._pending = None
                self._scan = 0
                self._start_checked = False
                out.append(msg if err is None else err)
                continue
            if buf[0] == 13 or buf[0] == 10:
                self._skip_crlfs()
                if not buf or buf[0] == 13:
                    return
            self._crlfs = 0
            head_end, off = _head_end(buf, self._scan)
            if head_end < 0:
                if len(buf) > self.max_size:
                    raise _Fatal(_E(f"no end of header section within {self.max_size} octets", 513))
                self._scan = max(0, len(buf) - 3)
                if not self._start_checked:
                    self._check_start()
                return
            try:
                msg, err = _parse_head(bytes(buf[:head_end]))
            except RemoteProtocolError as e:
                raise _Fatal(e) from None
            except _Reframe:
                raise _Fatal(_E("blank line inside the header section")) from None
            last, multi = _collect(msg.headers)
            try:
                cl = _content_length(last, multi)
            except RemoteProtocolError as e:
                e.message = msg
                raise _Fatal(e) from None
            if cl is None:
                cl = 0
                if self.require_content_length and err is None:
                    err = _E("missing Content-Length, mandatory on a stream transport (RFC 3261 §18.3)")
            total = off + cl
            if total > self.max_size:
                big = _E(f"message of {total} octets exceeds the limit of {self.max_size} (RFC 3261 §21.5.14)", 513)
                big.message = msg
                raise _Fatal(big)
            if err is None:
                try:
                    _validate(msg, last, multi)
                except RemoteProtocolError as e:
                    err = e
            if err is not None:
                err.message = msg
            self._pending = (msg, err, total, off)

    def _skip_crlfs(self) -> None:
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n:
            b = buf[i]
            if b == 13:
                if i + 1 == n:
                    break  # the LF is still on its way
                if buf[i + 1] != 10:
                    raise _Fatal(_E("bare CR between messages"))
                i += 2
                self._crlfs += 1
                if self._crlfs == 2:
                    self.pings += 1
                    self._crlfs = 0
            elif b == 10:
                i += 1  # a bare LF: tolerated, not a ping
            else:
                break
        if i:
            del buf[:i]
            self._scan = 0

    def _check_start(self) -> None:
        """Refuse garbage as soon as its first line is in, rather than after max_size."""
        buf = self._buf
        nl = buf.find(b"\n")
        if nl < 0:
            return
        self._start_checked = True
        line = bytes(buf[:nl]).rstrip(b"\r").rstrip(b" ")
        if line.startswith(b"SIP/") or _VERSION_B.fullmatch(line.rpartition(b" ")[2]):
            return
        raise _Fatal(_E(f"not a SIP start line {line[:60]!r}"))
