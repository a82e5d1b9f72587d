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


def _listed(resp) -> list[str]:
    """The contacts a 200 lists, in order."""
    return [v.split(">")[0].lstrip("<") for n, v in resp.headers if n == "Contact"]


async def _stored(b, t) -> list[str]:
    return [x.contact for x in await b.locations.lookup(t.id, "1001", time.time())]


async def test_the_200_lists_what_the_store_holds_after_each_kind_of_change(env):
    """The registrar answers a first registration and a refresh of the one binding without
    reading the bindings back: the 200 must still list exactly what the store holds."""
    reg, b, t = env
    a, c = "<sip:1001@10.0.0.5:5060>", "<sip:1001@10.0.0.6:5060>"
    first = await _authed(reg, contact=a, expires=300, cseq=1)  # first registration
    assert _listed(first) == await _stored(b, t) == ["sip:1001@10.0.0.5:5060"]
    assert first.get("Contact").endswith(("expires=300", "expires=299"))
    refresh = await _authed(reg, contact=a, expires=600, cseq=3)  # a refresh of it
    assert _listed(refresh) == await _stored(b, t) == ["sip:1001@10.0.0.5:5060"]
    assert refresh.get("Contact").endswith(("expires=600", "expires=599"))
    other = await _authed(reg, contact=c, expires=300, cseq=5, call_id="reg-2")  # a second phone
    assert sorted(_listed(other)) == sorted(await _stored(b, t)) == ["sip:1001@10.0.0.5:5060", "sip:1001@10.0.0.6:5060"]
    again = await _authed(reg, contact=a, expires=300, cseq=7)  # refresh while another is bound
    assert sorted(_listed(again)) == sorted(await _stored(b, t)) and len(_listed(again)) == 2
    gone = await _authed(reg, contact=c, expires=0, cseq=7, call_id="reg-2")  # removal
    assert _listed(gone) == await _stored(b, t) == ["sip:1001@10.0.0.5:5060"]
    # a replay (same Call-ID, CSeq not higher) changes nothing and lists what is there
    replay = await _authed(reg, contact=a, expires=900, cseq=5)
    assert replay.status == 200
    assert _listed(replay) == await _stored(b, t) == ["sip:1001@10.0.0.5:5060"]
    assert not replay.get("Contact").endswith("expires=900")


async def test_an_expired_binding_is_not_listed_with_a_new_one(env):
    reg, b, t = env
    from node.model import Binding

    now = time.time()
    await b.locations.save(Binding(t.id, "1001", "sip:1001@10.0.0.9:5060", "192.0.2.9", 5060, "udp",
                                   now - 5, "old", 1, "", 1.0, "local"))
    resp = await _authed(reg, contact="<sip:1001@10.0.0.5:5060>", expires=300)
    assert _listed(resp) == await _stored(b, t) == ["sip:1001@10.0.0.5:5060"]
