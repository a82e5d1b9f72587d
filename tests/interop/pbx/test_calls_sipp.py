"""The node against real SIPp peers on loopback: registrar, B2BUA call outcomes, trunks,
DIDs, tenant isolation, and the CDR each attempt leaves behind."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"


async def _tenant(pbx, name="alpha", domain=DOMAIN, **opts):
    t = await pbx.tenant(name, domain, **opts)
    await pbx.config.create_extension(t.id, "1001", PW1, display_name="Alice Example")
    await pbx.config.create_extension(t.id, "1002", PW2, display_name="Bob")
    return t


async def _phone(pbx, tmp_path, tenant, ext, password, answer_scenario, domain=DOMAIN, hold_ms=15000, **kw):
    """A SIPp phone registered as ``ext`` that answers calls with ``answer_scenario``."""
    phone = Sipp(
        "uas_register_then_answer.xml", pbx.target, workdir=tmp_path / f"phone-{ext}",
        user=ext, domain=domain, auth_user=ext, auth_password=password,
        ooc_scenario=answer_scenario, duration_ms=hold_ms, timeout=40, **kw,
    )
    await phone.start()
    assert await pbx.wait_registered(tenant.id, ext), "phone did not register"
    return phone


def _dial(pbx, tmp_path, callee: str, scenario: str = "uac_call.xml", name: str = "c", **kw) -> Sipp:
    """A SIPp caller registered nowhere, authenticating as alpha's 1001 when challenged."""
    return Sipp(scenario, pbx.target, workdir=tmp_path / name, service=callee, user="1001", domain=DOMAIN,
                auth_user="1001", auth_password=PW1, **kw)


def _sdp_addr(body: str) -> tuple[str, int]:
    c = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert c and m, body
    return c.group(1), int(m.group(1))


async def test_register_with_digest_then_unregister(pbx, tmp_path):
    t = await _tenant(pbx)
    reg = await Sipp("uac_register_auth.xml", pbx.target, workdir=tmp_path / "r1", user="1001",
                     domain=DOMAIN, auth_user="1001", auth_password=PW1, keys={"expires": 120}).run()
    reg.assert_ok()
    assert reg.received(401)[0].header("WWW-Authenticate").startswith("Digest ")
    bindings = await pbx.locations.lookup(t.id, "1001", time.time())
    assert len(bindings) == 1 and bindings[0].source_host == "127.0.0.1"
    assert 100 < bindings[0].expires_at - time.time() <= 120
    unreg = await Sipp("uac_register_auth.xml", pbx.target, workdir=tmp_path / "r2", user="1001",
                       domain=DOMAIN, auth_user="1001", auth_password=PW1, keys={"expires": 0},
                       local_port=reg_port(reg)).run()
    unreg.assert_ok()
    assert await pbx.locations.lookup(t.id, "1001", time.time()) == []


def reg_port(result) -> int:
    contact = result.sent("REGISTER")[0].header("Contact")
    return int(re.search(r":(\d+)[;>]", contact).group(1))


async def test_wrong_password_and_unknown_user_look_the_same(pbx, tmp_path):
    t = await _tenant(pbx)
    bad = await Sipp("uac_register_auth.xml", pbx.target, workdir=tmp_path / "bad", user="1001",
                     domain=DOMAIN, auth_user="1001", auth_password="wrong-password").run()
    ghost = await Sipp("uac_register_auth.xml", pbx.target, workdir=tmp_path / "ghost", user="1999",
                       domain=DOMAIN, auth_user="1999", auth_password="whatever-pw").run()
    assert not bad.ok and not ghost.ok
    assert bad.received(401) and ghost.received(401)  # both challenged
    assert bad.received(403) and ghost.received(403)  # both refused alike
    assert bad.received(403)[0].first_line == ghost.received(403)[0].first_line
    assert await pbx.locations.lookup(t.id, "1001", time.time()) == []


