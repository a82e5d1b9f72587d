"""Busy lamps: a SIPp watcher subscribed to an extension's dialog state (RFC 4235) sees
early → confirmed → terminated when the extension is called, answers and hangs up; and a
watcher cannot reach another tenant's extensions."""

from __future__ import annotations

import re

import pytest

from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW = {"1001": "pw-1001-secret", "1002": "pw-1002-secret", "1003": "pw-1003-secret"}


async def _tenant(pbx, name="alpha", domain=DOMAIN):
    t = await pbx.tenant(name, domain)
    for ext, pw in PW.items():
        await pbx.config.create_extension(t.id, ext, pw)
    return t


def _states(body: str) -> list[str]:
    return re.findall(r"<state>(\w+)</state>", body)


async def test_watcher_sees_early_confirmed_terminated(pbx, tmp_path):
    t = await _tenant(pbx)
    callee = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "phone-1002", user="1002",
                  domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], ooc_scenario="uas_answer.xml",
                  duration_ms=15000, timeout=40)
    await callee.start()
    watcher = Sipp("uac_subscribe_dialog.xml", pbx.target, workdir=tmp_path / "watcher", service="1002",
                   user="1003", domain=DOMAIN, auth_user="1003", auth_password=PW["1003"],
                   keys={"expires": 120}, timeout=30)
    try:
        assert await pbx.wait_registered(t.id, "1002"), "phone did not register"
        await watcher.start()
        subs = pbx.node.service.subscriptions
        assert await until(lambda: subs.count == 1), "subscription not established"
        caller = await Sipp("uac_call.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
                            domain=DOMAIN, auth_user="1001", auth_password=PW["1001"], duration_ms=1000).run()
        caller.assert_ok()
        wres = await watcher.wait()
    finally:
        await callee.stop()
        if watcher.running:
            await watcher.stop()
    wres.assert_ok()
    assert wres.received(407) or wres.received(401), "SUBSCRIBE was not challenged"
    ok = wres.received(200)[0]
    assert ok.header("Expires") == "120"
    notifies = wres.received("NOTIFY")
    assert len(notifies) == 5
    for n in notifies:
        assert n.header("Event") == "dialog"
        assert n.header("Content-Type") == "application/dialog-info+xml"
        assert 'entity="sip:1002@alpha.example"' in n.body
    assert [_states(n.body) for n in notifies] == [[], ["early"], ["confirmed"], ["terminated"], []]
    assert 'direction="recipient"' in notifies[1].body and "sip:1001@alpha.example" in notifies[1].body
    versions = [int(re.search(r'version="(\d+)"', n.body).group(1)) for n in notifies]
    assert versions == [0, 1, 2, 3, 4]
    assert [n.header("Subscription-State").split(";")[0] for n in notifies] == ["active"] * 4 + ["terminated"]
    assert subs.count == 0


async def test_cannot_watch_an_extension_outside_the_own_tenant(pbx, tmp_path):
    await _tenant(pbx)
    beta = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(beta.id, "2001", "pw-2001-secret")
    # alpha's 1003 asks for 2001, which only beta has: the resource is looked up in alpha alone
    other = await Sipp("uac_subscribe_dialog.xml", pbx.target, workdir=tmp_path / "x",
                       service="2001", user="1003", domain=DOMAIN, auth_user="1003", auth_password=PW["1003"],
                       keys={"expires": 120}, timeout=8).run()
    assert not other.ok
    assert other.received(404)  # 2001 is not an alpha extension, whatever domain is asked
    assert pbx.node.service.subscriptions.count == 0
