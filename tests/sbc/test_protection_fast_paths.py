"""The Guard's shortcuts for the common case give the same answers as the full path:
trusted addresses, tenants without an edge policy, calls ended when none is counted."""

from __future__ import annotations

from node.sip.message import Request, make_response
from node.sip.parser import parse_datagram
from sbc.protection import Guard, GuardConfig

NODE = ("10.9.0.1", 5060)
PHONE = ("203.0.113.5", 5060)


def invite(call_id: str = "c1@x", to_tag: str | None = None, method: str = "INVITE") -> Request:
    raw = "\r\n".join([
        f"{method} sip:0034911234567@acme.example SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        "From: <sip:100@acme.example>;tag=abc",
        "To: <sip:0034911234567@acme.example>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        "Content-Length: 0", "", "",
    ]).encode()
    msg = parse_datagram(raw)
    assert isinstance(msg, Request)
    return msg


def test_trusted_address_keeps_no_rate_state_but_honours_bans_and_the_cap() -> None:
    live = [0]
    g = Guard(GuardConfig(trusted=(NODE[0],), density=2, max_transactions=3), transactions=lambda: live[0])
    for _ in range(50):
        assert g.check_request(invite(), NODE).accepted  # never rate-limited
    assert len(g._sources) == 0
    live[0] = 3  # at the cap: new work from a trusted node gets 503, in-dialog work still passes
    v = g.check_request(invite(), NODE)
    assert v.rejected and v.status == 503
    assert g.check_request(invite(to_tag="t", method="BYE"), NODE).accepted
    assert g.check_request(invite(to_tag="t"), NODE).accepted  # a re-INVITE
    live[0] = 0
    g.ban(NODE[0], 60)  # an operator's ban still holds
    assert g.check_request(invite(), NODE).dropped
    assert g.unban(NODE[0]) and g.check_request(invite(), NODE).accepted


def test_unrestricted_tenant_is_admitted_without_touching_the_counters() -> None:
    g = Guard(GuardConfig(tenants={"limited.example": {"max_calls": 1}}))
    table = g.tenants.table
    for i in range(3):
        assert g.admit_call("free.example", f"f{i}", PHONE, outbound=True).accepted
    assert table.live() == 0 and not table.has_call(table.key("f0"))
    # an internal call of a limited tenant is not counted either
    assert g.admit_call("limited.example", "int1", PHONE, outbound=True, external=False).accepted
    assert table.live() == 0
    g.call_ended("f0")  # nothing counted: a no-op
    # a limited tenant is counted and refused at its limit, and its end still releases it
    assert g.admit_call("limited.example", "L1", PHONE, outbound=True).accepted
    assert g.tenants.active_calls("limited.example") == 1
    v = g.admit_call("limited.example", "L2", PHONE, outbound=True)
    assert v.rejected and v.status == 503
    assert g.admit_call("limited.example", "L1", PHONE, outbound=True).accepted  # the same call again
    g.call_ended("f1")  # another tenant's uncounted call ending changes nothing
    assert g.tenants.active_calls("limited.example") == 1
    g.call_ended("L1")
    assert g.tenants.active_calls("limited.example") == 0 and table.live() == 0
    assert g.admit_call("limited.example", "L2", PHONE, outbound=True).accepted


def test_answer_of_a_counted_call_starts_its_usage_even_beside_uncounted_ones() -> None:
    wall = [1_800_000_000.0]
    g = Guard(GuardConfig(tenants={"acme.example": {"max_daily_usage": 100}}), wall_clock=lambda: wall[0])
    ok = make_response(invite("u1"), 200, "OK")
    g.observe_response(invite("free1"), make_response(invite("free1"), 200, "OK"), PHONE)  # nothing counted yet
    assert g.admit_call("acme.example", "u1", PHONE, outbound=True).accepted
    g.observe_response(invite("u1"), ok, PHONE)
    wall[0] += 30
    g.call_ended("u1")
    assert g.tenants.usage_today("acme.example", wall[0]) == 30.0
