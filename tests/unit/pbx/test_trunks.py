"""Outbound trunk registration (RFC 3261 §10.2) against a fake endpoint and hand-fired timers:
the carrier's side is played by the test (its digest checks by our own DigestServer)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import pytest

from node.embedded import open_embedded
from node.model import Tenant, Trunk
from node.pbx.authn import Authenticator, AuthOutcome
from node.pbx.trunks import TRUNK_REGISTRATIONS, TrunkRegistrations
from node.sip.flow import Flow
from node.sip.message import Request, Response, make_response
from tests.helpers import wire

NOW = 1_700_000_000.0
REALM = "carrier.example"
US = "192.0.2.10:5070"


# ------------------------------------------------------------------ fakes
@dataclass
class FakeTxn:
    request: Request
    flow: Flow
    tu: object = None


class FakeTransports:
    def __init__(self) -> None:
        self.refuse: set[str] = set()

    def flow_to(self, transport: str, host: str, port: int) -> Flow:
        if host in self.refuse:
            raise OSError(f"no socket for {host}")
        return Flow(transport, (host, port), ("192.0.2.10", 5070))


class FakeEndpoint:
    """Captures what the registrations send; the wire form is checked by parsing it back."""

    def __init__(self) -> None:
        self.transports = FakeTransports()
        self.sent: list[FakeTxn] = []

    def sent_by(self, flow: Flow) -> str:
        return US

    def local_host(self, flow: Flow) -> str:
        return US.split(":")[0]

    def send_request(self, req: Request, flow: Flow) -> FakeTxn:
        txn = FakeTxn(wire(req), flow)  # type: ignore[arg-type]
        self.sent.append(txn)
        return txn

    @property
    def last(self) -> FakeTxn:
        return self.sent[-1]

    def answer(self, status: int, headers: list[tuple[str, str]] | None = None, txn: FakeTxn | None = None) -> Response:
        """The carrier answers ``txn`` (default: the last request sent)."""
        txn = txn or self.last
        resp = wire(make_response(txn.request, status, to_tag="carrier-tag", headers=headers))
        txn.tu.on_sip_response(resp, txn)  # type: ignore[union-attr]
        return resp  # type: ignore[return-value]


@dataclass
class Handle:
    delay: float
    callback: object
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Timers:
    """``call_later`` that only records; the test fires timers by hand."""

    handles: list[Handle] = field(default_factory=list)

    def call_later(self, delay: float, callback) -> Handle:
        h = Handle(delay, callback)
        self.handles.append(h)
        return h

    @property
    def live(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled]

    def fire(self) -> float:
        """Fire the one pending timer; returns its delay."""
        (h,) = self.live
        h.cancelled = True
        h.callback()  # type: ignore[operator]
        return h.delay


class FakeConfig:
    """The two reads TrunkRegistrations makes of a ConfigStore."""

    def __init__(self) -> None:
        self.tenants: dict[int, Tenant] = {}
        self.trunks: dict[int, dict[str, Trunk]] = {}
        self.fail = False

    def add(self, tenant: Tenant, *trunks: Trunk) -> None:
        self.tenants[tenant.id] = tenant
        self.trunks.setdefault(tenant.id, {}).update({t.name: t for t in trunks})

    async def list_tenants(self) -> list[Tenant]:
        if self.fail:
            raise RuntimeError("store unavailable")
        return list(self.tenants.values())

    async def list_trunks(self, tenant_id: int) -> list[Trunk]:
        return list(self.trunks.get(tenant_id, {}).values())


class Carrier:
    """The carrier's registrar side of digest auth: challenges and verifies for real."""

    def __init__(self, password: str = "carrier-pw") -> None:
        self.auth = Authenticator(b"carrier-secret" * 2, algorithms=("MD5",))
        self.password = password

    def challenge(self, stale: bool = False) -> list[tuple[str, str]]:
        return self.auth.challenge_headers(REALM, NOW, stale=stale)

    def check(self, req: Request) -> AuthOutcome:
        return self.auth.check(req, REALM, self.password, NOW)[0]


ALPHA = Tenant(1, "alpha", "alpha.example")
BETA = Tenant(2, "beta", "beta.example")
TRUNK = Trunk(10, 1, "carrier", "198.51.100.5", 5080, "udp", "acct77", "carrier-pw", True, REALM)


