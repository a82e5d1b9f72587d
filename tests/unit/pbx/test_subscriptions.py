"""The subscription server and busy lamp state, against a fake endpoint: auth like INVITE,
tenant scope, Expires rules, NOTIFY on change, expiry; and the pure XML bodies."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest

from node.embedded import open_embedded
from node.pbx.authn import Authenticator
from node.pbx.subscriptions import LineStates, SubscriptionServer
from node.sip.auth import answer_challenge
from node.sip.errors import SipError
from node.sip.events import DialogInfo, dialog_info_xml, parse_event, pidf_xml
from node.sip.flow import Flow
from node.sip.message import Request

FLOW = Flow("udp", ("192.0.2.10", 40000), ("0.0.0.0", 5060))
DOMAIN = "alpha.example"


class Endpoint:
    def __init__(self) -> None:
        self.responses = []
        self.requests = []

    def send_response(self, resp) -> None:
        self.responses.append(resp)

    def send_request(self, req, flow):
        self.requests.append(req)
        return SimpleNamespace(tu=None)

    def sent_by(self, flow) -> str:
        return "127.0.0.1:5060"


@pytest.fixture
async def env(tmp_path):
    b = open_embedded(tmp_path)
    t = await b.config.create_tenant("alpha", DOMAIN)
    beta = await b.config.create_tenant("beta", "beta.example")
    for ext in ("1001", "1002"):
        await b.config.create_extension(t.id, ext, "secret-" + ext)
    await b.config.create_extension(beta.id, "2001", "secret-2001")
    ep = Endpoint()
    server = SubscriptionServer(ep, b.config, Authenticator(b"k" * 32), asyncio.get_running_loop(), min_expires=60)
    lines = LineStates(server, b.config)
    yield server, lines, ep, t, beta
    b.close()


def _subscribe(resource="1002", host=DOMAIN, event="dialog", expires=120, cseq=1, auth=None, to_tag=None, user="1001"):
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.10:40000;branch=z9hG4bK-s{cseq}"),
        ("From", f"<sip:{user}@{DOMAIN}>;tag=w1"),
        ("To", f"<sip:{resource}@{host}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", "sub-1"), ("CSeq", f"{cseq} SUBSCRIBE"),
        ("Contact", "<sip:1001@192.0.2.10:40000>"), ("Event", event), ("Expires", str(expires)),
    ]
    if auth:
        headers.append(("Proxy-Authorization", auth))
    return Request("SUBSCRIBE", f"sip:{resource}@{host}", headers)


async def _authed(server, ep, password="secret-1001", **kw):
    await server.handle_subscribe(_subscribe(**kw), FLOW)
    challenge = ep.responses[-1]
    assert challenge.status == 407
    cred = answer_challenge(challenge.get("Proxy-Authenticate"), "SUBSCRIBE", "sip:x", kw.get("user", "1001"),
                            password, "cn", 1)
    await server.handle_subscribe(_subscribe(auth=cred, cseq=2, **kw), FLOW)
    return ep.responses[-1]


def _call(tenant, caller_ext="1001", callee_ext=None):
    return SimpleNamespace(
        id="call-1", tenant=tenant, invite=SimpleNamespace(call_id="inv-1"),
        caller=SimpleNamespace(number=caller_ext, display="Alice", domain=tenant.domain, extension=object()),
        plan=SimpleNamespace(callee="1002", callee_ext=callee_ext),
    )


def _states(req) -> list[str]:
    return re.findall(r"<state>(\w+)</state>", req.body.decode())


async def test_subscribe_notify_on_call_states_then_unsubscribe(env):
    server, lines, ep, t, _ = env
    resp = await _authed(server, ep)
    assert resp.status == 200 and resp.get("Expires") == "120" and server.count == 1
    assert _states(ep.requests[-1]) == [] and ep.requests[-1].get("Subscription-State").startswith("active;expires=")
    callee = SimpleNamespace(number="1002", tenant_id=t.id)
    call = _call(t, callee_ext=callee)
    for state in ("early", "confirmed", "confirmed", "terminated", "terminated"):
        lines.on_call_state(call, state)
    assert [_states(r) for r in ep.requests[1:]] == [["early"], ["confirmed"], ["terminated"]]  # no repeats
    assert 'direction="recipient"' in ep.requests[1].body.decode()
    tag = resp.to.tag
    server.in_dialog(_subscribe(expires=0, cseq=3, to_tag=tag), None)
    assert ep.responses[-1].status == 200
    assert ep.requests[-1].get("Subscription-State") == "terminated;reason=timeout"
    assert server.count == 0
    assert server.in_dialog(_subscribe(cseq=4, to_tag=tag), None) is False  # gone: the service answers 481


async def test_wrong_password_unknown_package_short_expires(env):
    server, _, ep, _, _ = env
    assert (await _authed(server, ep, password="wrong")).status == 403
    await server.handle_subscribe(_subscribe(event="message-summary"), FLOW)
    assert ep.responses[-1].status == 489 and ep.responses[-1].get("Allow-Events") == "dialog, presence"
    await server.handle_subscribe(_subscribe(expires=10), FLOW)
    assert ep.responses[-1].status == 423 and ep.responses[-1].get("Min-Expires") == "60"
    await server.handle_subscribe(_subscribe(event=""), FLOW)
    assert ep.responses[-1].status == 400
    assert server.count == 0 and not ep.requests


async def test_tenant_scope(env):
    server, _, ep, _, _ = env
    assert (await _authed(server, ep, resource="2001", host="beta.example")).status == 403
    ep.responses.clear()
    assert (await _authed(server, ep, resource="2001")).status == 404  # not an alpha extension
    assert server.count == 0


async def test_subscription_expires_with_a_final_notify(env):
    server, _, ep, _, _ = env
    server.min_expires = 0
    assert (await _authed(server, ep, expires=1)).status == 200
    await asyncio.sleep(1.3)
    assert ep.requests[-1].get("Subscription-State") == "terminated;reason=timeout" and server.count == 0


async def test_failed_notify_ends_the_subscription(env):
    server, _, ep, _, _ = env
    await _authed(server, ep)
    sub = next(iter(server._dialogs.values()))
    sub.on_sip_response(SimpleNamespace(status=481), None)
    assert server.count == 0


def test_bodies_and_event_header():
    assert parse_event("Dialog;id=7") == ("dialog", "7")
    with pytest.raises(SipError):
        parse_event("  ")
    xml = dialog_info_xml("sip:1002@a.example", 3, [DialogInfo("d<1", "c&1", "initiator", "early", "sip:x@a", 'A "b"')])
    text = xml.decode()
    assert 'version="3"' in text and 'state="full"' in text and 'id="d&lt;1"' in text and 'call-id="c&amp;1"' in text
    assert "<state>early</state>" in text and 'display=\'A "b"\'' in text
    with pytest.raises(ValueError):
        dialog_info_xml("sip:x@a", 0, [DialogInfo("d", "c", "initiator", "ringing")])
    p = pidf_xml("sip:1002@a.example", True, "On the phone").decode()
    assert "<basic>open</basic>" in p and "<note>On the phone</note>" in p


async def test_presence_follows_the_line(env):
    server, lines, ep, t, _ = env
    resp = await _authed(server, ep, event="presence")
    assert resp.status == 200
    first = ep.requests[-1]
    assert first.get("Content-Type") == "application/pidf+xml" and first.get("Event") == "presence"
    assert b"<note>Available</note>" in first.body and b"<basic>open</basic>" in first.body
    call = _call(t, callee_ext=SimpleNamespace(number="1002", tenant_id=t.id))
    lines.on_call_state(call, "early")
    assert b"<note>Ringing</note>" in ep.requests[-1].body
    lines.on_call_state(call, "confirmed")
    assert b"<note>On the phone</note>" in ep.requests[-1].body
    lines.on_call_state(call, "terminated")
    assert b"<note>Available</note>" in ep.requests[-1].body


async def test_a_call_in_another_tenant_lights_nothing_here(env):
    server, lines, ep, t, beta = env
    await _authed(server, ep)
    before = len(ep.requests)
    # beta has its own 1002-like line; alpha's watcher of 1002 must not see beta's calls
    call = _call(beta, caller_ext="1002", callee_ext=SimpleNamespace(number="1002", tenant_id=beta.id))
    lines.on_call_state(call, "early")
    assert len(ep.requests) == before
    assert lines.dialogs(beta.id, "1002") and not lines.dialogs(t.id, "1002")


async def test_a_package_can_narrow_who_watches_what(env):
    server, _, ep, t, _ = env

    class OwnOnly:  # like message-summary: a mailbox for its own extension only
        name = "message-summary"
        content_type = "application/simple-message-summary"
        default_expires = 3600

        async def resource_exists(self, tenant, resource):
            return True

        def authorize(self, tenant, subscriber, resource):
            return subscriber == resource

        def body(self, tenant, resource, version):
            return b"Messages-Waiting: no\r\n"

    server.register(OwnOnly())
    assert (await _authed(server, ep, event="message-summary", resource="1002")).status == 403
    ep.responses.clear()
    resp = await _authed(server, ep, event="message-summary", resource="1001")
    assert resp.status == 200 and ep.requests[-1].body == b"Messages-Waiting: no\r\n"
    assert ep.requests[-1].get("Content-Type") == "application/simple-message-summary"