async def test_call_answered_media_anchored_and_cdr(pbx, tmp_path):
    t = await _tenant(pbx)
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_answer.xml")
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_call.xml", "caller", duration_ms=1500).run()
        caller.assert_ok()
        assert caller.received(407), "INVITE was not challenged"
    finally:
        cres = await callee.stop()
    # what reached the callee: an INVITE from the PBX with the caller's identity and the relay's SDP
    invite = cres.received("INVITE")[0]
    assert "Alice Example" in invite.header("From") and "sip:1001@alpha.example" in invite.header("From")
    host, port = _sdp_addr(invite.body)
    node_cfg = pbx.node.cfg
    assert host == "127.0.0.1" and node_cfg.rtp_port_min <= port <= node_cfg.rtp_port_max
    caller_invite = caller.sent("INVITE")[-1]
    assert caller_invite.header("Call-ID") != invite.header("Call-ID")  # legs are separate dialogs
    answer = caller.received(200)[0]
    ahost, aport = _sdp_addr(answer.body)
    assert node_cfg.rtp_port_min <= aport <= node_cfg.rtp_port_max and aport != port
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert len(cdrs) == 1
    cdr = cdrs[0]
    assert (cdr.caller, cdr.callee, cdr.direction, cdr.disposition, cdr.sip_code) == (
        "1001", "1002", "internal", "answered", 200)
    assert cdr.answer is not None and cdr.billsec >= 1.0
    assert cdr.hangup_cause == "caller-bye"
    assert await pbx.wait_idle()


async def test_busy(pbx, tmp_path):
    t = await _tenant(pbx)
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_busy.xml")
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_call_expect_error.xml", "c", variables={"expected": 486}).run()
        caller.assert_ok()
    finally:
        await callee.stop()
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.disposition, cdr.sip_code, cdr.answer) == ("busy", 486, None)


async def test_no_answer_after_ring_timeout(pbx, tmp_path):
    t = await _tenant(pbx, ring_timeout=2)
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_noanswer.xml")
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_call_expect_error.xml", "c", variables={"expected": 480}).run()
        caller.assert_ok()
        await asyncio.sleep(0.5)
    finally:
        cres = await callee.stop()
    assert cres.received("CANCEL"), "the ringing phone was not cancelled"
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.disposition, cdr.sip_code) == ("no-answer", 480)
    assert cdr.end - cdr.start >= 1.9


async def test_caller_cancels(pbx, tmp_path):
    t = await _tenant(pbx)
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_noanswer.xml")
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_cancel.xml", "c", duration_ms=800).run()
        caller.assert_ok()
        await asyncio.sleep(0.5)
    finally:
        cres = await callee.stop()
    assert cres.received("CANCEL")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.disposition, cdr.sip_code, cdr.hangup_cause) == ("cancelled", 487, "caller-cancel")


async def test_hold_and_resume_cross_the_bridge(pbx, tmp_path):
    t = await _tenant(pbx)
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_hold.xml")
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_hold_resume.xml", "c", duration_ms=500).run()
        caller.assert_ok()
    finally:
        cres = await callee.stop()
    invites = cres.received("INVITE")
    assert len(invites) == 3, [m.first_line for m in cres.received()]
    assert "a=sendonly" in invites[1].body  # the hold reached the callee
    assert "a=sendonly" not in invites[2].body
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert cdr.disposition == "answered"


async def test_callee_hangs_up(pbx, tmp_path):
    t = await _tenant(pbx)
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_answer_hangup.xml", variables={"hangup_ms": 1000})
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_call_remote_bye.xml", "c", duration_ms=1000).run()
        caller.assert_ok()
    finally:
        await callee.stop()
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.disposition, cdr.hangup_cause) == ("answered", "callee-bye")