@pytest.fixture
def env():
    cfg, ep, timers = FakeConfig(), FakeEndpoint(), Timers()
    regs = TrunkRegistrations(
        cfg, ep, Authenticator(b"node-secret" * 3), retry=30.0, max_retry=100.0, expires=3600,
        jitter=0.0, call_later=timers.call_later, clock=lambda: NOW,
    )
    return cfg, ep, timers, regs


def _gauge(state: str) -> float:
    return TRUNK_REGISTRATIONS.labels(state)._value.get()


async def _registered(env, trunk: Trunk = TRUNK, granted: int = 120) -> None:
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, trunk)
    await regs.reconcile()
    ep.answer(401, Carrier().challenge())
    ep.answer(200, [("Contact", f"<sip:{trunk.username}@{US}>;expires={granted}")])
    assert regs.status()[0]["state"] == "registered"


# ------------------------------------------------------------------ tests
async def test_register_challenge_answered_then_registered(env):
    cfg, ep, timers, regs = env
    carrier = Carrier()
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    first = ep.last.request
    assert first.method == "REGISTER" and first.uri_text == f"sip:{REALM}"
    assert ep.last.flow.remote == ("198.51.100.5", 5080)
    assert str(first.to.uri) == str(first.from_.uri) == f"sip:acct77@{REALM}"
    assert first.from_.tag and first.to.tag is None
    assert [str(c.uri) for c in first.contacts] == [f"sip:acct77@{US}"]
    assert first.get("Expires") == "3600" and first.cseq.seq == 1
    assert first.top_via.branch.startswith("z9hG4bK") and "rport" in first.top_via.params
    assert "Authorization" not in first
    assert regs.status()[0]["state"] == "registering"

    ep.answer(401, carrier.challenge())
    second = ep.last.request
    assert len(ep.sent) == 2
    assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
    assert second.cseq.seq == 2 and second.top_via.branch != first.top_via.branch
    assert carrier.check(second) is AuthOutcome.OK

    ep.answer(200, [("Contact", f"<sip:acct77@{US}>;expires=120")])
    (st,) = regs.status()
    assert st["state"] == "registered" and st["expires_at"] == NOW + 120
    assert (st["tenant"], st["trunk"], st["last_status"]) == ("alpha", "carrier", 200)
    assert [h.delay for h in timers.live] == [60.0]  # refresh_fraction 0.5 of 120 s


async def test_wrong_password_same_nonce_again_is_failed_and_retried(env):
    cfg, ep, timers, regs = env
    carrier = Carrier(password="the-real-one")
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    challenge = carrier.challenge()
    ep.answer(401, challenge)
    assert carrier.check(ep.last.request) is AuthOutcome.FAILED
    ep.answer(401, challenge)  # same nonce, not stale: refused
    assert len(ep.sent) == 2  # not answered a second time
    (st,) = regs.status()
    assert st["state"] == "failed" and st["last_status"] == 401 and "refused" in st["reason"]
    assert [h.delay for h in timers.live] == [30.0]


async def test_stale_nonce_is_answered_again(env):
    cfg, ep, timers, regs = env
    carrier = Carrier()
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    challenge = carrier.challenge()
    ep.answer(401, challenge)
    stale = [(n, v.replace("Digest ", "Digest stale=true, ", 1)) for n, v in challenge]
    ep.answer(401, stale)
    assert len(ep.sent) == 3 and ep.last.request.cseq.seq == 3
    assert regs.status()[0]["state"] == "registering"


async def test_proxy_challenge_answered_with_proxy_authorization(env):
    cfg, ep, timers, regs = env
    carrier = Carrier()
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(407, [("Proxy-Authenticate", v) for _, v in carrier.challenge()])
    req = ep.last.request
    assert "Proxy-Authorization" in req and "Authorization" not in req
    assert carrier.auth.check(req, REALM, "carrier-pw", NOW, proxy=True)[0] is AuthOutcome.OK


