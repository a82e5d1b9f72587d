"""RFC 4475 torture messages: for every one, what RFC 4475 asks of a receiving element.

The corpus (tests/corpus/rfc4475) is byte-exact; SHA256SUMS proves no editor touched it.

Which layer gives the final answer (the parser's share is tested here):

* §3.1.1 valid messages — parser: parse them and expose the right values.
* §3.1.2 invalid messages — parser: refuse them with the status to answer (400, 505, 501)
  and keep what parsed in ``.message`` so the endpoint can answer; or, where RFC 4475 lets
  the element be liberal, accept them without keeping the fault (lwsstart, trws, badaspec,
  baddate). Responses (scalarlg, bigcode) are never answered: the endpoint drops them.
* §3.2.1 badbranch — transaction layer: the parser only exposes the bare "z9hG4bK" branch;
  the transaction layer either refuses it (400) or falls back to RFC 2543 matching.
* §3.3 — application layer (the parser must accept, or for insuf/multi01/mcl01 refuse, and
  expose what the application needs):
  unkscm/novelsc → 416 (or 404) from the TU, via ``uri.is_sip``/``uri.scheme``;
  unksm2 → registrar 400 (To is not a SIP AOR); bext01 → 420 with Unsupported from the TU,
  via ``get_all("Require")``/``("Proxy-Require")``; invut → 415 from a UAS via
  ``content_type``; regaut01 → registrar 401 (unknown scheme); bcast → transaction layer /
  proxy drops it (second Via is a broadcast address); zeromf → 483 from a proxy or B2BUA,
  via ``max_forwards``; cparam01/cparam02/regescrt → registrar stores the right binding,
  via ``contacts[0].params`` vs ``contacts[0].uri``; sdp01 → 406 (or 400) from a UAS,
  via ``get("Accept")``; inv2543 → accepted (RFC 2543 compatibility) by every layer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.sip.errors import RemoteProtocolError
from node.sip.message import Request, Response
from node.sip.parser import StreamParser, parse_datagram

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rfc4475"


def load(name: str) -> bytes:
    return (CORPUS / f"{name}.sip").read_bytes()


def parse(name: str):
    return parse_datagram(load(name))


def refused(name: str) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as ei:
        parse(name)
    return ei.value


# --- the corpus itself -------------------------------------------------------------------
def _sums() -> dict[str, str]:
    out = {}
    for line in (CORPUS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        out[name] = digest
    return out


def test_corpus_matches_sha256sums():
    sums = _sums()
    assert len(sums) == 49
    on_disk = {p.name for p in CORPUS.glob("*.sip")}
    assert on_disk == set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == digest, name


def test_corpus_uses_crlf():
    # an editor converting line ends would break the byte-exact messages
    for p in CORPUS.glob("*.sip"):
        head = p.read_bytes().split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in head.replace(b"\r\n", b""), p.name


# every message is covered by exactly one of these lists
VALID = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri",
         "transports", "mpart01", "unreason", "noreason"]
INVALID_REFUSED = ["badinv01", "clerr", "ncl", "scalar02", "scalarlg", "quotbal", "ltgtruri", "lwsruri",
                   "escruri", "regbadct", "baddn", "badvers", "mismatch01", "mismatch02", "bigcode"]
INVALID_TOLERATED = ["lwsstart", "trws", "baddate", "badaspec"]
LAYER_ABOVE_OK = ["badbranch", "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01", "bcast",
                  "zeromf", "cparam01", "cparam02", "regescrt", "sdp01", "inv2543"]
LAYER_ABOVE_REFUSED = ["insuf", "multi01", "mcl01"]


def test_every_message_is_classified():
    names = VALID + INVALID_REFUSED + INVALID_TOLERATED + LAYER_ABOVE_OK + LAYER_ABOVE_REFUSED
    assert len(names) == len(set(names)) == 49
    assert {f"{n}.sip" for n in names} == set(_sums())


ACCEPTED = VALID + INVALID_TOLERATED + LAYER_ABOVE_OK


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_messages_expose_every_view(name):
    msg = parse(name)
    assert msg.call_id and msg.cseq.seq >= 0 and msg.vias and msg.top_via is msg.vias[0]
    msg.from_.uri
    msg.to.uri
    for c in msg.contacts:
        c.uri
    for r in msg.routes + msg.record_routes:
        r.uri
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method
        msg.uri
    # what we send on is well formed again (the liberal ones lose their fault here)
    again = parse_datagram(msg.to_bytes())
    assert _without_length(again.headers) == _without_length(msg.headers)
    assert again.body == msg.body and again.get("Content-Length") == str(len(msg.body))


def _without_length(headers):
    return [h for h in headers if h[0] != "Content-Length"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_messages_frame_on_a_stream(name):
    data = load(name)
    if name == "dblreq":
        data = data[: data.index(b"\r\n\r\n") + 4]  # its trailing junk is a datagram matter
    sp = StreamParser()
    items = sp.feed(data)
    assert len(items) == 1
    if name == "inv2543":
        # no Content-Length: fine in a datagram, a fault on a stream (RFC 3261 §18.3); its
        # body, framed as a next message, is not SIP: the stream is lost after this one
        assert isinstance(items[0], RemoteProtocolError) and "Content-Length" in items[0].reason
        assert isinstance(items[0].message, Request)
        assert sp.failed is not None and "not a SIP start line" in sp.failed.reason
        with pytest.raises(RemoteProtocolError, match="not a SIP start line"):
            sp.feed(b"")
        return
    assert sp.failed is None
    assert not isinstance(items[0], Exception)
    assert items[0].body == parse_datagram(data).body


# --- §3.1.1 valid messages ---------------------------------------------------------------
def test_wsinv_short_tortuous_invite():
    m = parse("wsinv")
    assert m.method == "INVITE"
    assert m.uri_text == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.uri.params == {"unknownparam": None}
    # folded and spaced To with a tag
    assert str(m.to.uri) == "sip:vivekg@chair-dnrc.example.com" and m.to.tag == "1918181833n"
    # quoted display with escaped backslash and quote, folded ";" and spaced "tag = "
    assert m.from_.display == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")  # "0009" folded before INVITE
    # three Via values: one folded over three lines, two in one header
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.get("Subject") == "" and m.get("s") == ""
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert [str(r.uri) for r in m.routes] == ["sip:services.example.com;lr;unknownwith=value;unknown-no-value"]
    (c,) = m.contacts
    assert c.display == 'Quoted string ""' and str(c.uri) == "sip:jdrosen@example.com"
    assert c.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.content_type == "application/sdp"
    assert len(m.body) == 150 and m.body.startswith(b"v=0\r\n") and m.body.endswith(b"a=rtpmap:31 LPC\r\n")


def test_intmeth_wide_range_of_valid_characters():
    m = parse("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq.method == method
    u = m.uri
    assert u.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert u.host == "example.com" and u.params == {} and u.headers == ""
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    # quoted-pairs may carry control characters (RFC 3261 §25.1)
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert m.body == b""


def test_esc01_valid_escaping():
    m = parse("esc01")
    assert m.uri.user == "sips%3Auser%40example.com"  # kept as received
    assert m.uri.user_unescaped == "sips:user@example.com" and m.uri.host == "example.net"
    assert m.to.uri.user_unescaped == "user"
    assert m.from_.uri.user_unescaped == "I have spaces" and m.from_.tag == "938"
    (c,) = m.contacts  # folded Contact with escaped user and parameters
    assert c.uri.user_unescaped == "caller" and c.uri.host == "host5.example.net"
    assert c.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    assert m.content_type == "application/sdp" and len(m.body) == 150  # "C:" compact form


def test_escnull_escaped_nulls():
    m = parse("escnull")
    assert m.to.uri.user_unescaped == "null-\x00-null"
    assert m.from_.uri.user_unescaped == "null-\x00-null"
    assert [c.uri.user_unescaped for c in m.contacts] == ["\x00", "\x00\x00"]
    assert m.body == b""  # "L:0"


def test_esc02_percent_that_is_not_an_escape():
    m = parse("esc02")
    # a method is a token: "%" is just a character, never unescaped
    assert m.method == "RE%47IST%45R" and m.cseq.method == "RE%47IST%45R"
    assert m.to.display == "%Z%45" and m.from_.display == "%Z%45"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"
    # "C%6Fntact" is an extension header, not Contact
    assert [str(c.uri) for c in m.contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_space_before_angle():
    m = parse("lwsdisp")
    assert m.from_.display == "caller" and str(m.from_.uri) == "sip:caller@example.com" and m.from_.tag == "323"


def test_longreq_long_values():
    m = parse("longreq")
    assert m.to.display.startswith("I have a user name of extreme") and m.to.display.endswith(" proportion")
    assert m.to.uri.port == 6000 and m.to.uri.params["unknownparam1"].startswith("verylong")
    assert m.from_.uri.user.startswith("amazinglylongcallername") and len(m.from_.tag) > 90
    assert m.call_id.startswith("longreq.one") and m.call_id.endswith("longcallid")
    hosts = [v.host for v in m.vias]  # Via in every spelling, compact and with spaces before ":"
    assert hosts == [f"sip{i}.example.com" for i in range(33, 0, -1)] + ["host.example.com"]
    assert m.vias[-1].params["received"] == "192.0.2.5" and m.vias[-1].branch.endswith("branchvalue")
    long_name = "Unknown-" + "Long" * 20 + "-Name"
    assert m.get(long_name).startswith("unknown-long") and m.get(long_name.lower()) == m.get(long_name)
    assert len(m.body) == 150 and m.content_type == "application/sdp"


def test_dblreq_extra_octets_in_a_datagram():
    m = parse("dblreq")
    assert m.method == "REGISTER" and m.body == b""  # the INVITE after Content-Length: 0 is discarded
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # "I:" compact Call-ID


def test_semiuri_semicolon_in_user_part():
    m = parse("semiuri")
    assert m.uri.user == "user;par=u%40example.net" and m.uri.host == "example.com" and m.uri.params == {}
    assert m.uri.user_unescaped == "user;par=u@example.net"
    assert m.get_all("Accept") == ["application/sdp", "application/pkcs7-mime", "multipart/mixed",
                                   "multipart/signed", "message/sip", "message/sipfrag"]


def test_transports_varied_and_unknown():
    m = parse("transports")
    assert [(v.transport, v.host) for v in m.vias] == [
        ("UDP", "t1.example.com"), ("SCTP", "t2.example.com"), ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"), ("TCP", "t5.example.com"),
    ]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_multipart_body():
    data = load("mpart01")
    m = parse_datagram(data)
    assert m.method == "MESSAGE" and m.content_type == "multipart/mixed"
    assert len(m.body) == 553 and m.body == data[data.index(b"\r\n\r\n") + 4 :]
    assert m.body.startswith(b"--7a9cbec02ceef655\r\n") and m.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert m.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert m.top_via.params["rport"] is None and m.top_via.port == 5070


def test_unreason_utf8_reason_phrase():
    m = parse("unreason")
    assert isinstance(m, Response) and m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(m.body) == 154


def test_noreason_empty_reason_phrase():
    m = parse("noreason")
    assert isinstance(m, Response) and m.status == 100 and m.reason == ""
    assert m.to.tag == "902jndnke3"


# --- §3.1.2 invalid messages -------------------------------------------------------------
# (name, status hint, words the reason must contain, whether .message is a Request to answer)
REFUSALS = [
    ("badinv01", 400, "empty element in the Via list", True),   # §3.1.2.1
    ("clerr", 400, "Content-Length 9999 is larger", True),      # §3.1.2.2 (UDP)
    ("ncl", 400, "bad Content-Length '-999'", True),            # §3.1.2.3
    ("scalar02", 400, "CSeq number 36893488147419103232", True),  # §3.1.2.4: the CSeq decides
    ("quotbal", 400, "unterminated quoted string", True),       # §3.1.2.6
    ("ltgtruri", 400, "must not be enclosed in <>", True),      # §3.1.2.7
    ("lwsruri", 400, "whitespace inside the Request-URI", True),  # §3.1.2.8
    ("escruri", 400, "inside the Request-URI", True),           # §3.1.2.11 (reject option)
    ("regbadct", 400, "must be enclosed in <>", True),          # §3.1.2.13 (reject option)
    ("baddn", 400, "must be a quoted string", True),            # §3.1.2.15
    ("badvers", 505, "unsupported SIP version 'SIP/7.0'", True),  # §3.1.2.16
    ("mismatch01", 400, "CSeq method INVITE does not match the request method OPTIONS", True),  # §3.1.2.17
    ("mismatch02", 501, "CSeq method INVITE does not match the request method NEWMETHOD", True),  # §3.1.2.18
    ("insuf", 400, "missing From, Call-ID, To", True),          # §3.3.1 (ideally 400)
    ("multi01", 400, "headers where one is allowed", True),     # §3.3.8
    ("mcl01", 400, "Content-Length headers", True),             # §3.3.9
]


@pytest.mark.parametrize("name,status,words,answerable", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_invalid_requests_are_refused_with_a_reason(name, status, words, answerable):
    e = refused(name)
    assert e.status_hint == status
    if name == "insuf":  # order of the list does not matter
        assert all(h in e.reason for h in ("From", "Call-ID", "To")) and "missing" in e.reason
    else:
        assert words in e.reason, e.reason
    assert isinstance(e.message, Request) is answerable
    if name != "badinv01":  # its Via is the broken header
        # the endpoint routes its stateless answer by the top Via (RFC 3261 §18.2.2)
        assert e.message.top_via.host


def test_refused_requests_can_still_be_answered():
    from node.sip.message import make_response

    for name, status, _, answerable in REFUSALS:
        e = refused(name)
        if name == "badinv01":
            continue  # its Via is the broken header: no route back exists
        data = make_response(e.message, status, "Bad").to_bytes()
        # the headers the peer matches on come back as it sent them (even the bad ones)
        assert data.startswith(f"SIP/2.0 {status} Bad\r\n".encode()), name
        for h in ("Via", "CSeq", "Call-ID"):
            for v in e.message.get_all(h) if h != "Via" else [e.message.get("Via")]:
                assert f"{h}: {v}\r\n".encode() in data, (name, h)


def test_scalar02_names_the_cseq_and_keeps_the_other_values():
    e = refused("scalar02")
    assert "2**31" in e.reason
    assert e.message.get("Max-Forwards") == "300" and e.message.get("Expires").startswith("1000")


def test_scalarlg_response_is_refused_and_never_answered():
    e = refused("scalarlg")  # §3.1.2.5: the receiver discards it
    assert "CSeq number 9292394834772304023312" in e.reason
    assert isinstance(e.message, Response) and e.message.status == 503


def test_bigcode_response_is_dropped():
    e = refused("bigcode")  # §3.1.2.19
    assert "4294967301" in e.reason and e.message is None


def test_badvers_505_has_a_routable_message():
    e = refused("badvers")
    assert e.status_hint == 505
    assert e.message.method == "OPTIONS" and e.message.top_via.host == "c.example.com"
    assert e.message.top_via.version == "7.0"  # the Via's own version is only a token


def test_badinv01_via_and_contact_both_broken():
    e = refused("badinv01")
    assert "Via" in e.reason
    assert e.message.get("Contact") == '"Joe" <sip:joe@example.org>;;;;'
    with pytest.raises(RemoteProtocolError, match="empty parameter"):
        e.message.contacts


def test_clerr_waits_for_more_on_a_stream():
    # §3.1.2.2: over TCP, the receiver waits for the rest of the body
    sp = StreamParser()
    assert sp.feed(load("clerr")) == []
    items = sp.feed(b"x" * (9999 - 154))
    assert len(items) == 1 and len(items[0].body) == 9999


@pytest.mark.parametrize("name", ["ncl", "mcl01"])
def test_unframable_content_length_closes_a_stream(name):
    # §3.1.2.3 / §3.3.9: the framing error is not recoverable over TCP
    sp = StreamParser()
    with pytest.raises(RemoteProtocolError, match="Content-Length") as ei:
        sp.feed(load(name))
    assert isinstance(ei.value.message, Request)  # a 400 can still go out before closing
    with pytest.raises(RemoteProtocolError, match="already failed"):
        sp.feed(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n")


# --- §3.1.2 invalid but tolerated (RFC 4475 allows the receiver to be liberal) ------------
def test_lwsstart_extra_spaces_in_request_line_are_not_repeated():
    m = parse("lwsstart")
    assert m.method == "INVITE" and m.uri_text == "sip:user@example.com" and m.version == "SIP/2.0"
    assert m.to_bytes().startswith(b"INVITE sip:user@example.com SIP/2.0\r\n")


def test_trws_trailing_spaces_in_request_line_are_not_repeated():
    m = parse("trws")
    assert m.method == "OPTIONS" and m.uri_text == "sip:remote-target@example.com"
    assert m.to_bytes().startswith(b"OPTIONS sip:remote-target@example.com SIP/2.0\r\n")


def test_badaspec_spaces_inside_brackets_are_ignored():
    m = parse("badaspec")
    assert str(m.to.uri) == "sip:t.watson@example.org" and m.to.display == "Watson, Thomas"
    assert str(m.to) == '"Watson, Thomas" <sip:t.watson@example.org>'


def test_baddate_is_never_read():
    m = parse("baddate")
    assert m.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST" and len(m.body) == 150


# --- §3.2 transaction layer --------------------------------------------------------------
def test_badbranch_exposes_the_bare_magic_cookie():
    m = parse("badbranch")
    assert m.top_via.branch == "z9hG4bK"  # the transaction layer decides: 400 or RFC 2543 matching


# --- §3.3 application layer --------------------------------------------------------------
def test_unkscm_parses_for_a_416():
    m = parse("unkscm")
    assert not m.uri.is_sip and m.uri.scheme == "nobodyknowsthisscheme"
    assert m.uri_text == "nobodyKnowsThisScheme:totallyopaquecontent"  # forwarded untouched
    assert m.to.uri.is_sip  # the To header carries no routing information


def test_novelsc_parses_for_a_416_or_404():
    m = parse("novelsc")
    assert m.uri.scheme == "soap.beep" and m.uri.opaque == "//192.0.2.103:3002" and not m.uri.is_sip


def test_unksm2_unknown_schemes_in_headers():
    m = parse("unksm2")
    assert (m.to.uri.scheme, m.to.uri.opaque) == ("isbn", "2983792873")
    assert m.from_.uri.scheme == "http" and m.from_.tag == "3234233"
    assert [str(c.uri) for c in m.contacts] == ["name:John_Smith"]
    assert not m.to.uri.is_sip  # the registrar's 400: an AOR must be SIP or SIPS


def test_bext01_require_lists_for_a_420():
    m = parse("bext01")
    assert m.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.get_all("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    assert m.top_via.transport == "TLS"


def test_invut_unknown_content_type_for_a_415():
    m = parse("invut")
    assert m.content_type == "application/unknownformat" and len(m.body) == 40


def test_regaut01_unknown_authorization_scheme_kept_raw():
    m = parse("regaut01")
    assert m.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here" and m.body == b""


def test_bcast_second_via_is_broadcast():
    m = parse("bcast")
    assert isinstance(m, Response) and [v.host for v in m.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf_max_forwards_zero():
    assert parse("zeromf").max_forwards == 0


def test_cparam01_contact_param_is_not_a_uri_param():
    (c,) = parse("cparam01").contacts
    assert c.params == {"unknownparam": None} and c.uri.params == {}
    assert str(c.uri) == "sip:+19725552222@gw1.example.net"


def test_cparam02_uri_param_stays_in_the_uri():
    (c,) = parse("cparam02").contacts
    assert c.params == {} and c.uri.params == {"unknownparam": None}
    assert str(c.uri) == "sip:+19725552222@gw1.example.net;unknownparam"


def test_regescrt_escaped_header_stays_in_the_contact_uri():
    (c,) = parse("regescrt").contacts  # "M:" compact Contact
    assert c.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(c.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_sdp01_accept_without_sdp():
    m = parse("sdp01")
    assert m.get("Accept") == "text/nobodyKnowsThis" and m.content_type == "application/sdp"


def test_inv2543_rfc2543_request_is_accepted():
    m = parse("inv2543")
    assert m.top_via.branch is None and m.from_.tag is None and m.max_forwards is None
    assert m.get("Content-Length") is None and m.body.startswith(b"v=0\r\n") and m.body.endswith(b"RTP/AVP 0\r\n")
    # To is an addr-spec: ";user=phone" after it is a header parameter (RFC 3261 §20.10)
    assert m.to.params == {"user": "phone"} and m.from_.uri.params == {"user": "phone"}