async def test_tenant_isolation(pbx, tmp_path):
    a = await _tenant(pbx, "alpha", DOMAIN)
    b = await _tenant(pbx, "beta", "beta.example")
    await pbx.config.create_extension(b.id, "2002", "pw-2002-secret")
    # beta's extension cannot register into alpha's domain
    cross = await Sipp("uac_register_auth.xml", pbx.target, workdir=tmp_path / "x", user="2002",
                       domain=DOMAIN, auth_user="2002", auth_password="pw-2002-secret").run()
    assert not cross.ok and cross.received(403)
    # nor with its own credentials for an alpha extension number
    cross2 = await Sipp("uac_register_auth.xml", pbx.target, workdir=tmp_path / "x2", user="1002",
                        domain=DOMAIN, auth_user="1002", auth_password=PW2 + "-beta").run()
    assert not cross2.ok
    # beta's 1002 registered: alpha's 1001 dialling 1002 must not reach it
    phone_b = await _phone(pbx, tmp_path, b, "1002", PW2, "uas_answer.xml", domain="beta.example")
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_call_expect_error.xml", "c", variables={"expected": 480}).run()
        caller.assert_ok()
        # and 2002 (beta only) is not reachable from alpha either: no such extension, no route
        caller2 = await _dial(pbx, tmp_path, "2002", "uac_call_expect_error.xml", "c2", variables={"expected": 404}).run()
        caller2.assert_ok()
    finally:
        bres = await phone_b.stop()
    assert not bres.received("INVITE")
    assert len(await pbx.wait_cdrs(a.id, 2)) == 2
    assert await pbx.cdrs.list(b.id) == []


async def test_outbound_call_through_trunk_with_auth(pbx, tmp_path):
    t = await _tenant(pbx)
    carrier = Sipp("uas_auth_answer.xml", None, workdir=tmp_path / "carrier", local_ip="127.0.0.3",
                   keys={"auth_user": "acct77", "auth_pass": "carrier-pw", "domain": "carrier.example"})
    await carrier.start()
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3", port=carrier.local_port,
                                  username="acct77", password="carrier-pw")
    await pbx.config.create_route(t.id, "9", "carrier", strip=1, prepend="44")
    try:
        caller = await _dial(pbx, tmp_path, "9113496000", "uac_call.xml", "c", duration_ms=500).run()
        caller.assert_ok()
    finally:
        res = await carrier.stop()
    invites = res.received("INVITE")
    assert len(invites) == 2  # challenged, then authenticated
    assert invites[1].first_line.startswith("INVITE sip:44113496000@127.0.0.3")
    assert "Authorization" in "\n".join(invites[1].text.splitlines()[:30])
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.direction, cdr.trunk, cdr.callee, cdr.disposition) == ("outbound", "carrier", "9113496000", "answered")


async def test_inbound_did_from_trunk_rings_extension(pbx, tmp_path):
    t = await _tenant(pbx)
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3")
    await pbx.config.create_did(t.id, "+441135550100", "extension", "1002")
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_answer.xml")
    try:
        caller = await Sipp("uac_call.xml", pbx.target, workdir=tmp_path / "carrier", service="441135550100",
                            user="447700900123", domain="carrier.example", local_ip="127.0.0.3",
                            duration_ms=500).run()
        caller.assert_ok()
        assert not caller.received(407)  # trunks are authenticated by address
    finally:
        cres = await callee.stop()
    invite = cres.received("INVITE")[0]
    assert "447700900123" in invite.header("From")  # caller ID passed through
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.direction, cdr.caller, cdr.callee, cdr.disposition) == ("inbound", "447700900123", "1002", "answered")


async def test_unknown_did_from_trunk_is_refused(pbx, tmp_path):
    t = await _tenant(pbx)
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3")
    caller = await Sipp("uac_call_expect_error.xml", pbx.target, workdir=tmp_path / "carrier", service="15550000",
                        user="447700900123", domain="carrier.example", local_ip="127.0.0.3",
                        variables={"expected": 404}).run()
    caller.assert_ok()


async def _metric(pbx, name: str, **labels) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{pbx.node.http_port}/metrics") as r:
            text = await r.text()
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_call_over_tcp_and_metrics(pbx, tmp_path):
    t = await _tenant(pbx)
    answered0 = await _metric(pbx, "hivepbx_call_attempts_total", outcome="answered")
    invites0 = await _metric(pbx, "hivepbx_sip_requests_total", method="INVITE", direction="in")
    callee = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_answer.xml", transport="t1")
    try:
        assert (await pbx.locations.lookup(t.id, "1002", time.time()))[0].transport == "tcp"
        caller = await _dial(pbx, tmp_path, "1002", "uac_call.xml", "c", duration_ms=300, transport="t1").run()
        caller.assert_ok()
    finally:
        cres = await callee.stop()
    assert "SIP/2.0/TCP" in cres.received("INVITE")[0].header("Via")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert cdr.disposition == "answered"
    assert await _metric(pbx, "hivepbx_call_attempts_total", outcome="answered") == answered0 + 1
    assert await _metric(pbx, "hivepbx_sip_requests_total", method="INVITE", direction="in") >= invites0 + 2
    assert await _metric(pbx, "hivepbx_registrations") >= 0


