"""Digest authentication (RFC 7616 / RFC 8760 / RFC 2617 / RFC 2069), with the RFCs' own vectors."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.sip.auth import (
    ALGORITHMS,
    HA1,
    AuthHeaderError,
    Challenge,
    Credentials,
    DigestServer,
    NonceCounts,
    UnsupportedChallenge,
    Verdict,
    answer_challenge,
    choose_challenge,
    compute_response,
    format_challenge,
    format_credentials,
    ha1,
    parse_challenge,
    parse_credentials,
)
from node.sip.errors import SipError

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "acme.example.com"
T0 = 1_700_000_000.0
URI = "sip:acme.example.com"

# ---------------------------------------------------------------- RFC vectors
# RFC 2617 §3.5 (the WWW-Authenticate and Authorization of the example, folded as printed)
RFC2617_CHALLENGE = '''Digest
                 realm="testrealm@host.com",
                 qop="auth,auth-int",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41"'''
RFC2617_AUTHORIZATION = '''Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41"'''

# RFC 7616 §3.9.1
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_RESPONSES = {
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
}


def rfc7616_challenge(algorithm: str) -> str:
    return (f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
            f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"')


def test_rfc2617_authorization_parses_and_its_response_recomputes() -> None:
    cr = parse_credentials(RFC2617_AUTHORIZATION)
    assert (cr.username, cr.realm, cr.uri, cr.qop, cr.nc, cr.cnonce) == (
        "Mufasa", "testrealm@host.com", "/dir/index.html", "auth", "00000001", "0a4f113b")
    assert cr.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert cr.algorithm == "MD5"  # absent means MD5
    base = ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert compute_response("MD5", base, cr.nonce, "GET", cr.uri, cr.qop, cr.nc, cr.cnonce) == cr.response


def test_rfc2617_client_answers_the_example_challenge() -> None:
    value = answer_challenge(RFC2617_CHALLENGE, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b", 1)
    cr = parse_credentials(value)
    assert cr.response == "6629fae49393a05397450978507c4ef1"
    assert (cr.qop, cr.nc, cr.cnonce) == ("auth", "00000001", "0a4f113b")  # auth preferred to auth-int
    assert cr.opaque == "5ccc069c403ebaf9f0171e9517f40e41"  # echoed (RFC 7616 §3.4)
    assert "qop=auth," in value and "nc=00000001" in value  # tokens, unquoted


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rfc7616_mufasa_vectors(algorithm: str) -> None:
    value = answer_challenge(rfc7616_challenge(algorithm), "GET", "/dir/index.html", "Mufasa",
                             "Circle of Life", RFC7616_CNONCE, 1)
    cr = parse_credentials(value)
    assert cr.response == RFC7616_RESPONSES[algorithm]
    assert cr.algorithm == algorithm
    assert cr.opaque == RFC7616_OPAQUE


def test_rfc7616_sha256_authorization_as_printed() -> None:
    value = f'''Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="{RFC7616_NONCE}",
       nc=00000001,
       cnonce="{RFC7616_CNONCE}",
       qop=auth,
       response="{RFC7616_RESPONSES['SHA-256']}",
       opaque="{RFC7616_OPAQUE}"'''
    cr = parse_credentials(value)
    base = ha1(cr.algorithm, cr.username, cr.realm, "Circle of Life")
    assert compute_response(cr.algorithm, base, cr.nonce, "GET", cr.uri, cr.qop, cr.nc, cr.cnonce) == cr.response
    wrong = ha1(cr.algorithm, cr.username, cr.realm, "Circle Of Life")
    assert compute_response(cr.algorithm, wrong, cr.nonce, "GET", cr.uri, cr.qop, cr.nc, cr.cnonce) != cr.response


# ---------------------------------------------------------------- server round trips
def creds_for(server: DigestServer, *, now: float = T0, algorithm: str = "SHA-256", method: str = "REGISTER",
              uri: str = URI, user: str = "1001", password: str = "s3cret", realm: str = REALM,
              nc: int = 1, cnonce: str = "c0ffee") -> str:
    values = server.challenge(realm, now)
    ch = next(parse_challenge(v) for v in values if parse_challenge(v).algorithm == algorithm)
    return answer_challenge(ch, method, uri, user, password, cnonce, nc)


def test_challenge_lists_sha256_first_then_md5_with_one_nonce() -> None:
    values = DigestServer(SECRET).challenge(REALM, T0)
    chs = [parse_challenge(v) for v in values]
    assert [c.algorithm for c in chs] == ["SHA-256", "MD5"]  # RFC 8760 §2.4
    assert chs[0].nonce == chs[1].nonce
    assert all(c.realm == REALM and c.qop == ("auth",) and not c.stale for c in chs)
    assert "stale" not in values[0]


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip_ok_with_password_and_with_ha1(algorithm: str) -> None:
    server = DigestServer(SECRET)
    value = creds_for(server, algorithm=algorithm)
    assert server.verify(value, "REGISTER", REALM, "s3cret", T0 + 1, uri=URI, username="1001") is Verdict.OK
    stored = HA1(md5=ha1("MD5", "1001", REALM, "s3cret"), sha256=ha1("SHA-256", "1001", REALM, "s3cret"))
    assert server.verify(value, "REGISTER", REALM, stored, T0 + 1) is Verdict.OK
    assert server.verify(parse_credentials(value), "REGISTER", REALM, "s3cret", T0) is Verdict.OK


def test_another_node_with_the_same_secret_accepts_the_nonce() -> None:
    value = creds_for(DigestServer(SECRET))
    assert DigestServer(SECRET).verify(value, "REGISTER", REALM, "s3cret", T0) is Verdict.OK
    assert DigestServer(b"another secret, 32 bytes long!!").verify(
        value, "REGISTER", REALM, "s3cret", T0) is Verdict.BAD_NONCE


def _swap_param(value: str, name: str, new: str) -> str:
    return format_credentials(dataclasses.replace(parse_credentials(value), **{name: new}))


def _flip(hexstr: str, i: int = 5) -> str:
    return hexstr[:i] + ("0" if hexstr[i] != "0" else "1") + hexstr[i + 1:]


def test_tampering_is_caught() -> None:
    server = DigestServer(SECRET)
    value = creds_for(server)
    cr = parse_credentials(value)

    def check(v: str, **kw) -> Verdict:
        return server.verify(v, kw.pop("method", "REGISTER"), REALM, kw.pop("password", "s3cret"), T0, **kw)

    assert check(value) is Verdict.OK
    assert check(_swap_param(value, "response", _flip(cr.response))) is Verdict.BAD_RESPONSE
    assert check(_swap_param(value, "nonce", _flip(cr.nonce, 20))) is Verdict.BAD_NONCE
    assert check(_swap_param(value, "nonce", cr.nonce[:-1])) is Verdict.BAD_NONCE
    assert check(_swap_param(value, "nonce", "!" * 32)) is Verdict.BAD_NONCE
    assert check(_swap_param(value, "username", "1002")) is Verdict.BAD_RESPONSE
    assert check(_swap_param(value, "uri", "sip:other.example.com")) is Verdict.BAD_RESPONSE
    assert check(_swap_param(value, "cnonce", "cafe")) is Verdict.BAD_RESPONSE
    assert check(_swap_param(value, "nc", "00000002")) is Verdict.BAD_RESPONSE
    assert check(value, method="INVITE") is Verdict.BAD_RESPONSE
    assert check(value, password="s3creT") is Verdict.BAD_RESPONSE
    assert check(value, password=None) is Verdict.BAD_RESPONSE  # unknown user looks like a wrong password
    assert check(value, uri="sip:elsewhere.example.com") is Verdict.URI_MISMATCH
    assert check(value, uri="SIP:ACME.example.com") is Verdict.OK
    assert check(value, username="1002") is Verdict.USERNAME_MISMATCH
    assert check(_swap_param(value, "response", cr.response.upper())) is Verdict.OK  # hex case-insensitive
    assert check(_swap_param(value, "response", "é" * 64)) is Verdict.BAD_RESPONSE


def test_unknown_user_never_verifies_whatever_the_response() -> None:
    server = DigestServer(SECRET)
    cr = parse_credentials(creds_for(server))
    # even a response computed from the dummy HA1 the server hashes for unknown users
    for dummy in ("0" * 64, "0" * 32, ""):
        response = compute_response("SHA-256", dummy, cr.nonce, "REGISTER", cr.uri, "auth", cr.nc, cr.cnonce)
        value = _swap_param(format_credentials(cr), "response", response)
        assert server.verify(value, "REGISTER", REALM, None, T0) is Verdict.BAD_RESPONSE


def test_realm_is_a_tenant_boundary() -> None:
    server = DigestServer(SECRET)
    value = creds_for(server, realm="tenant-a.example.com")
    # presented to tenant B as is: wrong realm
    assert server.verify(value, "REGISTER", "tenant-b.example.com", "s3cret", T0) is Verdict.REALM_MISMATCH
    # re-signed for B's realm with A's nonce: the nonce is bound to A
    cr = parse_credentials(value)
    base = ha1("SHA-256", "1001", "tenant-b.example.com", "s3cret")
    forged = format_credentials(Credentials(
        username="1001", realm="tenant-b.example.com", nonce=cr.nonce, uri=cr.uri,
        response=compute_response("SHA-256", base, cr.nonce, "REGISTER", cr.uri, "auth", cr.nc, cr.cnonce),
        algorithm="SHA-256", qop="auth", nc=cr.nc, cnonce=cr.cnonce))
    assert server.verify(forged, "REGISTER", "tenant-b.example.com", "s3cret", T0) is Verdict.BAD_NONCE


def test_expired_nonce_is_stale_only_with_the_right_password() -> None:
    server = DigestServer(SECRET, ttl=300)
    value = creds_for(server)
    assert server.verify(value, "REGISTER", REALM, "s3cret", T0 + 300) is Verdict.OK
    assert server.verify(value, "REGISTER", REALM, "s3cret", T0 + 301) is Verdict.STALE
    assert server.verify(value, "REGISTER", REALM, "wrong", T0 + 301) is Verdict.BAD_RESPONSE  # RFC 7616 §3.3
    values = server.challenge(REALM, T0 + 301, stale=True)
    assert all(parse_challenge(v).stale for v in values)
    assert all("stale=true" in v for v in values)
    fresh = answer_challenge(values[0], "REGISTER", URI, "1001", "s3cret", "c2")
    assert server.verify(fresh, "REGISTER", REALM, "s3cret", T0 + 302) is Verdict.OK


def test_nonce_from_the_future_is_refused_beyond_the_skew() -> None:
    server = DigestServer(SECRET, max_skew=30)
    value = creds_for(server, now=T0 + 100)
    assert server.verify(value, "REGISTER", REALM, "s3cret", T0 + 70) is Verdict.OK
    assert server.verify(value, "REGISTER", REALM, "s3cret", T0 + 69) is Verdict.BAD_NONCE


def test_rfc2069_credentials_without_qop() -> None:
    server = DigestServer(SECRET)
    nonce = parse_challenge(server.challenge(REALM, T0)[1]).nonce
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731 - RFC 2069 §2.1.2, written out
    response = md5(f"{md5(f'1001:{REALM}:s3cret')}:{nonce}:{md5(f'REGISTER:{URI}')}")
    value = (f'Digest username="1001", realm="{REALM}", nonce="{nonce}", uri="{URI}", '
             f'response="{response}", algorithm="MD5"')
    assert server.verify(value, "REGISTER", REALM, "s3cret", T0) is Verdict.OK
    assert server.verify(value, "REGISTER", REALM, "other", T0) is Verdict.BAD_RESPONSE
    strict = DigestServer(SECRET, allow_no_qop=False)
    assert strict.verify(value, "REGISTER", REALM, "s3cret", T0) is Verdict.UNSUPPORTED


def test_client_answers_a_challenge_without_qop_rfc2069_style() -> None:
    ch = Challenge(realm=REALM, nonce=DigestServer(SECRET).nonce(REALM, T0), algorithm="MD5")
    value = answer_challenge(format_challenge(ch), "INVITE", "sip:bob@x", "1001", "pw", "unused", 7)
    cr = parse_credentials(value)
    assert (cr.qop, cr.nc, cr.cnonce) == (None, None, None)
    assert DigestServer(SECRET).verify(value, "INVITE", REALM, "pw", T0) is Verdict.OK


def test_unsupported_choices_are_refused() -> None:
    server = DigestServer(SECRET)
    value = creds_for(server, algorithm="MD5")
    assert DigestServer(SECRET, algorithms=("SHA-256",)).verify(value, "REGISTER", REALM, "s3cret", T0) \
        is Verdict.UNSUPPORTED
    assert server.verify(_swap_param(value, "qop", "auth-int"), "REGISTER", REALM, "s3cret", T0) \
        is Verdict.UNSUPPORTED
    assert server.verify(_swap_param(value, "algorithm", "MD5-sess"), "REGISTER", REALM, "s3cret", T0) \
        is Verdict.UNSUPPORTED
    assert server.verify(value + ", userhash=true", "REGISTER", REALM, "s3cret", T0) is Verdict.UNSUPPORTED
    only_md5 = HA1(md5=ha1("MD5", "1001", REALM, "s3cret"))
    sha = creds_for(server, algorithm="SHA-256")
    assert server.verify(sha, "REGISTER", REALM, only_md5, T0) is Verdict.UNSUPPORTED
    with pytest.raises(ValueError):
        DigestServer(b"short")
    with pytest.raises(ValueError):
        DigestServer(SECRET, algorithms=("SHA-1",))


def test_nonce_counts_reject_replays_but_allow_reordering() -> None:
    server = DigestServer(SECRET, nonce_counts=NonceCounts())
    first = creds_for(server, nc=1)
    third = creds_for(server, nc=3)
    second = creds_for(server, nc=2)
    v = lambda x: server.verify(x, "REGISTER", REALM, "s3cret", T0)  # noqa: E731
    assert v(first) is Verdict.OK
    assert v(third) is Verdict.OK
    assert v(second) is Verdict.OK  # arrived late, never seen: fine
    assert v(second) is Verdict.REPLAYED
    assert v(first) is Verdict.REPLAYED
    assert v(creds_for(server, nc=1, cnonce="other")) is Verdict.OK  # another cnonce, its own counter
    # a forged count never reaches the tracker
    assert v(_swap_param(creds_for(server, nc=9), "response", "0" * 64)) is Verdict.BAD_RESPONSE
    assert v(creds_for(server, nc=9)) is Verdict.OK


def test_nonce_counts_window_and_capacity() -> None:
    nc = NonceCounts(capacity=2)
    assert nc.accept("n", "c", 100)
    assert not nc.accept("n", "c", 100 - NonceCounts.WINDOW)  # older than the window
    assert nc.accept("n", "c", 100 - NonceCounts.WINDOW + 1)
    assert nc.accept("n", "c", 1000)  # a big jump resets the window
    assert not nc.accept("n", "c", 1000)
    nc.accept("n2", "c", 1)
    nc.accept("n3", "c", 1)
    assert len(nc) == 2
    assert nc.accept("n", "c", 1000)  # evicted: forgotten (bounded memory, documented)


# ---------------------------------------------------------------- header syntax
def test_parsing_quoted_strings_escapes_commas_and_case() -> None:
    value = ('DIGEST  Realm="a, \\"quoted\\" realm" ,NONCE = "n\\\\1",\t'
             'ALGORITHM=sha-256 , qop="auth-int,auth",, opaque=tok/en+=, Stale=TRUE,')
    ch = parse_challenge(value)
    assert ch.realm == 'a, "quoted" realm'
    assert ch.nonce == "n\\1"
    assert ch.algorithm == "SHA-256"
    assert ch.qop == ("auth-int", "auth")
    assert ch.opaque == "tok/en+="
    assert ch.stale is True


def test_format_round_trips_awkward_values() -> None:
    cr = Credentials(username='a"b\\c,d', realm="r, r", nonce="n", uri="sip:x@y;transport=tcp",
                     response="abc", algorithm="SHA-256", qop="auth", nc="0000000a", cnonce='q"', opaque="o")
    assert parse_credentials(format_credentials(cr)) == cr
    ch = Challenge(realm='r"\\', nonce="n,n", algorithm="MD5", qop=("auth",), opaque="x", stale=True)
    assert parse_challenge(format_challenge(ch)) == ch
    with pytest.raises(SipError):
        format_credentials(Credentials(username="a\r\nVia: x", realm="r", nonce="n", uri="u", response="x"))


@pytest.mark.parametrize("value", [
    "",
    "   ",
    "Digest",
    "Digest realm",
    'Digest realm="unterminated',
    'Digest realm="a" nonce="b"',
    'Digest realm="a", realm="b", nonce="c"',
    'Digest realm="a", =b',
    'Digest realm="a"x, nonce="b"',
    "Basic dXNlcjpwYXNz",
    'Digest username="u", realm="r", nonce="n", uri="u", response="x", qop=auth, cnonce="c"',  # no nc
    'Digest username="u", realm="r", nonce="n", uri="u", response="x", qop=auth, cnonce="c", nc=12',
    'Digest username="u", realm="r", nonce="n", uri="u"',  # no response
    'Digest realm="' + "x" * 9000 + '"',
])
def test_malformed_authorization_is_a_400_error_and_a_malformed_verdict(value: str) -> None:
    with pytest.raises(AuthHeaderError) as e:
        parse_credentials(value)
    assert e.value.status_hint == 400
    assert DigestServer(SECRET).verify(value, "REGISTER", "r", "pw", T0) is Verdict.MALFORMED


@pytest.mark.parametrize("value", ['Digest nonce="n"', 'Digest realm="r"', "Basic realm=\"r\"", "Digest ,"])
def test_malformed_challenge_is_a_400_error(value: str) -> None:
    with pytest.raises(AuthHeaderError) as e:
        parse_challenge(value)
    assert e.value.status_hint == 400


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_header_text_only_ever_raises_auth_header_error(text: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        try:
            parse(text)
        except AuthHeaderError:
            pass
    assert DigestServer(SECRET).verify(text, "REGISTER", REALM, "pw", T0) in set(Verdict) - {Verdict.OK}


def _one_by_one(value: str) -> dict[str, str] | str:
    """What the reference loop makes of ``value`` (the error text if it refuses it)."""
    from node.sip.auth import _SCHEME_RE, _params_one_by_one

    text = value.strip(" \t\r\n")
    m = _SCHEME_RE.match(text)
    assert m is not None
    try:
        return _params_one_by_one(m.group(1), text, m.end())
    except AuthHeaderError:
        return "refused"


_sep = st.sampled_from([",", ", ", " ,", " , ", ",,", ", ,\t", ",\r\n "])
_name = st.sampled_from(["username", "Realm", "nonce", "uri", "qop", "nc", "x-y.z", "REALM"])
_value = st.one_of(
    st.text("abc09-_.:@;", min_size=1, max_size=12),  # a token
    st.text('abc ,=;:@\t', max_size=12).map(lambda v: f'"{v}"'),  # a quoted string, commas and all
)
_junk = st.sampled_from(["", "", "", " x", "=", '"', "a b", ",=", ' "u"', " k=v", 'k="v"', '"x"'])


@settings(max_examples=400, deadline=None)
@given(items=st.lists(st.tuples(_name, st.sampled_from(["=", " = ", "= "]), _value, _junk), min_size=1, max_size=8),
       seps=st.lists(_sep, min_size=9, max_size=9), lead=st.sampled_from(["", ", ", " ,"]))
def test_the_two_pass_parameter_split_agrees_with_the_one_by_one_loop(items, seps, lead) -> None:
    """The fast path (one fullmatch, one findall) must accept exactly what the loop accepts,
    with the same names and values; duplicates and junk between items are refused by both."""
    from node.sip.auth import _split

    value = "Digest " + lead + "".join(
        f"{n}{eq}{v}{junk}{seps[i]}" if i < len(items) - 1 else f"{n}{eq}{v}{junk}"
        for i, (n, eq, v, junk) in enumerate(items)
    )
    expected = _one_by_one(value)
    try:
        got: dict[str, str] | str = _split(value)[1]
    except AuthHeaderError:
        got = "refused"
    assert got == expected
    names = [n.lower() for n, _, _, _ in items]
    if len(set(names)) < len(names):
        assert expected == "refused"
    elif all(junk == "" for _, _, _, junk in items):
        assert expected == {n.lower(): v.strip('"') for n, _, v, _ in items}


def test_hostile_long_tokens_are_refused() -> None:
    # an unanchored search over these is quadratic (the old split took ~0.5 s for each)
    for value in ("Digest " + "a" * 8000, "Digest x=" + "a" * 8000 + " b", 'Digest x="' + "a" * 8000):
        with pytest.raises(AuthHeaderError):
            parse_credentials(value)


_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(user=_printable, password=_printable, algorithm=st.sampled_from(["SHA-256", "MD5"]))
def test_any_username_and_password_round_trip(user: str, password: str, algorithm: str) -> None:
    server = DigestServer(SECRET)
    value = creds_for(server, user=user, password=password, algorithm=algorithm)
    assert server.verify(value, "REGISTER", REALM, password, T0, username=user) is Verdict.OK
    assert server.verify(value, "REGISTER", REALM, password + "x", T0) is Verdict.BAD_RESPONSE


# ---------------------------------------------------------------- client choices
def test_choose_challenge_takes_the_first_answerable_one() -> None:
    nonce = "abc"
    values = [
        "Basic realm=\"x\"",
        "Digest realm=",  # malformed
        f'Digest realm="r", nonce="{nonce}", algorithm=SHA-999, qop="auth"',
        f'Digest realm="r", nonce="{nonce}", algorithm=SHA-256, qop="auth"',
        f'Digest realm="r", nonce="{nonce}", algorithm=MD5, qop="auth"',
    ]
    ch = choose_challenge(values)
    assert ch is not None and ch.algorithm == "SHA-256"
    assert choose_challenge(values[:3]) is None
    assert choose_challenge([]) is None


def test_answer_challenge_refuses_what_it_cannot_do() -> None:
    with pytest.raises(UnsupportedChallenge):
        answer_challenge('Digest realm="r", nonce="n", algorithm=SHA-999', "INVITE", "sip:x", "u", "p", "c")
    with pytest.raises(UnsupportedChallenge):
        answer_challenge('Digest realm="r", nonce="n", qop="auth-conf"', "INVITE", "sip:x", "u", "p", "c")
    with pytest.raises(UnsupportedChallenge):
        answer_challenge('Digest realm="r", nonce="n", userhash=true', "INVITE", "sip:x", "u", "p", "c")
    with pytest.raises(AuthHeaderError):
        answer_challenge('Digest realm="r"', "INVITE", "sip:x", "u", "p", "c")


def test_auth_int_only_challenge_hashes_the_body() -> None:
    ch = 'Digest realm="r", nonce="n", qop="auth-int", algorithm=MD5'
    a = parse_credentials(answer_challenge(ch, "INVITE", "sip:x", "u", "p", "c", body=b"v=0\r\n"))
    b = parse_credentials(answer_challenge(ch, "INVITE", "sip:x", "u", "p", "c", body=b"v=1\r\n"))
    assert a.qop == "auth-int"
    assert a.response != b.response
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731 - RFC 7616 §3.4.3, written out
    body_hash = hashlib.md5(b"v=0\r\n").hexdigest()
    ha2 = md5(f"INVITE:sip:x:{body_hash}")
    assert a.response == md5(f"{md5('u:r:p')}:n:00000001:c:auth-int:{ha2}")


def test_sess_variant_and_sha512_256_when_available() -> None:
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731 - RFC 7616 §3.4.2, written out
    cr = parse_credentials(answer_challenge('Digest realm="r", nonce="n", qop="auth", algorithm=MD5-sess',
                                            "INVITE", "sip:x", "u", "p", "c"))
    assert cr.algorithm == "MD5-sess"
    assert cr.response == md5(f"{md5(md5('u:r:p') + ':n:c')}:n:00000001:c:auth:{md5('INVITE:sip:x')}")
    if "sha512_256" in hashlib.algorithms_available:
        assert "SHA-512-256" in ALGORITHMS
        server = DigestServer(SECRET, algorithms=("SHA-512-256",))
        value = answer_challenge(server.challenge(REALM, T0)[0], "REGISTER", URI, "u", "p", "c")
        assert server.verify(value, "REGISTER", REALM, "p", T0) is Verdict.OK
    else:
        assert "SHA-512-256" not in ALGORITHMS


# ---------------------------------------------------------------- the plain-shape fast path
def _loop_only(value: str) -> tuple[str, dict[str, str]] | str:
    """What the reference loop alone makes of ``value`` (the error text if it refuses it)."""
    from node.sip.auth import _SCHEME_RE, MAX_HEADER_LENGTH, _params_one_by_one

    if len(value) > MAX_HEADER_LENGTH:
        return "refused"
    text = value.strip(" \t\r\n")
    m = _SCHEME_RE.match(text)
    if m is None:
        return "refused"
    try:
        return m.group(1), _params_one_by_one(m.group(1), text, m.end())
    except AuthHeaderError:
        return "refused"


def _split_or_refused(value: str) -> tuple[str, dict[str, str]] | str:
    from node.sip.auth import _split

    try:
        return _split(value)
    except AuthHeaderError:
        return "refused"


# the characters that matter to the syntax, and a few that only look like them
_ODD = st.lists(st.sampled_from(list('ab=", \t\r\n\\\x0b\xa0\x00\u2028é;Nn') + ["nonce", "realm", '="', '", ']),
                max_size=30).map("".join)


@settings(max_examples=600, deadline=None)
@given(body=_ODD, scheme=st.sampled_from(["Digest ", "Digest", "digest ", "Digest\t", "Basic ", ""]))
def test_odd_and_hostile_values_get_the_same_answer_as_the_loop(body: str, scheme: str) -> None:
    """The plain-shape path (split on ", ") either gives exactly what the loop gives or hands
    the value to the loop: odd quotes, white space the regex calls ``\\s``, junk, repeats."""
    value = scheme + body
    assert _split_or_refused(value) == _loop_only(value)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from(["username", "Realm", "nonce", "uri", "qop", "nc", "x-y.z", "REALM"]),
                                st.one_of(st.text("abc09-_.:@;,= \"\t\xa0", min_size=0, max_size=10),
                                          st.text('abc ,=;:@\t"', max_size=10).map(lambda v: f'"{v}"'))),
                      min_size=1, max_size=6),
       sep=st.sampled_from([", ", ",", " , ", ", , "]))
def test_nearly_plain_values_get_the_same_answer_as_the_loop(items, sep) -> None:
    value = "Digest " + sep.join(f"{n}={v}" for n, v in items)
    assert _split_or_refused(value) == _loop_only(value)


@pytest.mark.parametrize("value", [
    'Digest realm="a, b", nonce="n"',              # ", " inside a quoted value: cut, so handed on
    'Digest realm="a", nonce="b"c"',               # a quote inside a value
    'Digest realm=a b, nonce="n"',                  # white space inside a token
    'Digest realm=a\xa0b, nonce="n"',               # white space only \\s knows
    'Digest realm=a\x0bb, nonce="n"',
    'Digest realm="a", , nonce="n"',                # an empty list element
    'Digest realm="a", realm="b"',                  # a repeat
    'Digest Realm="a", realm="b"',                  # a repeat once lower-cased
    'Digest realm=, nonce="n"',                     # an empty token
    'Digest realm="a",nonce="n"',                   # no space after the comma
    'Digest realm="a"',
    'Digest realm=""',
    'Digest REALM="A", NONCE=x',
])
def test_plain_shape_corner_cases_agree_with_the_loop(value: str) -> None:
    assert _split_or_refused(value) == _loop_only(value)


def test_hostile_values_cost_linear_time() -> None:
    """Counted, not timed: the plain-shape path touches each piece once, and whatever it
    hands on is read by the anchored loop (already proven linear above). Counted on the
    module's source loaded as Python: the compiled build (mypyc) calls its own functions
    natively, past any replacement."""
    import importlib.util
    import sys
    from pathlib import Path

    import node.sip

    spec = importlib.util.spec_from_file_location("_auth_as_python", Path(node.sip.__file__).with_name("auth.py"))
    assert spec is not None and spec.loader is not None
    auth = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = auth  # dataclasses look their module up there
    try:
        spec.loader.exec_module(auth)
    finally:
        del sys.modules[spec.name]

    calls = []
    real = auth._params_one_by_one
    auth._params_one_by_one = lambda *a: calls.append(a) or real(*a)
    try:
        for value in ('Digest ' + 'a=b, ' * 1600, 'Digest ' + '"' * 8000, 'Digest ' + 'a="", ' * 1300,
                      'Digest ' + ', ' * 4000 + 'a=b', 'Digest a="' + 'x, ' * 2600 + '"'):
            assert len(value) <= auth.MAX_HEADER_LENGTH
            with pytest.raises(auth.AuthHeaderError):
                auth.parse_credentials(value)
    finally:
        auth._params_one_by_one = real
    assert len(calls) == 5  # each went to the loop once, no retry loops


def test_credential_fields_are_the_fields_of_parse_credentials() -> None:
    from dataclasses import astuple

    from node.sip.auth import credential_fields

    for value in (RFC2617_AUTHORIZATION, creds_for(DigestServer(SECRET)),
                  creds_for(DigestServer(SECRET), algorithm="SHA-256"),
                  'Digest username="u", realm="r", nonce="n", uri="u", response="x", algorithm=md5-SESS, userhash=TRUE'):
        assert credential_fields(value) == astuple(parse_credentials(value))


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_verify_fields_and_the_memos_give_the_same_verdicts(algorithm: str) -> None:
    from node.sip import auth

    server = DigestServer(SECRET, algorithms=(algorithm,))
    value = creds_for(server, algorithm=algorithm, password="s3cret")
    fields = auth.credential_fields(value)
    for memo in (auth._HA1_MEMO, auth._HA2_MEMO):
        memo.clear()
    for _ in range(2):  # cold, then with H(A1) and H(A2) remembered
        assert server.verify(value, "REGISTER", REALM, "s3cret", T0) is Verdict.OK
        assert server.verify_fields(fields, "REGISTER", REALM, "s3cret", T0) is Verdict.OK
        assert server.verify(parse_credentials(value), "REGISTER", REALM, "s3cret", T0) is Verdict.OK
        # the remembered H(A1) belongs to that password, H(A2) to that method
        assert server.verify_fields(fields, "REGISTER", REALM, "other", T0) is Verdict.BAD_RESPONSE
        assert server.verify_fields(fields, "INVITE", REALM, "s3cret", T0) is Verdict.BAD_RESPONSE
        assert server.verify_fields(fields, "REGISTER", REALM, None, T0) is Verdict.BAD_RESPONSE
    assert (algorithm, fields[0], REALM, "s3cret") in auth._HA1_MEMO


def test_the_digest_memos_are_bounded() -> None:
    from node.sip import auth

    server = DigestServer(SECRET)
    value = creds_for(server)
    fields = auth.credential_fields(value)
    for i in range(auth._DIGEST_MEMO + 5):
        server.verify_fields(fields, "REGISTER", REALM, f"pw{i}", T0)
        server.verify_fields(fields, f"M{i}", REALM, "pw", T0)
    assert len(auth._HA1_MEMO) <= auth._DIGEST_MEMO and len(auth._HA2_MEMO) <= auth._DIGEST_MEMO


def test_the_builtin_hashes_give_the_openssl_digests() -> None:
    from node.sip import auth

    for data in (b"", b"Mufasa:testrealm@host.com:Circle Of Life", bytes(range(256)) * 3):
        assert auth._ALGS["MD5"][0](data).hexdigest() == hashlib.md5(data).hexdigest()
        assert auth._ALGS["SHA-256"][0](data).hexdigest() == hashlib.sha256(data).hexdigest()
