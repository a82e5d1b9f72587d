"""X-Hive-Source: the node recognises a carrier trunk by its real address behind the SBC,
and believes that header only from the SBCs it is told to trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.pbx.service import PbxService
from node.runtime.config import NodeConfig
from node.sip.flow import Flow
from node.sip.message import Request
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, INSIDE_IP, PASSWORDS, stack, wait_for

pytestmark = pytest.mark.interop

CARRIER_IP = "127.0.0.6"
DID = "441135550100"


async def _carrier_call(tmp_path: Path, trusted: tuple[str, ...], name: str):
    async with stack(tmp_path / name, names=("a",), node_kw={"trusted_sbcs": trusted}) as s:
        node, t = s.nodes["a"], s.tenants["a"]
        await node.config.create_trunk(t.id, "carrier", CARRIER_IP)
        await node.config.create_did(t.id, "+" + DID, "extension", "1002")
        callee = Sipp("uas_register_then_answer.xml", s.target, workdir=tmp_path / name / "callee", user="1002",
                      domain=DOMAIN, auth_user="1002", auth_password=PASSWORDS["1002"],
                      ooc_scenario="uas_answer.xml", duration_ms=8000, timeout=30)
        await callee.start()
        try:
            assert await wait_for(lambda: node.wait_registered(t.id, "1002", 0.1))
            expect = "uac_call.xml" if trusted else "uac_call_expect_error.xml"
            caller = await Sipp(expect, s.target, workdir=tmp_path / name / "carrier", service=DID,
                                user="447700900123", domain="carrier.example", local_ip=CARRIER_IP,
                                duration_ms=300,
                                variables={} if trusted else {"expected": 407}).run()
        finally:
            cres = await callee.stop()
        return caller, cres, await node.cdrs.list(t.id)


async def test_carrier_calls_a_did_through_the_sbc(tmp_path):
    caller, cres, cdrs = await _carrier_call(tmp_path, (INSIDE_IP,), "trusted")
    caller.assert_ok()
    assert not caller.received(407)  # the trunk is recognised by its address behind the SBC
    invite = cres.received("INVITE")[0]
    assert "447700900123" in invite.header("From")
    assert "X-Hive" not in invite.text  # internal headers never reach a phone
    assert [(c.direction, c.callee, c.disposition) for c in cdrs] == [("inbound", "1002", "answered")]


async def test_an_untrusted_sbc_gets_no_trunk_recognition(tmp_path):
    caller, cres, cdrs = await _carrier_call(tmp_path, (), "untrusted")
    assert caller.received(407)  # the SBC's own address is no trunk: the caller is challenged
    assert not cres.received("INVITE")


def _svc(trusted: tuple[str, ...]) -> PbxService:
    svc = PbxService.__new__(PbxService)
    svc._trusted_sbcs = frozenset(trusted)
    return svc


@pytest.mark.parametrize("header, want", [
    ("udp:198.51.100.7:5060", "198.51.100.7"), ("tcp:[2001:db8::7]:5061", "2001:db8::7"), ("", "10.0.0.5"),
])
def test_source_header_is_read_only_from_a_trusted_sbc(header, want):
    req = Request("INVITE", "sip:1@x", [("X-Hive-Source", header)] if header else [])
    assert _svc(("10.0.0.5",))._source_host(req, Flow("udp", ("10.0.0.5", 5070), ("10.0.0.9", 5060))) == want
    # a phone (or anyone not configured) cannot forge a carrier's address
    assert _svc(("10.0.0.5",))._source_host(req, Flow("udp", ("203.0.113.9", 5060), ("10.0.0.9", 5060))) == "203.0.113.9"
    assert _svc(())._source_host(req, Flow("udp", ("10.0.0.5", 5070), ("10.0.0.9", 5060))) == "10.0.0.5"
    assert NodeConfig().trusted_sbcs == ()