async def test_ipv6_register_and_call(tmp_path):
    from node.runtime.app import Node
    from node.transport.sockets import Listen
    from tests.interop.conftest import RunningNode, node_config
    from tests.peers.net import free_port

    port = free_port("::1")
    cfg = node_config(tmp_path, port)
    cfg = type(cfg)(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                       "listens": (Listen("udp", "::1", port),), "rtp_bind": "::"})
    async with Node(cfg) as node:
        pbx = RunningNode(node, port)
        t = await _tenant(pbx)
        target = f"[::1]:{port}"
        phone = Sipp("uas_register_then_answer.xml", target, workdir=tmp_path / "p", user="1002", domain=DOMAIN,
                     auth_user="1002", auth_password=PW2, ooc_scenario="uas_answer.xml", duration_ms=8000,
                     local_ip="::1", timeout=30)
        await phone.start()
        try:
            assert await pbx.wait_registered(t.id, "1002")
            b = (await pbx.locations.lookup(t.id, "1002", time.time()))[0]
            assert b.source_host == "::1"
            caller = await Sipp("uac_call.xml", target, workdir=tmp_path / "c", service="1002", user="1001",
                                domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=300,
                                local_ip="::1").run()
            caller.assert_ok()
        finally:
            pres = await phone.stop()
        invite = pres.received("INVITE")[0]
        assert "[::1]" in invite.header("Via")
        assert "c=IN IP6 ::1" in invite.body
        cdr = (await pbx.wait_cdrs(t.id, 1))[0]
        assert cdr.disposition == "answered"


async def test_extension_with_two_phones_rings_both_first_answer_wins(pbx, tmp_path):
    t = await _tenant(pbx)
    desk = await _phone(pbx, tmp_path, t, "1002", PW2, "uas_noanswer.xml")
    soft = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "soft", user="1002", domain=DOMAIN,
                auth_user="1002", auth_password=PW2, ooc_scenario="uas_answer.xml", duration_ms=15000, timeout=40)
    await soft.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(await pbx.locations.lookup(t.id, "1002", time.time())) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert len(await pbx.locations.lookup(t.id, "1002", time.time())) == 2
    try:
        caller = await _dial(pbx, tmp_path, "1002", "uac_call.xml", "c", duration_ms=500).run()
        caller.assert_ok()
        await asyncio.sleep(0.5)
    finally:
        dres = await desk.stop()
        sres = await soft.stop()
    assert dres.received("INVITE") and sres.received("INVITE")  # both rang
    assert dres.received("CANCEL")  # the loser was cancelled (RFC 3261 §16.7 step 10 style)
    assert sres.received("BYE")  # the winner got the call and its end
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert cdr.disposition == "answered"


async def test_refusals_leave_a_cdr_tenant_call_limit_and_bad_sdp(pbx, tmp_path):
    t = await _tenant(pbx, max_calls=1)
    carrier = Sipp("uas_noanswer.xml", None, workdir=tmp_path / "carrier", local_ip="127.0.0.3", timeout=30)
    await carrier.start()
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3", port=carrier.local_port)
    await pbx.config.create_route(t.id, "9", "carrier", strip=1)
    try:
        first = Sipp("uac_cancel.xml", pbx.target, workdir=tmp_path / "c1", service="9555", user="1001",
                     domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=3000)
        await first.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not pbx.node.service.calls and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        second = await _dial(pbx, tmp_path, "9556", "uac_call_expect_error.xml", "c2", variables={"expected": 503}).run()
        second.assert_ok()
        (await first.wait()).assert_ok()
    finally:
        await carrier.stop()
    cdrs = await pbx.wait_cdrs(t.id, 2)
    by_callee = {c.callee: c for c in cdrs}
    assert by_callee["9556"].sip_code == 503 and by_callee["9556"].hangup_cause == "tenant-call-limit"
    assert by_callee["9555"].disposition == "cancelled"
