"""Bytes → Request/Response (RFC 3261 §7, §25), for datagrams and for TCP streams (§18.3).

The parser checks only what every element needs: the start line, header syntax, the
mandatory headers and Content-Length. It leaves typed header parsing to the lazy views
of ``node.sip.message`` so the hot path stays a split and a scan. Every failure raises
``RemoteProtocolError`` whose ``status_hint`` is the response to send (400, 505, 413).
"""

from __future__ import annotations

from node.sip.errors import RemoteProtocolError
from node.sip.headers import canonical_name
from node.sip.message import Message, Request, Response

_CRLF2 = b"\r\n\r\n"
_MANDATORY = ("To", "From", "CSeq", "Call-ID", "Via")
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")
DEFAULT_MAX_SIZE = 65535


def _split_head(data: bytes) -> tuple[bytes, int]:
    """(head bytes, body offset). Tolerates bare-LF senders."""
    end = data.find(_CRLF2)
    if end >= 0:
        return data[:end], end + 4
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], end + 2
    # a message without body and without the blank line: accept over UDP
    return data.rstrip(b"\r\n"), len(data)


def _parse_start_line(line: str) -> Message:
    if line.startswith("SIP/"):
        # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise RemoteProtocolError(f"bad status line {line!r}")
        version, code = parts[0], parts[1]
        if version.upper() != "SIP/2.0":
            raise RemoteProtocolError(f"unsupported version {version!r}", 505)
        if len(code) != 3 or not code.isdigit() or code[0] == "0":
            raise RemoteProtocolError(f"bad status code {code!r}")
        return Response(int(code), parts[2] if len(parts) == 3 else "", version="SIP/2.0")
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF (single SPs, §25.1)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise RemoteProtocolError(f"malformed request line {line!r}")
    method, uri, version = parts
    if not method or any(c not in _METHOD_CHARS for c in method):
        raise RemoteProtocolError(f"bad method {method!r}")
    if not version.upper().startswith("SIP/"):
        raise RemoteProtocolError(f"malformed request line {line!r}")
    if version.upper() != "SIP/2.0":
        raise RemoteProtocolError(f"unsupported version {version!r}", 505)
    if ":" not in uri:
        raise RemoteProtocolError(f"bad Request-URI {uri!r}")
    return Request(method, uri, version="SIP/2.0")


def parse_head(head: bytes) -> Message:
    """Parse start line and headers; the body is attached by the caller."""
    try:
        text = head.decode("utf-8", "surrogateescape")
    except Exception as e:  # pragma: no cover - surrogateescape decodes anything
        raise RemoteProtocolError("undecodable header bytes") from e
    lines = text.replace("\r\n", "\n").split("\n")
    msg = _parse_start_line(lines[0])
    headers = msg.headers
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            # folded continuation line (§7.3.1): replace the fold by a single SP
            if not headers:
                raise RemoteProtocolError("continuation line before any header")
            n, v = headers[-1]
            headers[-1] = (n, f"{v} {line.strip()}")
            continue
        colon = line.find(":")
        if colon <= 0:
            raise RemoteProtocolError(f"malformed header line {line[:60]!r}")
        name = line[:colon].rstrip(" \t")
        headers.append((canonical_name(name), line[colon + 1 :].strip()))
    return msg


def _check(msg: Message) -> None:
    for name in _MANDATORY:
        if msg.get(name) is None:
            raise RemoteProtocolError(f"missing {name} header")
    cseq = msg.cseq
    if isinstance(msg, Request):
        if cseq.method != msg.method:
            # RFC 4475 §3.1.2.16 mismatch01: CSeq method must equal the request method
            raise RemoteProtocolError(f"CSeq method {cseq.method} does not match request method {msg.method}")
        mf = msg.get("Max-Forwards")
        if mf is not None:
            mf = mf.strip()
            if not mf.isdigit() or int(mf) > 255:
                raise RemoteProtocolError(f"bad Max-Forwards {mf!r}")


def _content_length(msg: Message) -> int | None:
    v = msg.get("Content-Length")
    if v is None:
        return None
    v = v.strip()
    if not v.isdigit() or len(v) > 9:
        raise RemoteProtocolError(f"bad Content-Length {v!r}")
    return int(v)


def parse_datagram(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """One UDP datagram → message (RFC 3261 §18.3: body length from Content-Length,
    the whole remainder when it is absent; octets past it are discarded)."""
    if len(data) > max_size:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds {max_size}", 513)
    head, off = _split_head(data)
    msg = parse_head(head)
    try:
        _check(msg)
        cl = _content_length(msg)
        if cl is None:
            msg.body = data[off:]
        else:
            if off + cl > len(data):
                raise RemoteProtocolError(f"Content-Length {cl} larger than the {len(data) - off} body bytes received")
            msg.body = data[off : off + cl]
    except RemoteProtocolError as e:
        # the head parsed: keep it so the caller can still answer with a 400
        e.message = msg  # type: ignore[attr-defined]
        raise
    return msg


class StreamParser:
    """Frames SIP messages out of a TCP byte stream (RFC 3261 §18.3: Content-Length is
    mandatory on streams). Feed bytes, then drain ``messages``; a framing error is fatal for
    the connection (it raises) because the stream cannot be resynchronised."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        #: CRLF keep-alive pings seen (RFC 5626 §3.5.1): the adapter answers each with CRLF
        self.pings = 0

    def feed(self, data: bytes) -> list[Message | RemoteProtocolError]:
        """Returns complete messages, or a RemoteProtocolError for a message that framed
        correctly but failed to parse (the stream stays usable). Raises when framing breaks."""
        buf = self._buf
        buf += data
        out: list[Message | RemoteProtocolError] = []
        while True:
            # leading CRLFs between messages are keep-alives
            i = 0
            while buf[i : i + 4] == b"\r\n\r\n":
                self.pings += 1
                i += 4
            while buf[i : i + 2] == b"\r\n":
                i += 2
            if i:
                del buf[:i]
            if not buf:
                break
            end = buf.find(_CRLF2)
            if end < 0:
                if len(buf) > self.max_size:
                    raise RemoteProtocolError("header section too large", 513)
                break
            head = bytes(buf[:end])
            try:
                msg = parse_head(head)
                cl = _content_length(msg)
            except RemoteProtocolError:
                # cannot know where this message ends: the connection is lost
                raise
            if cl is None:
                cl = 0
            total = end + 4 + cl
            if total > self.max_size:
                raise RemoteProtocolError(f"message of {total} bytes exceeds {self.max_size}", 513)
            if len(buf) < total:
                break
            msg.body = bytes(buf[end + 4 : total])
            del buf[:total]
            try:
                _check(msg)
            except RemoteProtocolError as e:
                e.message = msg  # type: ignore[attr-defined]
                out.append(e)
                continue
            out.append(msg)
        return out
