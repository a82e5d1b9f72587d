"""The parser's fast paths (memos of checked values, Via/From/To checked at receipt and built
on first read) against its general path: the same messages accepted, the same reasons and
statuses for the rejected ones, the same typed views — with the memos cold and warm."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.sip import headers, parser, uri
from node.sip.errors import RemoteProtocolError
from node.sip.headers import Via
from node.sip.message import Request
from node.sip.parser import parse_datagram
from node.sip.uri import NameAddr

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rfc4475"

VIEWS = ("call_id", "cseq", "vias", "from_", "to", "contacts", "routes", "record_routes", "max_forwards",
         "content_type")


def _clear_memos() -> None:
    for memo in (uri._NA_PREFIX, uri._NA_WHOLE, uri._NA_CHECKED, uri._CONTACT_CHECKED, headers._VIA_PREFIX,
                 parser._RURI_MEMO, parser._CALL_IDS, parser._LINES):
        memo.clear()


def _outcome(data: bytes) -> tuple:
    """What a caller can observe: the error (reason, status) or every typed view as text."""
    try:
        msg = parse_datagram(data)
    except RemoteProtocolError as e:
        return ("error", e.reason, e.status_hint)
    views = [repr(getattr(msg, v)) for v in VIEWS]
    views.append(repr(msg.headers))  # the header pairs themselves (the line memo's output)
    if isinstance(msg, Request):
        views.append(str(msg.uri))
    return ("ok", *views)


def _message(*, start: str = "INVITE sip:bob@fast.example.com SIP/2.0",
             via: str = "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1;rport",
             frm: str = '"A" <sip:alice@fast.example.com>;tag=f1', to: str = "<sip:bob@fast.example.com>",
             call_id: str = "c1@192.0.2.7", contact: str = "<sip:alice@192.0.2.7:5060>",
             method: str = "INVITE") -> bytes:
    return (f"{start}\r\nVia: {via}\r\nFrom: {frm}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 {method}\r\nContact: {contact}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


# the values the memos are primed with, then variations of their parameters: a fast path
# that took the prefix as proof of the whole would accept the bad ones
_VIA_PREFIX = "SIP/2.0/UDP 192.0.2.7:5060"
_VIAS = [_VIA_PREFIX + p for p in (
    ";branch=z9hG4bK2", ";branch=z9hG4bK2;rport", ";branch=z9hG4bK2;rport=5060", ";branch=z9hG4bK2;rport=5060;received=192.0.2.9",
    ";branch=z9hG4bK2;received=192.0.2.9", ";branch=z9hG4bK2;rport=abc", ";branch=z9hG4bK2;rport=123456",
    ";branch", ";branch=", ";branch=z9hG4bK2;received", ";branch=z9hG4bK2;branch=z9hG4bK3", ";branch=a;BRANCH=b",
    ";branch=z9hG4bK2;rport;rport", ";branch=z9hG4bK2;ttl", ";branch=z9hG4bK2;maddr", ";branch=z9hG4bK2;x=\"q\"",
    " ;branch=z9hG4bK2", ";branch=z9hG4bK2;", ";;branch=z9hG4bK2", ";branch=z9hG4bK2 junk", ";branch=z9hG4bK2,",
    ";received=192.0.2.9;branch=z9hG4bK2;rport", "", ";rport;branch=z9hG4bK2", ";branch=z9hG4bK2;x=[::1]",
)] + ["SIP/2.0/UDP 192.0.2.7:70000;branch=z9hG4bK2", "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK2",
      "SIP/2.0/UDP [::g]:5060;branch=z9hG4bK2", "SIP/3.0/UDP 192.0.2.7;branch=z9hG4bK2",
      "SIP / 2.0 / UDP 192.0.2.7:5060 ;branch=z9hG4bK2"]
_NA_PREFIX = '"A" <sip:alice@fast.example.com>'
_NAS = [_NA_PREFIX + p for p in (
    "", ";tag=f2", ";tag=f2;x", ";tag=f2;tag=f3", ";TAG=f2;tag=f3", ";tag", ";tag=", ";", ";;tag=f2", " ;tag=f2",
    ";tag=f2 junk", " junk", ";tag=\"q\"", ";tag=f2;x=\"a b\"", ";tag=f2,", ";tag=f2>", ";tag=a b",
)] + ["<sip:alice@fast.example.com>;tag=f2", "sip:alice@fast.example.com;tag=f2", "Bad Name <sip:a@b>;tag=1",
      'Bad"Name <sip:a@b>;tag=1', '"A" <sip:alice@[::g]>;tag=f2', '"A" <sip:al%zzice@fast.example.com>;tag=f2',
      "<sip:a@b;lr;lr>;tag=1", "<sip:a@b?x=1>;tag=1", "sip:a@b?x=1", "<sip:a@b>;tag=1;Tag=2", "< sip:a@b >;tag=1"]
_CALL_IDS = ["c1@192.0.2.7", "c2@192.0.2.7", "c 3@x", "", "c4@x;y", "c5é@x", 'c6"@x', "c7@@x"]
_CONTACTS = ["<sip:alice@192.0.2.7:5060>", "<sip:alice@192.0.2.7:5060>;expires=60", "<sip:alice@192.0.2.7:5060>;expires=x",
             "<sip:alice@192.0.2.7:5060>;q=2", "*", "<sip:a@b>, <sip:c@d>", "<sip:a@b>,,<sip:c@d>", "<sip:a@b>;expires"]


def _variations() -> list[bytes]:
    out = [_message(via=v) for v in _VIAS]
    out += [_message(frm=v) for v in _NAS] + [_message(to=v) for v in _NAS]
    out += [_message(call_id=v) for v in _CALL_IDS] + [_message(contact=v) for v in _CONTACTS]
    # the same header values in a response: its Via, From and To are only checked at receipt
    out += [m.replace(b"INVITE sip:bob@fast.example.com SIP/2.0", b"SIP/2.0 180 Ringing", 1) for m in list(out)]
    return out


CASES = [p.read_bytes() for p in sorted(CORPUS.glob("*.sip"))] + _variations()


def test_cold_and_warm_memos_give_the_same_outcomes():
    """Each message alone with every memo empty (the general path), then all of them again
    with the memos primed by a valid message of the same shape and by each other."""
    cold = []
    for data in CASES:
        _clear_memos()
        cold.append(_outcome(data))
    _clear_memos()
    parse_datagram(_message()).to  # the prefixes of the variations, checked and memoised
    parse_datagram(_message().replace(b"INVITE sip:bob@fast.example.com SIP/2.0", b"SIP/2.0 180 Ringing", 1))
    warm = [_outcome(data) for data in CASES]
    again = [_outcome(data) for data in CASES]
    assert warm == cold
    assert again == cold
    # the variations do exercise both answers
    kinds = {o[0] for o in cold[-len(_variations()):]}
    assert kinds == {"ok", "error"}


@pytest.mark.parametrize("params, reason", [
    (";branch=z9hG4bK2;rport=abc", "bad rport value"),
    (";branch=z9hG4bK2;received", "needs a value"),
    (";branch=z9hG4bK2;branch=z9hG4bK3", "appears twice"),
])
def test_a_memoised_via_prefix_still_checks_the_parameters(params, reason):
    parse_datagram(_message())
    assert _VIA_PREFIX in headers._VIA_PREFIX
    for start in ("INVITE sip:bob@fast.example.com SIP/2.0", "SIP/2.0 180 Ringing"):
        with pytest.raises(RemoteProtocolError, match=reason) as e:
            parse_datagram(_message(start=start, via=_VIA_PREFIX + params))
        assert e.value.status_hint == 400
        with pytest.raises(RemoteProtocolError, match=reason):
            Via.check(_VIA_PREFIX + params)


@pytest.mark.parametrize("suffix, reason", [(";tag=f2;tag=f3", "appears twice"), (";tag=f2 junk", "expected ';'"),
                                            (";", "empty parameter")])
def test_a_memoised_from_prefix_still_checks_the_parameters(suffix, reason):
    parse_datagram(_message())
    assert _NA_PREFIX in uri._NA_PREFIX
    with pytest.raises(RemoteProtocolError, match=f"bad From header: .*{reason}") as e:
        parse_datagram(_message(start="SIP/2.0 200 OK", frm=_NA_PREFIX + suffix))
    assert e.value.status_hint == 400
    with pytest.raises(RemoteProtocolError, match=reason):
        NameAddr.check_lazy(_NA_PREFIX + suffix)


def test_a_remembered_call_id_is_the_only_one_let_through():
    parse_datagram(_message(call_id="seen@192.0.2.7"))
    assert "seen@192.0.2.7" in parser._CALL_IDS
    with pytest.raises(RemoteProtocolError, match="bad Call-ID"):
        parse_datagram(_message(call_id="seen @192.0.2.7"))


def test_a_response_builds_its_via_from_and_to_when_first_read():
    data = _message(start="SIP/2.0 200 OK", via=_VIA_PREFIX + ";branch=z9hG4bKlazy;rport=5060;received=192.0.2.9",
                    to="<sip:bob@fast.example.com>;tag=t9")
    msg = parse_datagram(data)
    assert not {"vias", "from", "to"} & set(msg._cache)  # checked, not built
    via = msg.top_via
    assert (via.host, via.port, via.params) == ("192.0.2.7", 5060, {"branch": "z9hG4bKlazy", "rport": "5060",
                                                                    "received": "192.0.2.9"})
    assert (msg.from_.display, msg.from_.tag, msg.to.tag, str(msg.to.uri)) == ("A", "f1", "t9", "sip:bob@fast.example.com")
    assert msg.vias is msg.vias and msg.to is msg.to  # cached once built
    # a request's Via and To are read by the transaction layer and the dialog match: built now
    req = parse_datagram(_message())
    assert {"vias", "to"} <= set(req._cache)


def test_via_objects_are_not_shared_between_messages():
    # the transaction layer writes received/rport into the top Via's parameters
    a = parse_datagram(_message())
    b = parse_datagram(_message())
    a.top_via.params["received"] = "203.0.113.1"
    assert "received" not in b.top_via.params


@pytest.mark.parametrize("line, expected", [
    ("Max-Forwards: 70", ("Max-Forwards", "70")),
    ("Max-Forwards:  70 ", ("Max-Forwards", "70")),
    ("max-forwards: 70", ("Max-Forwards", "70")),
    ("Subject: a: b", ("Subject", "a: b")),
])
def test_a_remembered_header_line_gives_the_same_pair_and_odd_lines_are_not_remembered(line, expected):
    """The line memo hands back the pair the loop made of that very line; folded
    continuations and unknown names never enter it (the loop reads them every time)."""
    _clear_memos()
    data = _message().replace(b"Max-Forwards: 70", line.encode())
    first = parse_datagram(data)
    again = parse_datagram(data)
    assert expected in first.headers and first.headers == again.headers
    folded = data.replace(b"\r\nContent-Length", b"\r\nOrganization: first\r\n  continued\r\nContent-Length")
    assert parse_datagram(folded).get("Organization") == "first continued"
    assert parse_datagram(folded).get("Organization") == "first continued"
    assert all(not k.startswith((" ", "\t")) for k in parser._LINES)
    unknown = data.replace(b"Content-Length: 0", b"X-Odd: 1\r\nContent-Length: 0")
    assert parse_datagram(unknown).get("x-odd") == "1" and "X-Odd: 1" not in parser._LINES


def test_the_line_memo_is_bounded_and_skips_long_lines():
    _clear_memos()
    for i in range(uri.MEMO_SIZE + 10):
        parse_datagram(_message(call_id=f"bounded-{i}@x"))
    assert len(parser._LINES) <= uri.MEMO_SIZE
    long_ua = "u" * (parser._LINE_MEMO_MAX + 1)
    msg = parse_datagram(_message().replace(b"Max-Forwards: 70", f"User-Agent: {long_ua}".encode()))
    assert msg.get("User-Agent") == long_ua and f"User-Agent: {long_ua}" not in parser._LINES


def test_a_register_checks_its_from_at_receipt_and_builds_it_when_first_read():
    """Same answers as an INVITE, whose From is built at once, for every From variation."""
    reg = "REGISTER sip:fast.example.com SIP/2.0"
    for frm in _NAS:
        for cold in (True, False):
            if cold:
                _clear_memos()
            invite = _outcome(_message(frm=frm))
            register = _outcome(_message(start=reg, frm=frm, method="REGISTER"))
            if invite[0] == "error":
                assert register == invite, frm
            else:  # the same From, To and Via views (CSeq and the Request-URI differ)
                assert register[0] == "ok" and register[3:6] == invite[3:6], frm
    data = _message(start=reg, frm='"A" <sip:alice@fast.example.com>;tag=r1', method="REGISTER")
    parse_datagram(data).from_  # noqa: B018 - the prefix checked and memoised
    msg = parse_datagram(data)
    assert "from" not in msg._cache
    assert msg.from_.tag == "r1" and msg.from_.display == "A" and msg._cache["from"] is msg.from_
