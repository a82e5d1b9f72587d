"""Guard: flood, malformed budget, scanners, brute force, overload (sans-I/O, fake clock)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from node.sip.errors import RemoteProtocolError
from node.sip.message import Request, make_response
from node.sip.parser import parse_datagram
from sbc.protection import Guard, GuardConfig, Verdict


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def req(method: str = "OPTIONS", ua: str | None = "Yealink T46", *, to_tag: str | None = None,
        auth: bool = False, user: str = "100", display: str = "") -> Request:
    lines = [
        f"{method} sip:{user}@pbx.example.com SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        f"From: {display}<sip:{user}@pbx.example.com>;tag=abc",
        f"To: <sip:{user}@pbx.example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: c1@203.0.113.5",
        f"CSeq: 1 {method}",
    ]
    if ua is not None:
        lines.append(f"User-Agent: {ua}")
    if auth:
        lines.append(f'Authorization: Digest username="{user}", realm="pbx.example.com", nonce="n", '
                     f'uri="sip:pbx.example.com", response="00000000000000000000000000000000"')
    lines.append("Content-Length: 0")
    msg = parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def blocked(cause: str) -> float:
    return REGISTRY.get_sample_value("hivepbx_sbc_blocked_total", {"cause": cause}) or 0.0


SRC = ("203.0.113.5", 5060)
OTHER = ("198.51.100.7", 5060)


def make(**cfg) -> tuple[Guard, Clock]:
    clock = Clock()
    return Guard(GuardConfig(**cfg), clock=clock), clock


def test_accepts_ordinary_traffic() -> None:
    g, _ = make()
    v = g.check_request(req(), SRC)
    assert v.accepted and not v.dropped and not v.rejected and v.cause == ""


def test_flood_bans_source_and_ban_expires() -> None:
    g, clock = make(window=2.0, density=10, ban_time=60.0)
    before = blocked("flood")
    verdicts = [g.check_request(req(), SRC) for _ in range(11)]
    assert all(v.accepted for v in verdicts[:10])
    assert verdicts[10].dropped and verdicts[10].cause == "flood"
    assert blocked("flood") == before + 1
    assert g.banned(SRC[0])
    # the ban drops everything, responses included, without answering
    clock.t += 30
    assert g.check_request(req(), SRC).cause == "banned"
    # another source is unaffected
    assert g.check_request(req(), OTHER).accepted
    clock.t += 31
    assert not g.banned(SRC[0])
    assert g.check_request(req(), SRC).accepted


def test_rate_below_density_never_bans() -> None:
    g, clock = make(window=1.0, density=5)
    for _ in range(100):
        for _ in range(5):
            assert g.check_request(req(), SRC).accepted
        clock.t += 1.0


def test_same_ip_other_ports_count_together() -> None:
    g, _ = make(density=5)
    out = [g.check_request(req(), (SRC[0], 1000 + i)) for i in range(6)]
    assert out[-1].cause == "flood"


def test_malformed_budget() -> None:
    g, clock = make(malformed_budget=3, malformed_window=60.0)
    err = RemoteProtocolError("bad Via")
    assert all(g.check_request(err, SRC).accepted for _ in range(3))  # answered 400 as usual
    v = g.check_request(None, SRC)
    assert v.dropped and v.cause == "malformed"
    assert g.check_request(req(), SRC).cause == "banned"
    # a new window resets the budget of another source
    assert g.check_request(err, OTHER).accepted
    clock.t += 61
    assert all(g.check_request(err, OTHER).accepted for _ in range(3))


@pytest.mark.parametrize("ua", ["friendly-scanner", "sipvicious 0.3", "sipcli/v1.8", "VaxSIPUserAgent/3.1",
                                "Friendly-Scanner", "PPLSIP-UA"])
def test_scanner_user_agents_are_dropped_and_banned(ua: str) -> None:
    g, _ = make()
    v = g.check_request(req(ua=ua), SRC)
    assert v.dropped and v.cause == "scanner" and v.status == 0
    assert g.check_request(req(), SRC).cause == "banned"


def test_legit_user_agents_pass() -> None:
    g, _ = make()
    for ua in ("Yealink SIP-T46S", "baresip v3.0", "Asterisk PBX 20", "Linphone/5.2", None):
        assert g.check_request(req(ua=ua), SRC).accepted


def test_auth_failures_ban_by_source_not_by_user() -> None:
    g, _ = make(auth_failures=5)
    # wrong password and unknown user both come back 403 from the node: counted alike
    for i in range(4):
        r = req("REGISTER", auth=True, user=str(100 + i))
        assert g.check_request(r, SRC).accepted
        g.observe_response(r, make_response(r, 403), SRC)
    assert not g.banned(SRC[0])
    r = req("REGISTER", auth=True, user="unknown")
    g.observe_response(r, make_response(r, 401), SRC)
    assert g.banned(SRC[0])
    assert g.check_request(req("REGISTER"), SRC).cause == "banned"
    assert not g.banned(OTHER[0])


def test_challenges_without_credentials_have_a_larger_allowance() -> None:
    g, clock = make(auth_failures=3, auth_challenges=10, auth_window=60.0)
    r = req("INVITE")
    for _ in range(9):
        g.observe_response(r, make_response(r, 407), SRC)
    assert not g.banned(SRC[0])
    clock.t += 61  # a new window: a phone challenged once per call never gets there
    for _ in range(9):
        g.observe_response(r, make_response(r, 407), SRC)
    assert not g.banned(SRC[0])
    g.observe_response(r, make_response(r, 407), SRC)
    assert g.banned(SRC[0])


def test_successes_and_other_methods_are_not_failures() -> None:
    g, _ = make(auth_failures=2)
    r = req("REGISTER", auth=True)
    for _ in range(5):
        g.observe_response(r, make_response(r, 200), SRC)
        o = req("OPTIONS", auth=True)
        g.observe_response(o, make_response(o, 403), SRC)
    assert not g.banned(SRC[0])


def test_trusted_sources_are_never_banned() -> None:
    g, _ = make(density=3, trusted=("10.1.0.0/16", "192.0.2.9"))
    for src in (("10.1.2.3", 5060), ("192.0.2.9", 5060)):
        for _ in range(20):
            assert g.check_request(req(ua="friendly-scanner"), src).accepted
            assert g.check_request(None, src).accepted


def test_overload_answers_503_for_new_work_only() -> None:
    live = [0]
    g = Guard(GuardConfig(max_transactions=10, retry_after=7), clock=Clock(), transactions=lambda: live[0])
    assert g.check_request(req("INVITE"), SRC).accepted
    live[0] = 10
    before = blocked("overload")
    v = g.check_request(req("INVITE"), SRC)
    assert v.rejected and v.status == 503 and ("Retry-After", "7") in v.headers
    assert blocked("overload") == before + 1
    # calls in progress can still end or be acknowledged
    for method, tag in (("BYE", "x"), ("ACK", "x"), ("CANCEL", None), ("INVITE", "x")):
        assert g.check_request(req(method, to_tag=tag), SRC).accepted, method


def test_responses_only_checked_against_bans() -> None:
    g, _ = make(density=2)
    r = req()
    resp = make_response(r, 200)
    for _ in range(10):
        assert g.check_request(resp, SRC).accepted
    g.ban(SRC[0], 10)
    assert g.check_request(resp, SRC).cause == "banned"
    assert g.unban(SRC[0]) and g.check_request(resp, SRC).accepted


def test_memory_bounded_under_many_sources() -> None:
    g, _ = make(max_sources=1000, max_bans=100, density=1)
    for i in range(20000):
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        g.check_request(req(), (ip, 5060))
        g.check_request(req(), (ip, 5060))  # second one bans
    assert len(g._sources) <= 1000 and len(g._bans) <= 100
    assert g._sources.evicted >= 19000


def test_blocks_are_logged_with_reason_but_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    g, clock = make(density=1, log_rate=5.0)
    with caplog.at_level(logging.INFO, logger="sbc.protection"):
        for i in range(50):
            g.check_request(req(), (f"10.9.0.{i}", 1))
            g.check_request(req(), (f"10.9.0.{i}", 1))
    records = [r for r in caplog.records if r.name == "sbc.protection"]
    assert 1 <= len(records) <= 6
    assert records[0].cause == "flood" and "flood" in records[0].getMessage()
    clock.t += 10
    with caplog.at_level(logging.INFO, logger="sbc.protection"):
        g.check_request(req(), ("10.9.1.1", 1))
        g.check_request(req(), ("10.9.1.1", 1))
    assert caplog.records[-1].suppressed > 0  # the dropped lines are accounted for


def test_verdict_constants_do_not_allocate() -> None:
    g, _ = make(density=1)
    g.check_request(req(), SRC)
    a = g.check_request(req(), SRC)
    b = g.check_request(req(), SRC)
    assert isinstance(a, Verdict) and a.cause == "flood" and b.cause == "banned"
    assert g.check_request(req(), OTHER) is g.check_request(req(), ("198.51.100.8", 1))


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="density"):
        GuardConfig(density=0)
    with pytest.raises(ValueError):
        GuardConfig(trusted=("not-an-ip",))


def test_accepts_flows_as_sources() -> None:
    from node.sip.flow import Flow

    g, _ = make(density=2, malformed_budget=1)
    flow = Flow("udp", SRC, ("127.0.0.1", 5060))
    assert g.check_request(req(), flow).accepted
    assert g.check_request(req(), SRC).accepted  # same source either way
    assert g.check_request(req(), flow).cause == "flood"
    other = Flow("tcp", OTHER, ("127.0.0.1", 5060), 7)
    assert g.unparseable(other).accepted
    assert g.unparseable(other).cause == "malformed"
    r = req("REGISTER", auth=True)
    g.observe_response(r, make_response(r, 403), other)  # banned already: harmless
    assert g.banned(OTHER[0])


def test_config_from_the_sbc_toml_table() -> None:
    cfg = GuardConfig.from_dict({"density": 40, "window": 1, "trusted": ["10.0.0.0/8"], "max_transactions": 5000})
    assert cfg.density == 40 and cfg.window == 1.0 and cfg.trusted == ("10.0.0.0/8",)
    for bad, match in (({"densty": 3}, "densty"), ({"density": "3"}, "density"), ({"window": -1}, "window"),
                       ({"trusted": "10.0.0.0/8"}, "trusted"), ({"trusted": ["10.0.0.0/33"]}, "10.0.0.0/33")):
        with pytest.raises(ValueError, match=match):
            GuardConfig.from_dict(bad)


def test_ipv6_sources_are_judged_by_their_64() -> None:
    g, _ = make(density=5, trusted=("2001:db8:ffff::1",))
    # a host rotating through its /64 is one source
    out = [g.check_request(req(), (f"2001:db8:1:2::{i:x}", 5060)) for i in range(6)]
    assert out[-1].cause == "flood"
    assert g.banned("2001:db8:1:2::abcd") and g.banned("2001:0db8:0001:0002:ffff::1")
    assert not g.banned("2001:db8:1:3::1")  # the neighbouring /64 is someone else
    assert g.check_request(req(), ("2001:db8:1:3::1", 5060)).accepted
    # IPv4-mapped addresses are their IPv4 address
    assert g.check_request(req(), ("::ffff:198.51.100.7", 5060)).accepted
    for _ in range(5):
        g.check_request(req(), OTHER)
    assert g.banned("::ffff:198.51.100.7") and g.banned(OTHER[0])
    # a trusted IPv6 host (and its /64) is never limited
    for i in range(20):
        assert g.check_request(req(ua="friendly-scanner"), (f"2001:db8:ffff::{i + 1:x}", 5060)).accepted
    assert g.unban("2001:db8:1:2::1") and not g.banned("2001:db8:1:2::abcd")


def test_scanner_from_display_name_but_not_a_domain_that_contains_a_word() -> None:
    g, _ = make()
    assert g.check_request(req(ua="Linphone", display='"sipvicious" '), SRC).cause == "scanner"
    # the same words in a URI (a domain, a user) are not a signature
    assert g.check_request(req(ua="Linphone", user="sipvicious"), OTHER).accepted
    assert g.check_request(req(ua="Linphone", display='"Alice Friendly" '), OTHER).accepted
