"""Registrar rules (RFC 3261 §10.3) on the real embedded store, with real digest answers."""

from __future__ import annotations

import time

import pytest

from node.embedded import open_embedded
from node.pbx.authn import Authenticator
from node.pbx.registrar import Registrar
from node.sip.auth import answer_challenge
from node.sip.flow import Flow
from node.sip.message import Request

FLOW = Flow("udp", ("192.0.2.10", 40000), ("0.0.0.0", 5060))
DOMAIN = "alpha.example"


@pytest.fixture
async def env(tmp_path):
    b = open_embedded(tmp_path)
    t = await b.config.create_tenant("alpha", DOMAIN)
    await b.config.create_extension(t.id, "1001", "secret-1001")
    reg = Registrar(b.config, b.locations, Authenticator(b"k" * 32), min_expires=60, max_expires=3600)
    yield reg, b, t
    b.close()


def _register(user="1001", contact="<sip:1001@10.0.0.5:5060>", expires=None, cseq=1, call_id="reg-1",
              auth=None, domain=DOMAIN):
    headers = [
        ("Via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-r" + str(cseq)),
        ("From", f"<sip:{user}@{domain}>;tag=a1"),
        ("To", f"<sip:{user}@{domain}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    if expires is not None:
        headers.append(("Expires", str(expires)))
    if auth:
        headers.append(("Authorization", auth))
    return Request("REGISTER", f"sip:{domain}", headers)


async def _authed(reg, password="secret-1001", **kw):
    first = await reg.handle(_register(**kw), FLOW, "t1")
    assert first.status == 401
    challenge = first.get("WWW-Authenticate")
    user = kw.get("user", "1001")
    cred = answer_challenge(challenge, "REGISTER", f"sip:{kw.get('domain', DOMAIN)}", user, password, "cn", 1)
    kw["cseq"] = kw.get("cseq", 1) + 1
    return await reg.handle(_register(auth=cred, **kw), FLOW, "t1")


async def test_register_stores_source_address_for_nat(env):
    reg, b, t = env
    resp = await _authed(reg, expires=300)
    assert resp.status == 200
    (binding,) = await b.locations.lookup(t.id, "1001", time.time())
    assert (binding.source_host, binding.source_port, binding.contact) == ("192.0.2.10", 40000, "sip:1001@10.0.0.5:5060")
    assert "expires=" in resp.get("Contact")


async def test_interval_too_brief_is_423_with_min_expires(env):
    reg, _, _ = env
    resp = await _authed(reg, expires=10)
    assert resp.status == 423 and resp.get("Min-Expires") == "60"


async def test_expiry_is_clamped_to_max(env):
    reg, b, t = env
    assert (await _authed(reg, expires=999999)).status == 200
    (binding,) = await b.locations.lookup(t.id, "1001", time.time())
    assert binding.expires_at - time.time() <= 3600


async def test_several_contacts_and_star_unregister(env):
    reg, b, t = env
    await _authed(reg, contact="<sip:1001@10.0.0.5:5060>", cseq=1)
    await _authed(reg, contact="<sip:1001@10.0.0.6:5060>;q=0.5", cseq=3, call_id="reg-2")
    assert len(await b.locations.lookup(t.id, "1001", time.time())) == 2
    star = await _authed(reg, contact="*", expires=0, cseq=5)
    assert star.status == 200
    assert await b.locations.lookup(t.id, "1001", time.time()) == []


async def test_star_without_expires_zero_is_400(env):
    reg, _, _ = env
    assert (await _authed(reg, contact="*", expires=60)).status == 400


async def test_out_of_order_cseq_does_not_undo_a_newer_registration(env):
    reg, b, t = env
    await _authed(reg, cseq=10, expires=300)
    # an older REGISTER of the same Call-ID (delayed in the network) asking to remove it
    await _authed(reg, cseq=3, expires=0)
    assert len(await b.locations.lookup(t.id, "1001", time.time())) == 1


async def test_wrong_password_unknown_user_and_foreign_domain_all_403(env):
    reg, b, t = env
    assert (await _authed(reg, password="wrong-pass")).status == 403
    assert (await _authed(reg, user="1999", password="x")).status == 403
    other = await b.config.create_tenant("beta", "beta.example")
    await b.config.create_extension(other.id, "1001", "beta-secret")
    # beta's password does not work in alpha's realm, alpha's does not work in beta's
    assert (await _authed(reg, password="beta-secret")).status == 403
    assert (await _authed(reg, domain="beta.example")).status == 403
    assert await b.locations.lookup(t.id, "1001", time.time()) == []


async def test_credentials_of_one_extension_cannot_register_another(env):
    reg, b, t = env
    await b.config.create_extension(t.id, "1002", "secret-1002")
    first = await reg.handle(_register(user="1002"), FLOW, "t1")
    cred = answer_challenge(first.get("WWW-Authenticate"), "REGISTER", f"sip:{DOMAIN}", "1001", "secret-1001", "c", 1)
    resp = await reg.handle(_register(user="1002", auth=cred, cseq=2), FLOW, "t1")
    assert resp.status == 403
    assert await b.locations.lookup(t.id, "1002", time.time()) == []


async def test_stale_nonce_gets_a_fresh_challenge_with_stale_true(env, monkeypatch):
    reg, _, _ = env
    first = await reg.handle(_register(), FLOW, "t1")
    cred = answer_challenge(first.get("WWW-Authenticate"), "REGISTER", f"sip:{DOMAIN}", "1001", "secret-1001", "c", 1)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    resp = await reg.handle(_register(auth=cred, cseq=2), FLOW, "t1")
    assert resp.status == 401 and "stale=true" in resp.get("WWW-Authenticate").lower()