async def test_challenge_we_cannot_answer_fails(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(401, [("WWW-Authenticate", 'Digest realm="x", nonce="n", algorithm=MD7')])
    assert len(ep.sent) == 1
    assert regs.status()[0]["state"] == "failed"


async def test_refresh_keeps_call_id_and_raises_cseq(env):
    cfg, ep, timers, regs = env
    await _registered(env, granted=120)
    call_id, cseq = ep.last.request.call_id, ep.last.request.cseq.seq
    assert timers.fire() == 60.0
    refresh = ep.last.request
    assert refresh.call_id == call_id and refresh.cseq.seq == cseq + 1
    assert refresh.get("Expires") == "3600"
    assert regs.status()[0]["state"] == "registered"  # still bound while refreshing
    ep.answer(401, Carrier().challenge())
    assert ep.last.request.cseq.seq == cseq + 2
    ep.answer(200, [("Contact", f"<sip:acct77@{US}>;expires=600")])
    assert [h.delay for h in timers.live] == [300.0]


async def test_granted_expiry_from_our_contact_then_expires_header(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    # our contact's expires wins over the Expires header and over other contacts
    ep.answer(200, [("Contact", "<sip:acct77@203.0.113.9:5060>;expires=999"),
                    ("Contact", f"<sip:acct77@{US}>;expires=100"), ("Expires", "300")])
    assert regs.status()[0]["expires_at"] == NOW + 100 and timers.fire() == 50.0
    ep.answer(200, [("Expires", "80")])
    assert regs.status()[0]["expires_at"] == NOW + 80 and timers.fire() == 40.0
    # a carrier granting more than asked is refreshed as if it granted what we asked
    ep.answer(200, [("Contact", f"<sip:acct77@{US}>;expires=90000")])
    assert [h.delay for h in timers.live] == [1800.0]


async def test_granted_zero_is_a_failure(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(200, [("Contact", f"<sip:acct77@{US}>;expires=0")])
    assert regs.status()[0]["state"] == "failed"
    assert [h.delay for h in timers.live] == [30.0]


async def test_423_retried_with_min_expires(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(401, Carrier().challenge())
    ep.answer(423, [("Min-Expires", "7200")])
    req = ep.last.request
    assert len(ep.sent) == 3 and req.get("Expires") == "7200" and req.cseq.seq == 3
    assert not timers.live  # at once, not after a delay
    ep.answer(200, [("Contact", f"<sip:acct77@{US}>;expires=7200")])
    assert timers.fire() == 3600.0
    assert ep.last.request.get("Expires") == "7200"  # later refreshes ask enough at once


@pytest.mark.parametrize("min_expires", [None, "60", "abc"])
async def test_423_without_usable_min_expires_fails(env, min_expires):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(423, [("Min-Expires", min_expires)] if min_expires else [])
    assert len(ep.sent) == 1
    (st,) = regs.status()
    assert st["state"] == "failed" and st["last_status"] == 423


async def test_failures_retry_with_capped_backoff(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(503)
    assert regs.status()[0]["state"] == "failed"
    assert timers.fire() == 30.0
    assert regs.status()[0]["state"] == "registering" and len(ep.sent) == 2
    ep.answer(500)
    assert timers.fire() == 60.0
    txn = ep.last
    txn.tu.on_sip_timeout(txn)  # Timer F
    (st,) = regs.status()
    assert st["last_status"] == 408 and st["state"] == "failed"
    assert timers.fire() == 100.0  # capped at max_retry
    ep.answer(403)
    assert timers.fire() == 100.0
    ep.answer(200)
    assert regs.status()[0]["state"] == "registered"
    assert timers.fire() == 1800.0  # bare 200: what we asked (3600 s), refreshed at half
    ep.answer(503, [("Retry-After", "45 (maintenance)")])
    assert timers.fire() == 45.0  # the carrier's Retry-After, the backoff restarted


async def test_late_answer_to_abandoned_request_is_ignored(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    old = ep.last
    old.tu.on_sip_timeout(old)
    timers.fire()
    ep.answer(200, txn=old)
    assert regs.status()[0]["state"] == "registering" and len(ep.sent) == 2


async def test_removed_trunk_is_unregistered(env):
    cfg, ep, timers, regs = env
    await _registered(env)
    before = _gauge("registered")
    refresh = timers.live[0]
    call_id, cseq = ep.last.request.call_id, ep.last.request.cseq.seq
    cfg.trunks[ALPHA.id].clear()
    await regs.reconcile()
    unreg = ep.last.request
    assert refresh.cancelled and not timers.live
    assert unreg.get("Expires") == "0" and unreg.call_id == call_id and unreg.cseq.seq == cseq + 1
    assert [str(c.uri) for c in unreg.contacts] == [f"sip:acct77@{US}"]
    assert regs.status()[0]["state"] == "unregistered"
    assert _gauge("registered") == before - 1
    ep.answer(401, Carrier().challenge())  # the un-REGISTER is challenged too
    assert ep.last.request.get("Expires") == "0" and Carrier().check(ep.last.request) is AuthOutcome.OK
    ep.answer(200)
    await asyncio.sleep(0)  # the future's done-callback
    assert regs.status() == [] and not timers.live


async def test_trunk_that_never_registered_is_dropped_without_unregister(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(403)
    cfg.trunks[ALPHA.id].clear()
    await regs.reconcile()
    await asyncio.sleep(0)
    assert len(ep.sent) == 1 and regs.status() == [] and not timers.live


async def test_changed_trunk_reregisters_with_new_call_id(env):
    cfg, ep, timers, regs = env
    await _registered(env)
    old_call_id = ep.last.request.call_id
    cfg.add(ALPHA, replace(TRUNK, password="rotated-pw"))
    await regs.reconcile()
    unreg, fresh = ep.sent[-2].request, ep.sent[-1].request
    assert unreg.get("Expires") == "0" and unreg.call_id == old_call_id
    assert fresh.get("Expires") == "3600" and fresh.call_id != old_call_id and fresh.cseq.seq == 1
    states = sorted(s["state"] for s in regs.status())
    assert states == ["registering", "unregistered"]
    ep.answer(200, txn=ep.sent[-2])
    await asyncio.sleep(0)
    assert [s["state"] for s in regs.status()] == ["registering"]


async def test_trunk_not_registering_is_left_alone_and_disabling_unregisters(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, replace(TRUNK, register=False), replace(TRUNK, id=11, name="nouser", username="", register=True))
    await regs.reconcile()
    assert ep.sent == [] and regs.status() == []
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(200)
    cfg.add(ALPHA, replace(TRUNK, register=False))
    await regs.reconcile()
    assert ep.last.request.get("Expires") == "0"


async def test_store_error_changes_nothing(env):
    cfg, ep, timers, regs = env
    await _registered(env)
    cfg.fail = True
    with pytest.raises(RuntimeError):
        await regs.reconcile()
    assert regs.status()[0]["state"] == "registered" and len(ep.sent) == 2


async def test_status_is_scoped_by_tenant_and_credentials_stay_in_their_tenant(env):
    cfg, ep, timers, regs = env
    cfg.add(ALPHA, TRUNK)
    cfg.add(BETA, Trunk(20, 2, "carrier", "198.51.100.6", 5060, "udp", "beta-acct", "beta-pw", True))
    await regs.reconcile()
    by_host = {t.flow.remote[0]: t.request for t in ep.sent}
    assert by_host["198.51.100.6"].uri_text == "sip:198.51.100.6"
    assert str(by_host["198.51.100.6"].to.uri) == "sip:beta-acct@198.51.100.6"
    assert str(by_host["198.51.100.5"].to.uri) == f"sip:acct77@{REALM}"
    assert [s["tenant"] for s in regs.status(BETA.id)] == ["beta"]
    assert [s["tenant"] for s in regs.status(ALPHA.id)] == ["alpha"]
    assert len(regs.status()) == 2
    carrier_b = Carrier(password="beta-pw")
    beta_txn = next(t for t in ep.sent if t.flow.remote[0] == "198.51.100.6")
    ep.answer(401, carrier_b.challenge(), txn=beta_txn)
    assert carrier_b.check(ep.last.request) is AuthOutcome.OK
    assert Carrier(password="carrier-pw").check(ep.last.request) is not AuthOutcome.OK


async def test_stop_unregisters_and_cancels_timers(env):
    cfg, ep, timers, regs = env
    await _registered(env)
    stopping = asyncio.create_task(regs.stop())
    await asyncio.sleep(0)
    assert ep.last.request.get("Expires") == "0" and not timers.live
    ep.answer(200)
    await stopping
    assert [s["state"] for s in regs.status()] == ["unregistered"]
    assert regs.status()[0]["expires_at"] is None
    await regs.reconcile()  # stopped: no longer follows the store
    assert len(ep.sent) == 3


async def test_stop_is_bounded_when_the_carrier_is_silent(env):
    cfg, ep, timers, regs = env
    regs.stop_timeout = 0.0
    await _registered(env)
    await regs.stop()
    unreg = ep.last
    assert unreg.request.get("Expires") == "0"
    unreg.tu.on_sip_response(wire(make_response(unreg.request, 401, headers=Carrier().challenge())), unreg)
    assert len(ep.sent) == 3 and not timers.live  # closed: the late answer is ignored


async def test_host_name_is_resolved_and_resolution_failure_retried(env):
    cfg, ep, timers, _ = env
    asked = []

    async def resolve(host, port, transport):
        asked.append((host, port, transport))
        if host == "down.example":
            raise OSError("Name or service not known")
        return ["2001:db8::1", "198.51.100.9"]

    ep.transports.refuse.add("2001:db8::1")  # no IPv6 socket: the next address is used
    regs = TrunkRegistrations(cfg, ep, Authenticator(b"k" * 32), jitter=0.0, call_later=timers.call_later,
                              clock=lambda: NOW, resolve=resolve)
    cfg.add(ALPHA, replace(TRUNK, host="sip.carrier.example", from_domain=""),
            replace(TRUNK, id=12, name="down", host="down.example", from_domain=""))
    await regs.reconcile()
    for _ in range(3):
        await asyncio.sleep(0)  # the resolutions
    assert sorted(asked) == [("down.example", 5080, "udp"), ("sip.carrier.example", 5080, "udp")]
    (txn,) = ep.sent
    assert txn.flow.remote == ("198.51.100.9", 5080)
    assert txn.request.uri_text == "sip:sip.carrier.example:5080"
    down = next(s for s in regs.status() if s["trunk"] == "down")
    assert down["state"] == "failed" and "cannot resolve" in down["reason"]
    assert [h.delay for h in timers.live] == [30.0]


async def test_gauge_follows_states(env):
    cfg, ep, timers, regs = env
    registering, registered, failed = _gauge("registering"), _gauge("registered"), _gauge("failed")
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    assert _gauge("registering") == registering + 1
    ep.answer(200)
    assert (_gauge("registering"), _gauge("registered")) == (registering, registered + 1)
    timers.fire()
    ep.answer(500)
    assert (_gauge("registered"), _gauge("failed")) == (registered, failed + 1)


async def test_jitter_only_shortens_delays(env):
    cfg, ep, timers, _ = env
    regs = TrunkRegistrations(cfg, ep, Authenticator(b"k" * 32), jitter=0.2, call_later=timers.call_later,
                              clock=lambda: NOW)
    cfg.add(ALPHA, TRUNK)
    await regs.reconcile()
    ep.answer(200, [("Contact", f"<sip:acct77@{US}>;expires=1000")])
    (h,) = timers.live
    assert 400.0 <= h.delay <= 500.0


@pytest.mark.parametrize("kw", [{"refresh_fraction": 0}, {"refresh_fraction": 1.0}, {"expires": 0},
                                {"retry": 0}, {"retry": 700, "max_retry": 600}, {"jitter": 1.0}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        TrunkRegistrations(FakeConfig(), FakeEndpoint(), Authenticator(b"k" * 32), **kw)


async def test_cli_changes_in_the_embedded_store_take_effect(tmp_path):
    """A second connection (the CLI) adds then removes a registering trunk; reconcile follows."""
    node_store = open_embedded(tmp_path, poll_interval=0.0)
    cli_store = open_embedded(tmp_path)
    try:
        ep, timers = FakeEndpoint(), Timers()
        regs = TrunkRegistrations(node_store.config, ep, Authenticator(b"k" * 32), jitter=0.0,
                                  call_later=timers.call_later, clock=lambda: NOW)
        t = await cli_store.config.create_tenant("alpha", "alpha.example")
        await cli_store.config.create_trunk(t.id, "carrier", "198.51.100.5", username="acct77",
                                            password="carrier-pw", register=True)
        await regs.reconcile()
        assert [s["trunk"] for s in regs.status()] == ["carrier"]
        assert ep.last.request.uri_text == "sip:198.51.100.5"
        ep.answer(200)
        assert await cli_store.config.delete_trunk(t.id, "carrier")
        await regs.reconcile()
        assert ep.last.request.get("Expires") == "0"
    finally:
        cli_store.close()
        node_store.close()
