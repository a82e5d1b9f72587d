"""SIP URIs (RFC 3261 §19.1), name-addr values (§20.10) and header lists (§7.3.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.sip.errors import RemoteProtocolError
from node.sip.uri import NameAddr, Uri, parse_generic_params, quote_string, split_header_list, split_list_strict


# --- Uri ---------------------------------------------------------------------------------
def test_full_sip_uri():
    u = Uri.parse("sips:alice:secret@Atlanta.Example.com:5061;transport=TCP;lr?Subject=hi&Priority=urgent")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sips", "alice", "secret", "Atlanta.Example.com", 5061)
    assert u.params == {"transport": "TCP", "lr": None} and u.transport == "tcp"
    assert u.headers == "Subject=hi&Priority=urgent" and u.is_sip and u.opaque is None
    assert u.host_bare == "atlanta.example.com"
    assert str(u) == "sips:alice:secret@Atlanta.Example.com:5061;transport=TCP;lr?Subject=hi&Priority=urgent"


@pytest.mark.parametrize("text,host,bare,port", [
    ("sip:[2001:db8::1]", "[2001:db8::1]", "2001:db8::1", None),
    ("sip:u@[::ffff:192.0.2.1]:5060", "[::ffff:192.0.2.1]", "::ffff:192.0.2.1", 5060),
    ("sip:192.0.2.1:0", "192.0.2.1", "192.0.2.1", 0),
    ("sip:h:65535", "h", "h", 65535),
    ("sip:h:005060", "h", "h", 5060),
    ("SIP:x@EXAMPLE.com.", "EXAMPLE.com.", "example.com.", None),
])
def test_hosts_and_ports(text, host, bare, port):
    u = Uri.parse(text)
    assert (u.host, u.host_bare, u.port) == (host, bare, port) and u.scheme == "sip"


def test_user_part_keeps_escapes_and_odd_characters():
    u = Uri.parse("sip:%61lice%20b;x=y?z,w/@example.com")
    assert u.user == "%61lice%20b;x=y?z,w/" and u.user_unescaped == "alice b;x=y?z,w/"
    assert u.host == "example.com" and u.params == {} and u.headers == ""
    tel = Uri.parse("sip:+1-212-555-1212;phone-context=example.com@gw.example.com;user=phone")
    assert tel.user == "+1-212-555-1212;phone-context=example.com" and tel.params == {"user": "phone"}


@pytest.mark.parametrize("text,opaque", [
    ("tel:+1-201-555-0123", "+1-201-555-0123"),
    ("urn:service:sos", "service:sos"),
    ("http://www.example.com/a?b=c", "//www.example.com/a?b=c"),
    ("mailto:a@b.c", "a@b.c"),
])
def test_other_schemes_are_opaque(text, opaque):
    u = Uri.parse(text)
    assert u.opaque == opaque and not u.is_sip and str(u) == text and u.user_unescaped is None


@pytest.mark.parametrize("text,words", [
    ("sip:", "empty host"),
    ("sip:alice@", "empty host"),
    ("sip:@h", "empty user"),
    ("sip:a b@h", "whitespace"),
    ("sip:a@h:65536", "bad port"),
    ("sip:a@h:1x", "bad port"),
    ("sip:a@[::1", "unterminated IPv6"),
    ("sip:a@[1::2::3]", "IPv6"),
    ("sip:a@[zz]", "IPv6"),
    ("sip:a@h_1", "bad host"),
    ("sip:a@-h", "bad host"),
    ("sip:a@h..com", "bad host"),
    ("sip:a%2@h", "bad %-escape"),
    ("sip:a@h;x=%g1", "bad %-escape"),
    ("sip:a@h;lr;LR", "appears twice"),
    ("sip:a@h?x", "invalid"),
    ("sip:<a@h>", "'<'"),
    ("sip:a@h;=x", "invalid"),
    ("sip:a\"b@h", "'\"'"),
    ("nocolon", "malformed URI"),
    ("1tel:123", "malformed URI"),
    ("tel:", "malformed URI"),
    ("tel:a b", "malformed URI"),
    ("", "malformed URI"),
])
def test_malformed_uris(text, words):
    with pytest.raises(RemoteProtocolError) as ei:
        Uri.parse(text)
    assert words in ei.value.reason, ei.value.reason


def test_copy_is_independent():
    u = Uri.parse("sip:a@h;lr")
    c = u.copy()
    c.params["transport"] = "tcp"
    c.host = "other"
    assert str(u) == "sip:a@h;lr" and str(c) == "sip:a@other;lr;transport=tcp"


def test_built_uri_serialises():
    assert str(Uri("sip", "bob", "example.com", 5070, {"transport": "tcp"})) == "sip:bob@example.com:5070;transport=tcp"
    assert repr(Uri.parse("sip:a@b")) == "Uri('sip:a@b')"


# --- NameAddr ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,display,uri,params", [
    ('"Alice Smith" <sip:alice@example.com>;tag=abc', "Alice Smith", "sip:alice@example.com", {"tag": "abc"}),
    ("Alice Smith <sip:alice@example.com>", "Alice Smith", "sip:alice@example.com", {}),
    ("<sip:alice@example.com;transport=tcp>;expires=60;q=0.5", None, "sip:alice@example.com;transport=tcp",
     {"expires": "60", "q": "0.5"}),
    ("sip:alice@example.com;tag=1", None, "sip:alice@example.com", {"tag": "1"}),
    ('"" <sip:a@b>', None, "sip:a@b", {}),
    ('"q\\"uo\\\\te" <sip:a@b>', 'q"uo\\te', "sip:a@b", {}),
    ('"Zoë 日本" <sip:a@b>', "Zoë 日本", "sip:a@b", {}),
    ("  <sip:a@b>  ;  Tag = x ; p = \"q;r\"  ", None, "sip:a@b", {"tag": "x", "p": '"q;r"'}),
    ("<tel:+123>;tag=t", None, "tel:+123", {"tag": "t"}),
    ("< sip:a@b >", None, "sip:a@b", {}),  # RFC 4475 §3.1.2.14: liberal
    ("A<sip:a@b>", "A", "sip:a@b", {}),
])
def test_name_addr_forms(text, display, uri, params):
    na = NameAddr.parse(text)
    assert (na.display, str(na.uri), na.params) == (display, uri, params)
    assert na.tag == params.get("tag")


@pytest.mark.parametrize("text,words", [
    ('"Bob <sip:bob@b>', "unterminated quoted string"),
    ('"Bob" sip:bob@b', "not followed by <URI>"),
    ("<sip:bob@b", "unterminated '<'"),
    ("sip:bob@b>", "'>' without '<'"),
    ("Bob, Jr <sip:bob@b>", "must be a quoted string"),
    ('Bob "x" <sip:bob@b>', "misplaced"),
    ("<sip:bob@b> x", "unexpected"),
    ("<sip:bob@b>;", "empty parameter"),
    ("<sip:bob@b>;a=", "empty value"),
    ("<sip:bob@b>;a;a", "appears twice"),
    ("sip:bob@b?x=y", "must be enclosed in <>"),
    ("sip:a@b, sip:c@d", "more than one value"),
    ("<<sip:bob@b>>", "nested"),
    ("", "empty"),
    ("<sip:bob@b:99999>", "bad port"),
])
def test_bad_name_addrs(text, words):
    with pytest.raises(RemoteProtocolError) as ei:
        NameAddr.parse(text)
    assert words in ei.value.reason, ei.value.reason
    with pytest.raises(RemoteProtocolError):
        NameAddr.check(text)


def test_name_addr_str_quotes_what_must_be_quoted():
    na = NameAddr(Uri.parse("sip:a@b"), 'Evil "\\ name\x00', {"tag": "x"})
    text = str(na)
    assert text == '"Evil \\"\\\\ name\\\x00" <sip:a@b>;tag=x'
    assert NameAddr.parse(text).display == 'Evil "\\ name\x00'
    # CR and LF cannot be quoted-pairs: they become spaces rather than a new header line
    assert str(NameAddr(Uri.parse("sip:a@b"), "a\r\nVia: x")) == '"a  Via: x" <sip:a@b>'
    assert quote_string("plain") == '"plain"'


def test_name_addr_uri_is_built_lazily_and_can_be_replaced():
    na = NameAddr.parse("<sip:a@b;lr>;tag=1")
    u = na.uri
    assert na.uri is u and u.params == {"lr": None}
    na.uri = Uri.parse("sip:c@d")
    assert str(na) == "<sip:c@d>;tag=1"


def test_parsed_name_addrs_do_not_share_state():
    text = '"A" <sip:a@b;lr>;tag=1'
    one, two = NameAddr.parse(text), NameAddr.parse(text)  # the second comes from the memo
    one.params["tag"] = "changed"
    one.uri.params["lr"] = "x"
    assert two.params == {"tag": "1"} and two.uri.params == {"lr": None}
    assert NameAddr.parse(text).params == {"tag": "1"}


# --- parameters and lists ----------------------------------------------------------------
def test_generic_params():
    assert parse_generic_params("") == {}
    assert parse_generic_params(";a;B=2;c=[::1];d=\"x;y\"") == {"a": None, "b": "2", "c": "[::1]", "d": '"x;y"'}
    for bad in (";", ";a=", ";a b", "a", ";a;;b", ";a=\"x"):
        with pytest.raises(RemoteProtocolError):
            parse_generic_params(bad)


def test_split_header_list():
    assert split_header_list('a, "b,c" <sip:x@y;p=1,2>, d') == ["a", '"b,c" <sip:x@y;p=1,2>', "d"]
    assert split_header_list("a,,b,") == ["a", "b"]  # lenient: empty elements dropped
    assert split_header_list(" single ") == ["single"]
    assert split_header_list('"esc\\",aped", x') == ['"esc\\",aped"', "x"]


def test_split_list_strict():
    assert split_list_strict("a, b", "X") == ["a", "b"]
    for bad in ("a,,b", "a,", ",a", "", "  "):
        with pytest.raises(RemoteProtocolError, match="empty"):
            split_list_strict(bad, "X")


# --- round trip --------------------------------------------------------------------------
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=12)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[::1]", "[2001:db8::7]", "[fe80::1:2]"]),
)
_user = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=15)
_uparams = st.dictionaries(_label, st.one_of(st.none(), _label), max_size=3)


@st.composite
def sip_uris(draw):
    return Uri(draw(st.sampled_from(["sip", "sips"])), draw(st.one_of(st.none(), _user)), draw(_host),
               draw(st.one_of(st.none(), st.integers(0, 65535))), draw(_uparams),
               draw(st.sampled_from(["", "subject=hi", "a=b&c="])))


@settings(max_examples=200, deadline=None)
@given(sip_uris())
def test_uri_round_trip(u):
    again = Uri.parse(str(u))
    assert (again.scheme, again.user, again.host, again.port, again.params, again.headers) == (
        u.scheme, u.user, u.host, u.port, u.params, u.headers)
    assert str(again) == str(u)


@settings(max_examples=200, deadline=None)
@given(sip_uris(), st.one_of(st.none(), st.text(min_size=1, max_size=20)),
       st.dictionaries(_token.map(str.lower), st.one_of(st.none(), _token), max_size=3))
def test_name_addr_round_trip(u, display, params):
    u.headers = ""
    na = NameAddr(u, display, params)
    again = NameAddr.parse(str(na))
    expected_display = None if not display else display.replace("\r", " ").replace("\n", " ")
    assert again.display == expected_display
    assert str(again.uri) == str(u) and again.params == params


# --- memos of checked values -------------------------------------------------------------
def test_a_remembered_prefix_gives_the_same_answers():
    first = NameAddr.parse('"A" <sip:a@memo.example.com>;tag=1')
    again = NameAddr.parse('"A" <sip:a@memo.example.com>;tag=2;x')
    assert (first.tag, again.tag, again.params) == ("1", "2", {"tag": "2", "x": None})
    assert again.display == "A" and str(again.uri) == "sip:a@memo.example.com"
    for bad, words in (('"A" <sip:a@memo.example.com>;tag=2;tag=3', "appears twice"),
                       ('"A" <sip:a@memo.example.com> junk', "unexpected"),
                       ('"A" <sip:a@memo.example.com>;', "empty parameter")):
        with pytest.raises(RemoteProtocolError, match=words):
            NameAddr.parse(bad)
    assert NameAddr.parse('"A" <sip:a@memo.example.com> ; tag = 5').tag == "5"


def test_memos_stay_bounded():
    from node.sip import headers, parser, uri

    for i in range(uri.MEMO_SIZE + 100):
        NameAddr.parse(f"<sip:u{i}@bounded.example.com>;tag={i}")
        NameAddr.check(f"<sip:c{i}@h>;expires={i}", contact=True)
        headers.Via.check(f"SIP/2.0/UDP h{i}.example.com;branch=z9hG4bK{i}")
    NameAddr.parse("<sip:" + "x" * 5000 + "@h>")
    headers.Via.parse("SIP/2.0/UDP " + "x" * 5000 + ";branch=z9hG4bK1")
    assert len(headers._VIA_PREFIX) > 0
    memos = (uri._NA_PREFIX, uri._NA_WHOLE, uri._NA_CHECKED, uri._CONTACT_CHECKED, headers._VIA_PREFIX, parser._RURI_MEMO)
    for memo in memos:
        assert len(memo) <= uri.MEMO_SIZE
        assert all(len(k) <= uri.MEMO_KEY_MAX for k in memo)


def test_a_repeated_value_gives_a_fresh_name_addr():
    # the whole-value memo must not share mutable parameters between messages
    text = '"Bob" <sip:bob@whole.example.com;transport=tcp>;tag=a1;x'
    first = NameAddr.parse(text)
    first.params["tag"] = "changed"
    again = NameAddr.parse(text)
    assert again is not first
    assert again.params == {"tag": "a1", "x": None}
    assert again.display == "Bob" and str(again.uri) == "sip:bob@whole.example.com;transport=tcp"


# --- what a registrar reads without building the Uri ---------------------------------------
_NA_SHAPES = st.builds(
    lambda display, scheme, user, host, port, uparams, headers, params: (
        f"{display}<{scheme}:{user}{host}{port}{uparams}{headers}>{params}"
    ),
    st.sampled_from(["", '"A b" ', "Bob "]),
    st.sampled_from(["sip", "sips", "SIP", "Sip", "sipS"]),
    st.sampled_from(["", "alice@", "%41lice@", "a:pw@", "+1%20555@"]),
    st.sampled_from(["example.com", "EXAMPLE.com", "192.0.2.1", "[2001:db8::1]", "[::FFFF:192.0.2.1]", "h."]),
    st.sampled_from(["", ":5060", ":0", ":05060", ":00", ":65535"]),
    st.sampled_from(["", ";transport=udp", ";Transport=UDP", ";lr", ";LR;maddr=x", ";ob;transport=TCP"]),
    st.sampled_from(["", "?x=1", "?Subject=Hi&a=b"]),
    st.sampled_from(["", ";tag=1", ";expires=60;q=0.5"]),
)


@settings(max_examples=300, deadline=None)
@given(text=_NA_SHAPES)
def test_uri_text_host_and_user_read_from_the_match_equal_those_of_the_built_uri(text):
    a, b = NameAddr.parse(text), NameAddr.parse(text)
    assert (a.uri_text, a.uri_host_bare, a.uri_user_unescaped) == (str(b.uri), b.uri.host_bare, b.uri.user_unescaped)
    # and once the Uri is built (or for a NameAddr built in code) the same answers
    b.uri  # noqa: B018
    assert (b.uri_text, b.uri_host_bare, b.uri_user_unescaped) == (a.uri_text, a.uri_host_bare, a.uri_user_unescaped)
    c = NameAddr(Uri.parse(str(b.uri)))
    assert c.uri_text == str(c.uri) and c.uri_host_bare == c.uri.host_bare


def test_uri_text_of_an_addr_spec_and_of_a_changed_uri():
    na = NameAddr.parse("sip:alice@EXAMPLE.com;transport=TCP")  # no <>: the general parser
    assert na.uri_text == str(na.uri) == "sip:alice@EXAMPLE.com"
    na = NameAddr.parse("<sip:alice@example.com>")
    na.uri = Uri.parse("sip:bob@example.org:5070")
    assert (na.uri_text, na.uri_host_bare, na.uri_user_unescaped) == ("sip:bob@example.org:5070", "example.org", "bob")
