"""Bytes → messages: datagrams (RFC 3261 §18.3 over UDP), streams (TCP framing), and the
promise that nothing but RemoteProtocolError ever comes out of the parser."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.sip.errors import RemoteProtocolError
from node.sip.message import Request, Response
from node.sip.parser import DEFAULT_MAX_SIZE, StreamParser, parse_datagram, parse_head

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rfc4475"
TORTURE = {p.stem: p.read_bytes() for p in sorted(CORPUS.glob("*.sip"))}

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def request(method: str = "INVITE", *, headers: str = "", body: bytes = b"", uri: str = "sip:bob@example.com",
            length: int | None = None, extra_first: str = "") -> bytes:
    cl = "" if length == -1 else f"Content-Length: {len(body) if length is None else length}\r\n"
    return (
        f"{method} {uri} SIP/2.0\r\n{extra_first}"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.com>;tag=a1\r\n'
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: c1@192.0.2.1\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{headers}{cl}\r\n"
    ).encode() + body


def response(status: str = "200 OK", *, headers: str = "", body: bytes = b"") -> bytes:
    return (
        f"SIP/2.0 {status}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport=5060;received=192.0.2.9\r\n"
        'From: "Alice" <sip:alice@example.com>;tag=a1\r\n'
        "To: <sip:bob@example.com>;tag=b2\r\n"
        "Call-ID: c1@192.0.2.1\r\n"
        "CSeq: 1 INVITE\r\n"
        f"{headers}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def refusal(data: bytes, **kw) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as ei:
        parse_datagram(data, **kw)
    return ei.value


# --- datagrams: the happy path ------------------------------------------------------------
def test_request_with_body():
    m = parse_datagram(request(body=SDP, headers="Content-Type: application/sdp\r\n"))
    assert isinstance(m, Request) and m.method == "INVITE" and m.uri.user == "bob"
    assert m.body == SDP and m.content_type == "application/sdp"
    assert m.call_id == "c1@192.0.2.1" and (m.cseq.seq, m.cseq.method) == (1, "INVITE")
    assert m.top_via.branch == "z9hG4bKabc" and m.top_via.params["rport"] is None
    assert m.from_.display == "Alice" and m.from_.tag == "a1" and m.to.tag is None
    assert m.max_forwards == 70 and m.contacts == [] and m.routes == [] and m.record_routes == []


def test_response():
    m = parse_datagram(response("180 Ringing", headers="Contact: <sip:bob@192.0.2.2>\r\n"))
    assert isinstance(m, Response) and (m.status, m.reason) == (180, "Ringing")
    assert m.to.tag == "b2" and m.top_via.params == {"branch": "z9hG4bKabc", "rport": "5060", "received": "192.0.2.9"}
    assert [str(c.uri) for c in m.contacts] == ["sip:bob@192.0.2.2"]


def test_compact_and_oddly_cased_names_are_canonical():
    data = (
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\n"
        b"t: <sip:bob@example.com>\r\ni: x@y\r\nCSEQ: 2 OPTIONS\r\nmax-FORWARDS: 5\r\nm: <sip:a@h>\r\n"
        b"k: timer\r\nX-Custom-Thing: Yes\r\nl: 0\r\n\r\n"
    )
    m = parse_datagram(data)
    names = [n for n, _ in m.headers]
    assert names == ["Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Contact", "Supported",
                     "X-Custom-Thing", "Content-Length"]
    assert m.get("x-custom-thing") == "Yes" and m.get("k") == "timer" and m.max_forwards == 5


def test_folded_lines_become_one_space():
    data = request(headers="Subject: one\r\n two\r\n\tthree\r\nSupported: a,\r\n  b\r\n")
    m = parse_datagram(data)
    assert m.get("Subject") == "one two three" and m.get_all("Supported") == ["a", "b"]


def test_leading_crlf_and_bare_lf_line_ends_are_tolerated():
    m = parse_datagram(b"\r\n\r\n" + request())
    assert m.method == "INVITE"
    lf = request(body=b"hello\r\n\r\nworld").replace(b"\r\n", b"\n", 8)  # head in bare LF
    m = parse_datagram(lf)
    assert m.body == b"hello\r\n\r\nworld" and m.call_id == "c1@192.0.2.1"


def test_no_blank_line_and_no_body_is_accepted_over_udp():
    data = request(length=0)[:-2]  # the empty line is missing
    assert parse_datagram(data).body == b""


def test_missing_content_length_takes_the_rest_of_the_datagram():
    assert parse_datagram(request(length=-1) + b"abc\r\n").body == b"abc\r\n"


def test_octets_past_content_length_are_discarded():
    assert parse_datagram(request(body=b"12345", length=3)).body == b"123"


def test_the_head_of_a_message_is_not_split_by_the_body():
    body = b"a\r\n\r\nb"
    m = parse_datagram(request(body=body))
    assert m.body == body


# --- datagrams: refusals -------------------------------------------------------------------
@pytest.mark.parametrize("value,words", [
    ("-1", "bad Content-Length '-1'"),
    ("five", "bad Content-Length 'five'"),
    ("1 2", "bad Content-Length '1 2'"),
    ("²", "bad Content-Length"),       # str.isdigit() says yes; int() would crash
    ("١٢", "bad Content-Length"),      # Arabic-Indic digits
    ("99999999999", "bad Content-Length"),
])
def test_bad_content_length(value, words):
    e = refusal(request(length=-1, headers=f"Content-Length: {value}\r\n"))
    assert words in e.reason and isinstance(e.message, Request)


def test_content_length_beyond_the_datagram():
    e = refusal(request(body=b"abc", length=4))
    assert "Content-Length 4 is larger than the 3 body octets" in e.reason and e.status_hint == 400


@pytest.mark.parametrize("value,ok", [("0", 0), ("255", 255), ("0070", 70), ("256", None), ("-1", None),
                                      ("7O", None), ("", None), ("1000000", None)])
def test_max_forwards_range(value, ok):
    data = request().replace(b"Max-Forwards: 70", f"Max-Forwards: {value}".encode())
    if ok is None:
        assert "Max-Forwards" in refusal(data).reason
    else:
        assert parse_datagram(data).max_forwards == ok


@pytest.mark.parametrize("cseq,words", [
    ("1", "bad CSeq"), ("INVITE", "bad CSeq"), ("-1 INVITE", "bad CSeq"), ("1 INV ITE", "bad CSeq"),
    ("2147483648 INVITE", "not below 2**31"), ("1 BYE", "does not match the request method INVITE"),
    ("1,2 INVITE", "bad CSeq"), ("", "bad CSeq"),
])
def test_bad_cseq(cseq, words):
    e = refusal(request().replace(b"CSeq: 1 INVITE", f"CSeq: {cseq}".encode()))
    assert words in e.reason and e.status_hint == 400


def test_cseq_limit_and_spaces():
    data = request().replace(b"CSeq: 1 INVITE", b"CSeq:   2147483647 \t INVITE")
    assert parse_datagram(data).cseq.seq == 2**31 - 1


def test_unknown_method_with_other_cseq_method_is_501():
    e = refusal(request("FOO").replace(b"CSeq: 1 FOO", b"CSeq: 1 BAR"))
    assert e.status_hint == 501 and "BAR" in e.reason


def test_unknown_method_is_a_valid_request():
    m = parse_datagram(request("FOO-BAR"))
    assert m.method == "FOO-BAR" and m.cseq.method == "FOO-BAR"


@pytest.mark.parametrize("via,words", [
    ("SIP/2.0/UDP", "bad Via"),
    ("SIP/2.0 UDP host", "bad Via"),
    ("SIP/2.0/UDP host:99999", "bad Via port"),
    ("SIP/2.0/UDP ho st", "Via"),
    ("SIP/2.0/UDP host;branch", "needs a value"),
    ("SIP/2.0/UDP host;branch=a;branch=b", "appears twice"),
    ("SIP/2.0/UDP host;rport=x", "rport"),
    ("SIP/2.0/UDP host;;branch=a", "empty parameter"),
    ("SIP/2.0/UDP host;branch=a,", "empty element"),
    ("SIP/2.0/UDP [::1", "bad Via"),
    ("SIP/2.0/UDP [1::2::3]:5060", "IPv6"),
    ("HTTP/1.1/TCP host", "not SIP"),
    ("SIP/2.0/UDP host;branch=\"unterminated", "Via"),
    ("SIP/2.0/UDP -host", "bad Via"),
])
def test_bad_via(via, words):
    e = refusal(request().replace(b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport", via.encode()))
    assert words in e.reason and isinstance(e.message, Request), e.reason


@pytest.mark.parametrize("via,host,port,params", [
    ("SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKx", "[2001:db8::1]", 5062, {"branch": "z9hG4bKx"}),
    ("sip / 2.0 / tcp  h.example.com : 5060 ; Branch = z9hG4bKy ; received=[::1]", "h.example.com", 5060,
     {"branch": "z9hG4bKy", "received": "[::1]"}),
    ("SIP/2.0/UDP 10.0.0.1;ttl=16;maddr=224.2.0.1;x=\"a;b,c\"", "10.0.0.1", None,
     {"ttl": "16", "maddr": "224.2.0.1", "x": '"a;b,c"'}),
])
def test_good_via(via, host, port, params):
    m = parse_datagram(request().replace(b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport", via.encode()))
    v = m.top_via
    assert (v.host, v.port, v.params) == (host, port, params)


@pytest.mark.parametrize("uri,words", [
    ("sip:bob@", "empty host"),
    ("sip:@example.com", "empty user"),
    ("sip:bob@example.com:65536", "bad port"),
    ("sip:bob@exa mple.com", "whitespace"),     # one extra SP: 4 parts
    ("sip:b%zzob@example.com", "bad %-escape"),
    ("sip:bob@[::1", "IPv6"),
    ("sip:bob@example.com;lr;lr", "appears twice"),
    ("sip:bob@example.com?Subject=x", "inside the Request-URI"),
    ("<sip:bob@example.com>", "enclosed in <>"),
    ("bob@example.com", "bad Request-URI"),
    ("sip:bob@exa_mple.com", "bad host"),
    ("1sip:x", "bad Request-URI"),
])
def test_bad_request_uri(uri, words):
    e = refusal(request(uri=uri))
    assert words in e.reason and e.status_hint == 400 and isinstance(e.message, Request), e.reason


@pytest.mark.parametrize("uri", [
    "sip:bob@[2001:db8::1]:5060;transport=tcp", "sips:bob@example.com", "SIP:Bob@Example.COM",
    "tel:+1-201-555-0123", "urn:service:sos", "sip:%61lice@example.com", "sip:example.com.",
    "sip:+1-212-555-1212:1234@gateway.com;user=phone", "sip:bob:secret@example.com:05060",
])
def test_good_request_uri(uri):
    assert parse_datagram(request(uri=uri)).uri_text == uri


@pytest.mark.parametrize("header,words", [
    ('To: "Bob <sip:bob@example.com>', "unterminated quoted string"),
    ("To: <sip:bob@example.com", "unterminated '<'"),
    ("To: sip:bob@example.com>", "'>' without '<'"),
    ("To: <sip:bob@example.com> junk", "unexpected"),
    ("To: Bob, Jr. <sip:bob@example.com>", "must be a quoted string"),
    ("To: <sip:bob@example.com>, <sip:carol@example.com>", "unexpected"),
    ("To: sip:bob@example.com, sip:carol@example.com", "more than one value"),
    ("To: <sip:bob@example.com>;tag=1;tag=2", "appears twice"),
    ("To: <sip:bob@example.com>;tag=", "empty value"),
    ("To: <sip:bob@example.com>;=x", "parameter"),
    ("To: <<sip:bob@example.com>>", "nested"),
    ('To: "a\\"b <sip:bob@example.com>', "unterminated quoted string"),
    ("To:", "empty"),
])
def test_bad_name_addr(header, words):
    data = request().replace(b"To: <sip:bob@example.com>", header.encode())
    e = refusal(data)
    assert words in e.reason and "To" in e.reason, e.reason


def test_contact_and_routes_are_checked_at_parse_time():
    for h in ("Contact: <sip:a@b>;;", "Route: <sip:p@q;lr", "Record-Route: <sip:p@q>,,<sip:r@s>", "Contact: *, <sip:a@b>"):
        e = refusal(request(headers=h + "\r\n"))
        assert h.split(":")[0] in e.reason


def test_contact_star_and_lists():
    m = parse_datagram(request("REGISTER", headers="Contact: *\r\nExpires: 0\r\n"))
    assert m.contacts == [] and m.contact_star and m.expires == 0
    m = parse_datagram(request(headers='Contact: "A, B" <sip:a@h>;q=0.5, <sip:b@h>\r\nContact: sip:c@h;expires=60\r\n'))
    assert [(c.display, str(c.uri), c.params) for c in m.contacts] == [
        ("A, B", "sip:a@h", {"q": "0.5"}), (None, "sip:b@h", {}), (None, "sip:c@h", {"expires": "60"}),
    ]


@pytest.mark.parametrize("name", ["To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Type", "Content-Length"])
def test_single_valued_headers_appear_once(name):
    line = {"To": "To: <sip:x@y>", "From": "From: <sip:x@y>;tag=2", "Call-ID": "Call-ID: other",
            "CSeq": "CSeq: 2 INVITE", "Max-Forwards": "Max-Forwards: 3", "Content-Type": "Content-Type: text/plain",
            "Content-Length": "Content-Length: 0"}[name]
    e = refusal(request(headers=f"{line}\r\n{line}\r\n"))
    assert name in e.reason and ("where one is allowed" in e.reason or "cannot be delimited" in e.reason)


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_mandatory_headers(missing):
    lines = request().split(b"\r\n")
    data = b"\r\n".join(ln for ln in lines if not ln.startswith(missing.encode() + b":"))
    e = refusal(data)
    assert f"missing {missing} header" in e.reason and isinstance(e.message, Request)


@pytest.mark.parametrize("call_id", ["a b", "a,b", "é@x", "a;b"])
def test_bad_call_id(call_id):
    assert "Call-ID" in refusal(request().replace(b"c1@192.0.2.1", call_id.encode())).reason


@pytest.mark.parametrize("ctype", ["sdp", "application/", "/sdp", "application/sdp;", "a/b c"])
def test_bad_content_type(ctype):
    assert "Content-Type" in refusal(request(headers=f"Content-Type: {ctype}\r\n")).reason


@pytest.mark.parametrize("line,words", [
    ("Bad Name: x", "bad header name"),
    ("NoColonHere", "without ':'"),
    (": novalue", "bad header name"),
    ("Na<me: x", "bad header name"),
])
def test_bad_header_lines(line, words):
    e = refusal(request(headers=line + "\r\n"))
    assert words in e.reason and isinstance(e.message, Request)


def test_header_section_starting_with_a_fold():
    data = request().replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n x\r\nVia", 1)
    assert "continuation" in refusal(data).reason


@pytest.mark.parametrize("junk", [b"\x00", b"\x07", b"\x1b", b"\x7f", b"\r", b"\x0b"])
def test_control_characters_in_a_header_value(junk):
    e = refusal(request(headers="User-Agent: a" + junk.decode("latin-1") + "b\r\n"))
    assert ("control character" in e.reason or "bare CR" in e.reason)


def test_control_characters_are_legal_as_quoted_pairs():
    m = parse_datagram(request().replace(b'"Alice"', b'"Al\\\x00i\\\x07ce"'))
    assert m.from_.display == "Al\x00i\x07ce"


def test_nul_in_the_body_is_fine():
    assert parse_datagram(request(body=b"\x00\x01\xff")).body == b"\x00\x01\xff"


def test_non_utf8_header_octets_round_trip():
    m = parse_datagram(request(headers="Subject: cafX\r\n").replace(b"cafX", b"caf\xe9"))
    assert m.get("Subject") == "caf\udce9"  # surrogateescape: the octet is kept
    assert b"Subject: caf\xe9\r\n" in m.to_bytes()


@pytest.mark.parametrize("line,status,words", [
    ("SIP/2.0 099 Low", 400, "bad status code"),
    ("SIP/2.0 700 High", 400, "bad status code"),
    ("SIP/2.0 20 OK", 400, "bad status code"),
    ("SIP/2.0 2000 OK", 400, "bad status code"),
    ("SIP/2.0 abc OK", 400, "bad status code"),
    ("SIP/2.0", 400, "malformed status line"),
    ("SIP/X 200 OK", 400, "malformed status line"),
])
def test_bad_status_lines_are_dropped(line, status, words):
    e = refusal(response().replace(b"SIP/2.0 200 OK", line.encode()))
    assert words in e.reason and e.status_hint == status and e.message is None


def test_status_line_variants():
    assert parse_datagram(response().replace(b"200 OK", b"200")).reason == ""
    assert parse_datagram(response().replace(b"200 OK", b"200 OK  with  spaces")).reason == "OK  with  spaces"
    e = refusal(response().replace(b"SIP/2.0 200", b"SIP/3.0 200"))
    assert e.status_hint == 505 and isinstance(e.message, Response)
    assert parse_datagram(response().replace(b"SIP/2.0 200", b"sip/2.0 200")).status == 200


@pytest.mark.parametrize("line,words,answerable", [
    ("INVITE sip:bob@example.com SIP/3.0", "unsupported SIP version", True),
    ("INVITE sip:bob@example.com HTTP/1.1", "not a SIP request line", False),
    ("INVITE sip:bob@example.com", "malformed request line", False),
    ("INVITE", "malformed request line", False),
    ("INV<ITE sip:bob@example.com SIP/2.0", "not a token", True),
    ("INVITE\tsip:bob@example.com SIP/2.0", "malformed request line", False),
    ("", "not a SIP request line", False),  # (the leading CRLF is skipped: Via is read as the start line)
])
def test_bad_request_lines(line, words, answerable):
    e = refusal(request().replace(b"INVITE sip:bob@example.com SIP/2.0", line.encode(), 1))
    assert words in e.reason and isinstance(e.message, Request) is answerable, e.reason
    if "version" in words:
        assert e.status_hint == 505


@pytest.mark.parametrize("data", [b"", b"\r\n", b"\r\n\r\n", b"\x00" * 10, b"hello world", bytes(range(256)),
                                  b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"SIP/2.0 200 OK"])
def test_garbage_is_refused_without_a_message(data):
    e = refusal(data)
    assert e.message is None or isinstance(e.message, Response)


def test_oversized_datagram_is_513_with_a_message():
    big = request(body=b"x" * 3000)
    e = refusal(big, max_size=2000)
    assert e.status_hint == 513 and "exceeds the limit of 2000" in e.reason
    assert isinstance(e.message, Request) and e.message.call_id == "c1@192.0.2.1"
    assert refusal(b"x" * 5000, max_size=2000).message is None
    assert parse_datagram(big, max_size=len(big)).body == b"x" * 3000


def test_default_limit_accepts_a_long_message():
    long_value = "a" * 60000
    m = parse_datagram(request(headers=f"X-Long: {long_value}\r\n"))
    assert len(m.get("X-Long")) == 60000
    assert refusal(request(headers=f"X-Long: {long_value}a{long_value}\r\n")).status_hint == 513
    assert DEFAULT_MAX_SIZE == 65535


def test_pathological_inputs_are_linear():
    # each of these would be quadratic (or worse) with a naive unfolding or a backtracking
    # pattern; pytest-timeout fails the test if one hangs
    n = 30000
    cases = [
        request(headers="X-Fold: a" + "\r\n b" * n + "\r\n"),
        request(headers="Contact: <sip:a@b>" + ";p" * n + "\r\n"),
        request(headers="Contact: " + '"' + "a" * (n * 2) + "\r\n"),
        request(headers="Contact: " + "<sip:a@b>," * n + "\r\n"),
        request(headers="Contact: " + ", " * n + "\r\n"),
        request(uri="sip:" + "a" * (n * 2) + "@"),
        request(uri="sip:" + "a." * n + "-"),
        request(uri="sip:a@b:" + "0" * n + "1;x"),
        request().replace(b"SIP/2.0/UDP", b"SIP/2.0/UDP " + b" " * n, 1),
        request(headers="To: " + " " * n + "x\r\n"),
        request(headers="Route: " + "<" * n + "\r\n"),
        request(headers="Via: SIP/2.0/UDP h" + ";a=b" * n + ";\r\n"),
    ]
    for data in cases:
        try:
            parse_datagram(data, max_size=10**7)
        except RemoteProtocolError:
            pass


def test_error_message_keeps_what_parsed():
    e = refusal(request(body=SDP, headers="Content-Type: application/sdp\r\n").replace(b"Max-Forwards: 70", b"Max-Forwards: 300"))
    assert e.message.body == SDP and e.message.get("Max-Forwards") == "300"
    assert e.message.call_id == "c1@192.0.2.1"


def test_parse_head_alone():
    m = parse_head(request().split(b"\r\n\r\n")[0])
    assert m.method == "INVITE" and m.body == b""
    with pytest.raises(RemoteProtocolError) as ei:
        parse_head(b"INVITE <sip:a@b> SIP/2.0\r\nVia: x")
    assert isinstance(ei.value.message, Request)


# --- streams ------------------------------------------------------------------------------
PIPELINE = [
    request(body=SDP, headers="Content-Type: application/sdp\r\n"),
    request("OPTIONS"),
    response("180 Ringing"),
    request("MESSAGE", body=b"hi\r\n\r\nthere", headers="Content-Type: text/plain\r\n"),
]
STREAM = b"".join(PIPELINE)


def _summary(items):
    return [(type(i).__name__, getattr(i, "method", getattr(i, "status", None)), getattr(i, "body", None))
            for i in items]


def test_stream_pipelined_messages_in_one_read():
    sp = StreamParser()
    items = sp.feed(STREAM)
    assert _summary(items) == [("Request", "INVITE", SDP), ("Request", "OPTIONS", b""),
                               ("Response", 180, b""), ("Request", "MESSAGE", b"hi\r\n\r\nthere")]
    assert sp.pings == 0 and sp.failed is None


def test_stream_split_at_every_byte_boundary():
    whole = _summary(StreamParser().feed(STREAM))
    for cut in range(1, len(STREAM)):
        sp = StreamParser()
        items = sp.feed(STREAM[:cut]) + sp.feed(STREAM[cut:])
        assert _summary(items) == whole, cut


def test_stream_one_byte_at_a_time_and_random_chunks():
    whole = _summary(StreamParser().feed(STREAM))
    sp = StreamParser()
    items = []
    for i in range(len(STREAM)):
        items += sp.feed(STREAM[i : i + 1])
    assert _summary(items) == whole
    rnd = random.Random(4475)
    for _ in range(50):
        sp, items, pos = StreamParser(), [], 0
        while pos < len(STREAM):
            step = rnd.randint(1, 300)
            items += sp.feed(STREAM[pos : pos + step])
            pos += step
        assert _summary(items) == whole


def test_stream_keepalives():
    sp = StreamParser()
    assert sp.feed(b"\r\n\r\n") == [] and sp.pings == 1  # RFC 5626 §3.5.1 ping
    assert sp.feed(b"\r\n") == [] and sp.pings == 1
    assert sp.feed(b"\r\n") == [] and sp.pings == 2  # a ping split over two reads
    assert sp.feed(b"\r") == [] and sp.feed(b"\n\r\n") == [] and sp.pings == 3
    items = sp.feed(b"\r\n" + PIPELINE[1] + b"\r\n\r\n" + PIPELINE[2])
    assert _summary(items) == [("Request", "OPTIONS", b""), ("Response", 180, b"")] and sp.pings == 4


def test_stream_crlf_inside_a_body_is_not_a_ping():
    sp = StreamParser()
    body = b"\r\n\r\n\r\n\r\n"
    items = sp.feed(request("MESSAGE", body=body, headers="Content-Type: text/plain\r\n"))
    assert items[0].body == body and sp.pings == 0


def test_stream_missing_content_length():
    sp = StreamParser()
    items = sp.feed(request("OPTIONS", length=-1) + PIPELINE[1])
    assert isinstance(items[0], RemoteProtocolError) and "missing Content-Length" in items[0].reason
    assert isinstance(items[0].message, Request) and items[1].method == "OPTIONS"
    lenient = StreamParser(require_content_length=False)
    assert lenient.feed(request("OPTIONS", length=-1))[0].method == "OPTIONS"


def test_stream_invalid_message_does_not_break_the_stream():
    bad = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 999")
    sp = StreamParser()
    items = sp.feed(bad + PIPELINE[1])
    assert isinstance(items[0], RemoteProtocolError) and "Max-Forwards" in items[0].reason
    assert items[1].method == "OPTIONS" and sp.failed is None


def test_stream_oversized():
    sp = StreamParser(max_size=1000)
    with pytest.raises(RemoteProtocolError) as ei:
        sp.feed(request(body=b"x" * 2000))
    assert ei.value.status_hint == 513 and isinstance(ei.value.message, Request)
    sp = StreamParser(max_size=1000)
    assert sp.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 900) == []
    with pytest.raises(RemoteProtocolError) as ei:
        sp.feed(b"y" * 200)
    assert ei.value.status_hint == 513 and ei.value.message is None


def test_stream_garbage_fails_on_its_first_line():
    sp = StreamParser()
    with pytest.raises(RemoteProtocolError, match="not a SIP start line"):
        sp.feed(b"GET / HTTP/1.1\r\nHost")
    with pytest.raises(RemoteProtocolError, match="already failed"):
        sp.feed(PIPELINE[1])
    with pytest.raises(RemoteProtocolError, match="bare CR"):
        StreamParser().feed(b"\r\r\n")


def test_stream_messages_before_a_failure_are_delivered():
    sp = StreamParser()
    items = sp.feed(PIPELINE[1] + b"\x16\x03\x01 binary\r\n\r\n")
    assert _summary(items) == [("Request", "OPTIONS", b"")]
    assert sp.failed is not None
    with pytest.raises(RemoteProtocolError) as ei:
        sp.feed(b"")
    assert ei.value is sp.failed
    with pytest.raises(RemoteProtocolError, match="already failed"):
        sp.feed(b"")


def test_stream_bad_content_length_is_fatal_but_answerable():
    sp = StreamParser()
    with pytest.raises(RemoteProtocolError) as ei:
        sp.feed(request(length=-1, headers="Content-Length: -5\r\n"))
    assert isinstance(ei.value.message, Request) and ei.value.status_hint == 400


def test_stream_torture_corpus_as_one_connection():
    # every valid RFC 4475 request with a Content-Length, back to back on one connection
    names = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "semiuri", "transports",
             "mpart01", "unreason", "noreason"]
    data = b"".join(TORTURE[n] for n in names)
    items = StreamParser().feed(data)
    assert [i.call_id for i in items] == [parse_datagram(TORTURE[n]).call_id for n in names]


# --- nothing but RemoteProtocolError escapes (fuzz) --------------------------------------
def touch_everything(msg) -> None:
    """Every view, every lazily built object, and serialisation."""
    msg.call_id, msg.cseq.seq, msg.cseq.method, str(msg.cseq)
    for v in msg.vias:
        str(v), v.branch, v.host_bare, v.port, v.transport
    msg.top_via
    for na in (msg.from_, msg.to, *msg.contacts, *msg.routes, *msg.record_routes):
        str(na), na.tag, na.display
        u = na.uri
        str(u), u.user_unescaped, u.host_bare, u.transport, u.is_sip, u.copy()
    msg.contact_star, msg.max_forwards, msg.content_type
    msg.get("Subject"), msg.get_all("Supported"), msg.get_all("Via")
    if isinstance(msg, Request):
        str(msg.uri), msg.uri.user_unescaped, msg.uri.host_bare
    msg.to_bytes()


def _check_datagram(data: bytes) -> None:
    try:
        msg = parse_datagram(data)
    except RemoteProtocolError as e:
        if e.message is not None:  # a half-parsed message: views may refuse, never crash
            for view in ("call_id", "cseq", "vias", "from_", "to", "contacts", "routes", "max_forwards",
                         "content_type", "expires"):
                try:
                    getattr(e.message, view)
                except RemoteProtocolError:
                    pass
        return
    # a parsed message's views never raise (the parser checked them)
    touch_everything(msg)
    try:
        msg.expires  # lazy: RFC 4475 §3.1.2.4 lets a bad Expires alone pass
    except RemoteProtocolError:
        pass
    again = parse_datagram(msg.to_bytes())  # what we would send on parses again, unchanged
    assert _no_length(again.headers) == _no_length(msg.headers) and again.body == msg.body


def _no_length(headers):
    return [h for h in headers if h[0] != "Content-Length"]


def _check_stream(data: bytes, cuts: list[int]) -> None:
    sp = StreamParser(max_size=4096)
    pos = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        try:
            items = sp.feed(data[pos:cut])
        except RemoteProtocolError:
            return
        pos = cut
        for item in items:
            if not isinstance(item, RemoteProtocolError):
                touch_everything(item)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _check_datagram(data)
    _check_stream(data, [len(data) // 2])


_SIPISH = st.sampled_from([b"\r\n", b" ", b":", b";", b",", b"<", b">", b'"', b"\\", b"%", b"@", b"=", b"?",
                           b"\t", b"\x00", b"\xff", b"\xc3\xa9", b"\r\n ", b"sip:", b"SIP/2.0", b"[", b"]",
                           b"\r", b"\n", b"0", b"-1", b"99999999999"])


@st.composite
def mutated_torture(draw):
    data = bytearray(TORTURE[draw(st.sampled_from(sorted(TORTURE)))])
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 3))
        if op == 0:  # insert a SIP-significant token
            data[pos:pos] = draw(_SIPISH)
        elif op == 1:  # delete a span
            del data[pos : pos + draw(st.integers(1, 20))]
        elif op == 2 and pos < len(data):  # flip a byte
            data[pos] = draw(st.integers(0, 255))
        else:  # duplicate a span (repeated headers, parameters...)
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 60))]
    return bytes(data)


@FUZZ
@given(mutated_torture(), st.lists(st.integers(0, 5000), max_size=4))
def test_fuzz_mutated_torture_messages(data, cuts):
    _check_datagram(data)
    _check_stream(data, cuts)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(sorted(TORTURE)), min_size=1, max_size=4), st.lists(st.integers(0, 9000), max_size=5))
def test_fuzz_torture_pipelines_on_a_stream(names, cuts):
    _check_stream(b"".join(TORTURE[n] for n in names), cuts)


@pytest.mark.parametrize(
    "params, expected",
    [
        (";branch=z9hG4bKfast;rport", {"branch": "z9hG4bKfast", "rport": None}),
        (";branch=z9hG4bKfast", {"branch": "z9hG4bKfast"}),
        (";branch=z9hG4bKfast;rport=5060", {"branch": "z9hG4bKfast", "rport": "5060"}),
        (";Branch=z9hG4bKfast;RPORT", {"branch": "z9hG4bKfast", "rport": None}),
    ],
)
def test_via_parameters_once_the_sent_by_is_known(params, expected):
    # the second message takes the memoised-prefix path (and its one-pattern common case)
    for _ in range(2):
        msg = parse_datagram(request().replace(b";branch=z9hG4bKabc;rport", params.encode()))
        assert msg.top_via.params == expected
        assert (msg.top_via.host, msg.top_via.port, msg.top_via.transport) == ("192.0.2.1", 5060, "UDP")


@pytest.mark.parametrize("params", [";branch=a;branch=b", ";branch=a;rport;rport", ";branch=a;rport=x", ";branch"])
def test_bad_via_parameters_still_refused_once_the_sent_by_is_known(params):
    parse_datagram(request())  # the sent-by is now memoised
    with pytest.raises(RemoteProtocolError) as e:
        parse_datagram(request().replace(b";branch=z9hG4bKabc;rport", params.encode()))
    assert e.value.status_hint == 400 and e.value.message is not None
