"""Messages (RFC 3261 §7): header access, typed views, serialisation and responses; the
typed headers of node.sip.headers; and the parse → serialise → parse round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.sip.errors import LocalProtocolError, RemoteProtocolError
from node.sip.headers import COMPACT, LIST_HEADERS, CSeq, Via, canonical_name
from node.sip.message import REASONS, Request, Response, make_response
from node.sip.parser import parse_datagram
from node.sip.uri import NameAddr, Uri, quote_string


def invite(**kw) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport"),
        ("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKc"),
        ("Max-Forwards", "70"),
        ("From", '"Alice" <sip:alice@example.com>;tag=a1'),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "call-1@192.0.2.1"),
        ("CSeq", "7 INVITE"),
        ("Contact", "<sip:alice@192.0.2.1:5060>;expires=30"),
        ("Record-Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"),
        ("Timestamp", "54"),
        ("X-Custom", "Keep Me"),
    ]
    return Request("INVITE", kw.get("uri", "sip:bob@example.com"), kw.get("headers", headers), kw.get("body", b""))


# --- header access -----------------------------------------------------------------------
def test_get_any_spelling():
    m = invite()
    assert m.get("call-id") == m.get("i") == m.get("CALL-ID") == "call-1@192.0.2.1"
    assert m.get("x-custom") == m.get("X-CUSTOM") == "Keep Me"  # unknown names: case-insensitive too
    assert m.get("Subject") is None and m.get("Subject", "d") == "d"
    assert "Contact" in m and "m" in m and "Subject" not in m


def test_get_all_splits_list_headers_only():
    m = invite()
    assert m.get_all("v") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport",
                              "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKc"]
    assert m.get_all("Record-Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    m.add("Subject", "a, b")
    assert m.get_all("Subject") == ["a, b"]  # not a list header


def test_set_add_remove():
    m = invite()
    m.set("via", "SIP/2.0/UDP new;branch=z9hG4bKn")
    assert m.get_all("Via") == ["SIP/2.0/UDP new;branch=z9hG4bKn"]
    assert [n for n, _ in m.headers].index("Via") == 0  # in the first one's place
    m.add("Via", "SIP/2.0/UDP top;branch=z9hG4bKt", first=True)
    assert m.top_via.host == "top" and len(m.vias) == 2
    m.add("x-CUSTOM", "second")
    assert m.get_all("X-Custom") == ["Keep Me", "second"]
    m.set("X-CUSTOM", "only")
    assert m.get_all("x-custom") == ["only"]
    m.remove("x-custom")
    assert m.get("X-Custom") is None
    m.add("Subject", "hello")
    assert m.headers[-1] == ("Subject", "hello")
    with pytest.raises(RemoteProtocolError):
        m.add("Bad Name", "x")


def test_mutation_drops_cached_views():
    m = invite()
    assert m.max_forwards == 70 and m.to.tag is None
    m.set("Max-Forwards", "69")
    m.set("To", "<sip:bob@example.com>;tag=b9")
    assert m.max_forwards == 69 and m.to.tag == "b9"
    m.remove("Max-Forwards")
    assert m.max_forwards is None


def test_views_of_a_built_message():
    m = invite()
    assert m.call_id == "call-1@192.0.2.1" and (m.cseq.seq, m.cseq.method) == (7, "INVITE")
    assert [v.branch for v in m.vias] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]
    assert m.from_.display == "Alice" and m.from_.tag == "a1" and m.to.tag is None
    assert [str(c.uri) for c in m.contacts] == ["sip:alice@192.0.2.1:5060"] and m.contacts[0].params == {"expires": "30"}
    assert [str(r.uri) for r in m.record_routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert m.routes == [] and m.content_type is None and m.expires is None and not m.contact_star
    assert m.uri.user == "bob"


@pytest.mark.parametrize("name,value,view", [
    ("Call-ID", "", "call_id"), ("CSeq", "x INVITE", "cseq"), ("Via", "nonsense", "vias"),
    ("From", '"open <sip:a@b>', "from_"), ("Max-Forwards", "-1", "max_forwards"),
    ("Contact", "<sip:a@b>;;", "contacts"), ("Content-Type", "text", "content_type"),
])
def test_views_of_a_built_message_refuse_bad_values(name, value, view):
    m = invite()
    m.set(name, value)
    with pytest.raises(RemoteProtocolError):
        getattr(m, view)


def test_missing_and_duplicate_headers_in_views():
    m = invite()
    m.remove("Call-ID")
    with pytest.raises(RemoteProtocolError, match="missing Call-ID"):
        m.call_id
    m.add("To", "<sip:x@y>")
    with pytest.raises(RemoteProtocolError, match="2 To headers"):
        m.to


@pytest.mark.parametrize("value,result", [("0", 0), ("3600", 3600), ("4294967295", 2**32 - 1)])
def test_expires(value, result):
    m = invite()
    m.set("Expires", value)
    assert m.expires == result


@pytest.mark.parametrize("value", ["-1", "x", "4294967296", "9" * 5000, "²"])
def test_bad_expires_is_a_protocol_error(value):
    m = invite()
    m.set("Expires", value)
    with pytest.raises(RemoteProtocolError, match="Expires"):
        m.expires


def test_contact_star():
    m = invite()
    m.set("Contact", "*")
    assert m.contact_star and m.contacts == []


def test_request_uri_follows_uri_text():
    m = invite()
    assert m.uri.user == "bob"
    m.uri = Uri.parse("sip:carol@example.com")
    assert m.uri_text == "sip:carol@example.com" and m.uri.user == "carol"
    m.uri_text = "sip:dave@example.com"  # a direct change is noticed too
    assert m.uri.user == "dave"
    m.uri_text = "not a uri"
    with pytest.raises(RemoteProtocolError):
        m.uri


# --- serialisation -----------------------------------------------------------------------
def test_to_bytes_writes_the_right_content_length():
    m = invite(body=b"abc")
    m.add("Content-Length", "999")
    m.add("l", "5")
    data = m.to_bytes()
    assert data.count(b"Content-Length") == 1 and data.endswith(b"Content-Length: 3\r\n\r\nabc")
    assert data.startswith(b"INVITE sip:bob@example.com SIP/2.0\r\nVia: ")
    assert bytes(m) == data
    assert parse_datagram(data).body == b"abc"
    assert Response(200).to_bytes() == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("where", ["value", "uri", "reason", "name", "bare-cr", "bare-lf", "last"])
def test_to_bytes_refuses_header_injection(where):
    if where == "value":
        m = invite()
        m.add("Subject", "hi\r\nVia: SIP/2.0/UDP evil")
    elif where in ("name", "bare-cr", "bare-lf", "last"):
        m = invite()
        if where == "name":
            m.headers.append(("X-A\r\nVia", "x"))  # add() would refuse the name itself
        elif where == "last":
            m.headers.append(("Subject", "x\n"))
        else:
            m.headers.insert(3, ("Subject", "a\rb" if where == "bare-cr" else "a\nb"))
    elif where == "uri":
        m = invite(uri="sip:a@b SIP/2.0\r\nX: y")
    else:
        m = Response(200, "OK\nX: y")
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        m.to_bytes()


def test_response_defaults():
    assert Response(486).reason == "Busy Here" and Response(799).reason == "Unknown"
    assert Response(200, "").reason == ""
    assert REASONS[420] == "Bad Extension" and REASONS[513] == "Message Too Large"
    assert repr(Response(180)) == "<Response 180 Ringing>" and repr(invite()) == "<Request INVITE sip:bob@example.com>"


# --- make_response -----------------------------------------------------------------------
def test_make_response_copies_what_rfc3261_says():
    req = invite()
    resp = make_response(req, 180, to_tag="t1", headers=[("Contact", "<sip:bob@h>")])
    names = [n for n, _ in resp.headers]
    assert names == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Record-Route", "Contact"]
    assert resp.to.tag == "t1" and resp.get_all("Via") == req.get_all("Via")
    assert resp.reason == "Ringing" and resp.cseq.method == "INVITE"
    trying = make_response(req, 100, to_tag="t1")
    assert trying.to.tag is None and trying.get("Timestamp") == "54" and "Record-Route" not in trying
    final = make_response(req, 486, "Busy", to_tag="t1")
    assert final.reason == "Busy" and "Record-Route" not in final and final.to.tag == "t1"
    assert make_response(req, 200).to.tag is None  # no to_tag given: To copied as is


def test_make_response_keeps_an_existing_to_tag():
    req = invite()
    req.set("To", "<sip:bob@example.com>;tag=old")
    assert make_response(req, 200, to_tag="new").to.tag == "old"


def test_make_response_to_a_parsed_request_round_trips():
    req = parse_datagram(invite(body=b"v=0\r\n").to_bytes())
    resp = parse_datagram(make_response(req, 200, to_tag="x", body=b"answer").to_bytes())
    assert isinstance(resp, Response) and resp.status == 200 and resp.body == b"answer"
    assert resp.call_id == req.call_id and resp.from_.tag == "a1" and resp.to.tag == "x"


# --- node.sip.headers --------------------------------------------------------------------
def test_canonical_names():
    assert canonical_name("VIA") == canonical_name("v") == canonical_name("V") == "Via"
    assert canonical_name("www-authenticate") == "WWW-Authenticate" and canonical_name("cseq") == "CSeq"
    assert canonical_name("X-Odd-Case") == "X-Odd-Case"
    assert all(canonical_name(c) == n for c, n in COMPACT.items())
    for bad in ("", "a b", "a:b", "é", "a\x00"):
        with pytest.raises(RemoteProtocolError):
            canonical_name(bad)
    assert "Via" in LIST_HEADERS and "To" not in LIST_HEADERS


def test_via_parse_and_str():
    v = Via.parse("SIP/2.0/udp [2001:db8::9]:5062;branch=z9hG4bKx;received=192.0.2.4;rport=1234")
    assert (v.transport, v.host, v.host_bare, v.port, v.branch) == ("UDP", "[2001:db8::9]", "2001:db8::9", 5062, "z9hG4bKx")
    assert v.params == {"branch": "z9hG4bKx", "received": "192.0.2.4", "rport": "1234"}
    assert str(v) == "SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bKx;received=192.0.2.4;rport=1234"
    assert Via.parse(str(v)).params == v.params
    assert str(Via("TCP", "h", None, {"rport": None})) == "SIP/2.0/TCP h;rport"
    old = Via.parse("SIP / 3.0 / TLS h")
    assert old.version == "3.0" and str(old) == "SIP/3.0/TLS h"


def test_via_objects_are_not_shared_between_messages():
    data = invite().to_bytes()
    one, two = parse_datagram(data), parse_datagram(data)  # the second uses the memo
    one.top_via.params["received"] = "198.51.100.1"
    assert "received" not in two.top_via.params
    assert "received" not in parse_datagram(data).top_via.params


def test_cseq():
    c = CSeq.parse("  42\tACK ")
    assert (c.seq, c.method, str(c)) == (42, "ACK", "42 ACK")
    assert CSeq.parse("2147483647 FOO").seq == 2**31 - 1
    for bad in ("2147483648 INVITE", "1", "a INVITE", "1 IN VITE", "99999999999999999999999 INVITE"):
        with pytest.raises(RemoteProtocolError):
            CSeq.parse(bad)


# --- round trip (hypothesis) -------------------------------------------------------------
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=10)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_hostname = st.lists(_label, min_size=1, max_size=3).map(".".join)
_host = st.one_of(_hostname, st.sampled_from(["192.0.2.1", "[::1]", "[2001:db8::2]"]))
_port = st.one_of(st.none(), st.integers(1, 65535))
_hostport = st.tuples(_host, _port).map(lambda t: t[0] if t[1] is None else f"{t[0]}:{t[1]}")
_uri = st.builds(
    lambda scheme, user, hp, params: f"{scheme}:{user + '@' if user else ''}{hp}{params}",
    st.sampled_from(["sip", "sips"]),
    st.one_of(st.none(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$", min_size=1, max_size=10)),
    _hostport,
    st.lists(st.tuples(_label, st.one_of(st.none(), _label)), max_size=2, unique_by=lambda t: t[0]).map(
        lambda ps: "".join(f";{k}" if v is None else f";{k}={v}" for k, v in ps)),
)
_display = st.one_of(
    st.none(),
    st.lists(_token, min_size=1, max_size=3).map(" ".join),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), min_size=1, max_size=12)
    .map(quote_string),  # control characters become quoted-pairs
)
_hparams = st.lists(st.tuples(_token.map(str.lower), st.one_of(st.none(), _token)), max_size=2, unique_by=lambda t: t[0])


def _params(ps: list) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in ps)


_name_addr = st.builds(lambda d, u, p: f"{d + ' ' if d else ''}<{u}>{_params(p)}", _display, _uri,
                       _hparams.filter(lambda ps: all(k not in ("expires", "q", "tag") for k, _ in ps)))
_via = st.builds(lambda t, hp, b, rport: f"SIP/2.0/{t} {hp};branch=z9hG4bK{b}{';rport' if rport else ''}",
                 st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]), _hostport, _token, st.booleans())
_free_text = st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=30).map(
    lambda s: s.strip(" \t"))
_ext_name = _token.map(lambda s: "X-" + s)
_method = st.one_of(st.sampled_from(["INVITE", "OPTIONS", "BYE", "REGISTER", "MESSAGE", "INFO"]), _token.map(str.upper))


@st.composite
def messages(draw):
    is_request = draw(st.booleans())
    method = draw(_method)
    vias = draw(st.lists(_via, min_size=1, max_size=3))
    headers = []
    if draw(st.booleans()) and len(vias) > 1:
        headers.append(("Via", ", ".join(vias)))
    else:
        headers += [("Via", v) for v in vias]
    headers += [
        ("From", draw(_name_addr) + f";tag={draw(_token)}"),
        ("To", draw(_name_addr)),
        ("Call-ID", draw(_token) + draw(st.sampled_from(["", "@host.example.com"]))),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    if draw(st.booleans()):
        headers.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("Contact", ", ".join(draw(st.lists(_name_addr, min_size=1, max_size=2)))))
    for name in ("Route", "Record-Route"):
        if draw(st.booleans()):
            headers.append((name, ", ".join(draw(st.lists(_name_addr, min_size=1, max_size=2)))))
    for _ in range(draw(st.integers(0, 3))):
        headers.append((draw(_ext_name), draw(_free_text)))
    body = draw(st.binary(max_size=200))
    if body:
        headers.append(("Content-Type", draw(st.sampled_from(["application/sdp", "text/plain;charset=utf-8"]))))
    order = draw(st.permutations(range(len(headers))))
    headers = [headers[i] for i in order]
    if is_request:
        return Request(method, draw(_uri), headers, body)
    return Response(draw(st.integers(100, 699)), draw(_free_text), headers, body)


def _values(m):
    start = (m.method, m.uri_text) if isinstance(m, Request) else (m.status, m.reason)
    views = (m.call_id, m.cseq.seq, m.cseq.method, [str(v) for v in m.vias], str(m.from_), str(m.to),
             [str(c) for c in m.contacts], [str(r) for r in m.routes], [str(r) for r in m.record_routes],
             m.max_forwards, m.content_type)
    return start, [h for h in m.headers if h[0] != "Content-Length"], m.body, views


@settings(max_examples=150, deadline=None)
@given(messages())
def test_round_trip_built_message(msg):
    data = msg.to_bytes()
    parsed = parse_datagram(data)
    assert _values(parsed) == _values(msg)
    assert parsed.get("Content-Length") == str(len(msg.body))
    # parse → to_bytes → parse is a fixed point
    assert parse_datagram(parsed.to_bytes()).to_bytes() == parsed.to_bytes() == data


@settings(max_examples=50, deadline=None)
@given(messages(), st.integers(1, 2000))
def test_round_trip_on_a_stream(msg, cut):
    from node.sip.parser import StreamParser

    data = msg.to_bytes() * 2
    cut %= len(data)
    sp = StreamParser()
    items = sp.feed(data[:cut]) + sp.feed(data[cut:])
    assert len(items) == 2 and all(_values(i) == _values(msg) for i in items)


def test_name_addr_values_survive_the_round_trip():
    na = NameAddr(Uri.parse("sip:a@b"), 'He said "hi"\\', {"tag": "x"})
    req = invite()
    req.set("From", str(na))
    assert parse_datagram(req.to_bytes()).from_.display == 'He said "hi"\\'


# --- the single-Contact, known-name and make_response shortcuts ------------------------------
@pytest.mark.parametrize("value", [
    "<sip:a@192.0.2.1:5060>", "<sip:a@b>;expires=60;q=0.5", '"A" <sip:a@b>', "sip:a@b;expires=5", "*",
    " <sip:a@b>", "<sip:a@b> ", "", "<sip:a@b>, <sip:c@d>", "<sip:a@b>;expires=x", "<sip:a@[::g]>", "bad name <sip:a@b>",
])
def test_one_contact_value_parses_as_the_list_parser_does(value):
    from node.sip.message import parse_contacts, parse_name_addrs

    def outcome(f):
        try:
            return [str(c) for c in f()]
        except RemoteProtocolError as e:
            return e.reason

    expected = [] if value == "*" else outcome(lambda: parse_name_addrs([value], "Contact"))
    assert outcome(lambda: parse_contacts([value])) == expected


def test_get_all_by_known_and_unknown_names():
    req = Request("REGISTER", "sip:x", [("Require", "a, b"), ("X-Odd", "1"), ("x-odd", "2"), ("Require", "c")])
    assert req.get_all("Require") == req.get_all("require") == ["a", "b", "c"]
    assert req.get_all("X-ODD") == ["1", "2"] and req.get_all("Supported") == []


@pytest.mark.parametrize("status, copied", [
    (100, ["Via", "From", "To", "Call-ID", "CSeq", "Timestamp"]),
    (180, ["Via", "Record-Route", "From", "To", "Call-ID", "CSeq"]),
    (200, ["Via", "Record-Route", "From", "To", "Call-ID", "CSeq"]),
    (401, ["Via", "From", "To", "Call-ID", "CSeq"]),
])
def test_make_response_copies_by_status_and_tags_every_to(status, copied):
    hdrs = [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Record-Route", "<sip:p;lr>"), ("From", "<sip:a@b>;tag=1"),
            ("To", "<sip:c@d>"), ("Call-ID", "x"), ("CSeq", "1 INVITE"), ("Timestamp", "5"), ("Max-Forwards", "70")]
    req = Request("INVITE", "sip:c@d", list(hdrs))
    resp = make_response(req, status, to_tag="t9", headers=[("Server", "s")])
    assert [n for n, _ in resp.headers] == [*copied, "Server"]
    assert resp.get("To") == ("<sip:c@d>" if status == 100 else "<sip:c@d>;tag=t9")
    tagged = Request("INVITE", "sip:c@d", [*hdrs[:3], ("To", "<sip:c@d>;tag=old"), *hdrs[4:]])
    assert make_response(tagged, status, to_tag="t9").get("To") == "<sip:c@d>;tag=old"
