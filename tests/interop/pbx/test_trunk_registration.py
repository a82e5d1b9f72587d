"""Outbound trunk registration from a real node to a SIPp carrier registrar on 127.0.0.3 that
checks our digest answers with its own verifyauth."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.pbx.trunks import TrunkRegistrations
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

CARRIER = "127.0.0.3"
REALM = "carrier.example"
USER, PASSWORD = "acct77", "carrier-pw"


def _carrier(tmp_path, name: str) -> Sipp:
    return Sipp("uas_registrar_auth.xml", None, workdir=tmp_path / name, local_ip=CARRIER, timeout=30,
                keys={"auth_user": USER, "auth_pass": PASSWORD, "domain": REALM, "expires": 60})


async def _registrations(pbx, **kw) -> TrunkRegistrations:
    """The node's own registrations once the runtime wires them in (a second instance would
    register the same trunk twice); until then one started on the node's store and endpoint."""
    own = getattr(pbx.node, "trunks", None)
    if isinstance(own, TrunkRegistrations):
        return own
    regs = TrunkRegistrations(pbx.node.backend.config, pbx.node.endpoint, pbx.node.service.auth, **kw)
    await regs.start()
    return regs


async def _wait_state(regs: TrunkRegistrations, state: str, timeout: float = 20.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        st = regs.status()
        if st and st[0]["state"] == state or loop.time() > deadline:
            assert st and st[0]["state"] == state, st
            return st[0]
        await asyncio.sleep(0.05)


async def test_trunk_registers_with_digest_and_unregisters_on_stop(pbx, tmp_path):
    t = await pbx.tenant("alpha", "alpha.example")
    carrier = _carrier(tmp_path, "carrier")
    await carrier.start()
    await carrier.wait_listening()
    regs = await _registrations(pbx, poll_interval=0.2)
    try:
        # added after start: the store poll picks it up, as it would a CLI change
        await pbx.config.create_trunk(t.id, "carrier", CARRIER, port=carrier.local_port, username=USER,
                                      password=PASSWORD, register=True, from_domain=REALM)
        st = await _wait_state(regs, "registered")
        assert (st["tenant"], st["trunk"], st["last_status"]) == ("alpha", "carrier", 200)
        assert time.time() < st["expires_at"] <= time.time() + 60  # the carrier's 60 s, not our 3600
    finally:
        await regs.stop()
        res = await carrier.wait()
    res.assert_ok()
    registers = res.received("REGISTER")
    assert len(registers) == 4, res.describe()
    first, authed, unreg, unreg_authed = registers
    assert first.first_line == f"REGISTER sip:{REALM} SIP/2.0"
    assert first.header("Authorization") is None
    assert authed.header("Authorization").startswith("Digest ") and f'username="{USER}"' in authed.header("Authorization")
    assert f"<sip:{USER}@{REALM}>" in authed.header("To")
    assert authed.header("Contact") == f"<sip:{USER}@127.0.0.1:{pbx.port}>"
    assert [m.header("Expires") for m in registers] == ["3600", "3600", "0", "0"]
    assert len({m.header("Call-ID") for m in registers}) == 1
    cseqs = [int(m.header("CSeq").split()[0]) for m in registers]
    assert cseqs == sorted(set(cseqs))
    assert [m.status for m in res.sent()] == [401, 200, 401, 200]  # verifyauth passed twice
    assert [s["state"] for s in regs.status()] == ["unregistered"]


async def test_wrong_password_is_refused_and_reported_failed(pbx, tmp_path):
    t = await pbx.tenant("alpha", "alpha.example")
    carrier = _carrier(tmp_path, "carrier")
    await carrier.start()
    await carrier.wait_listening()
    await pbx.config.create_trunk(t.id, "carrier", CARRIER, port=carrier.local_port, username=USER,
                                  password="not-the-password", register=True, from_domain=REALM)
    regs = await _registrations(pbx)
    try:
        st = await _wait_state(regs, "failed")
    finally:
        await regs.stop()
        res = await carrier.wait()
    assert st["last_status"] == 403
    assert [m.status for m in res.sent()] == [401, 403]
    assert len(res.received("REGISTER")) == 2  # a refused account is not hammered: retry waits
