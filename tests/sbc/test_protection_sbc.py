"""The Guard in the real SBC (sbc.runtime.Sbc in front of a real hivepbx node, loopback):
sipvicious finds and cracks nothing and gets banned while a phone still registers; a SIPp
flood of several times a source's allowance is cut off while the phone still gets through."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from sbc.protection import Guard
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, PASSWORDS, stack

pytestmark = pytest.mark.interop

PHONE_IP = "127.0.0.20"    # the legitimate phone
SVMAP_IP = "127.0.0.21"
FLOOD_IP = "127.0.0.22"


async def tool(name: str, *args: str, cwd: Path, timeout: float = 60.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"sipvicious.{name}", *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"{name} did not finish in {timeout}s:\n{out.decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace")


def words(tmp_path: Path, wrong: int) -> str:
    path = tmp_path / f"words-{wrong}.txt"
    path.write_text("\n".join([f"guess{i}" for i in range(wrong)] + [PASSWORDS["1001"]]) + "\n")
    return str(path)


def found_extensions(output: str) -> list[str]:
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].isdigit():
            rows.append(cells[0])
    return rows


def blocked(cause: str) -> float:
    return REGISTRY.get_sample_value("hivepbx_sbc_blocked_total", {"cause": cause}) or 0.0


async def register(s, tmp_path: Path, name: str) -> None:
    reg = await Sipp("uac_register_auth.xml", s.target, workdir=tmp_path / name, user="1002", domain=DOMAIN,
                     auth_user="1002", auth_password=PASSWORDS["1002"], local_ip=PHONE_IP,
                     keys={"expires": 60}, timeout=15).run()
    reg.assert_ok()


def svcrack(s, tmp_path: Path, wrong: int) -> tuple[str, ...]:
    return ("svcrack", "-u", "1001", "--domain", DOMAIN, "-d", words(tmp_path, wrong), "-t", "0.02",
            "--maximumtime", "2", f"udp://{s.target}")


async def test_positive_control_svcrack_cracks_without_the_guards_limits(tmp_path: Path) -> None:
    """The same stack with the scanner signatures and failure limits switched off: svcrack
    does find the password, so the test below would notice a Guard that lets it through."""
    off = {"scanner_signatures": [], "auth_failures": 100000, "auth_challenges": 100000, "density": 100000}
    async with stack(tmp_path, names=("a",), protection=off) as s:
        assert isinstance(s.sbc.proxy.guard, Guard)
        out = await tool(*svcrack(s, tmp_path, 4), cwd=tmp_path)
        assert PASSWORDS["1001"] in out, out[-2000:]


async def test_sipvicious_through_the_sbc_finds_nothing_and_is_banned(tmp_path: Path) -> None:
    async with stack(tmp_path, names=("a",)) as s:
        guard = s.sbc.proxy.guard
        assert isinstance(guard, Guard)
        before = blocked("scanner")
        host, port = s.sbc.address("udp")
        outs = await asyncio.gather(
            tool("svmap", "-p", str(port), "-t", "0.05", "-b", SVMAP_IP, host, cwd=tmp_path, timeout=30),
            tool("svwar", "--domain", DOMAIN, "-e", "1000-1010", "-t", "0.05", "--maximumtime", "2",
                 f"udp://{s.target}", cwd=tmp_path),
            tool(*svcrack(s, tmp_path, 3), cwd=tmp_path),
        )
        assert s.target not in outs[0].split("SIP Device")[-1] and "friendly-scanner" not in outs[0], outs[0][-1500:]
        assert found_extensions(outs[1]) == [], outs[1][-1500:]
        assert PASSWORDS["1001"] not in outs[2], outs[2][-1500:]
        assert guard.banned(SVMAP_IP) and guard.banned("127.0.0.1")
        assert blocked("scanner") >= before + 2
        # the phone next door is not affected
        await register(s, tmp_path, "phone")


async def test_disguised_brute_force_through_the_sbc_is_banned(tmp_path: Path) -> None:
    """No User-Agent signature to go on: the node's 403s, seen by the Guard, ban the source
    before the right password (the 31st guess) is tried."""
    async with stack(tmp_path, names=("a",), protection={"scanner_signatures": [], "auth_failures": 10}) as s:
        guard = s.sbc.proxy.guard
        out = await tool(*svcrack(s, tmp_path, 30), cwd=tmp_path)
        assert PASSWORDS["1001"] not in out, out[-1500:]
        assert guard.banned("127.0.0.1")
        await register(s, tmp_path, "phone")


FLOOD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options_flood">
  <send>
    <![CDATA[

      OPTIONS sip:1001@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:flood@[domain]>;tag=[pid]F[call_number]
      To: <sip:1001@[domain]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      User-Agent: Flooder/1.0
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" optional="true" timeout="200" ontimeout="end"/>
  <label id="end"/>
</scenario>
"""


async def test_sipp_flood_is_cut_off_while_a_phone_registers(tmp_path: Path) -> None:
    """SIPp at 1000 OPTIONS/s for 2 s from one address: 20 times the allowance of 100 per
    2 s. The flooder is banned within its first window; a phone registers meanwhile."""
    async with stack(tmp_path, names=("a",)) as s:
        guard = s.sbc.proxy.guard
        scenario = tmp_path / "options_flood.xml"
        scenario.write_text(FLOOD)
        before_flood, before_banned = blocked("flood"), blocked("banned")
        flood = Sipp(scenario, s.target, workdir=tmp_path / "flood", domain=DOMAIN, local_ip=FLOOD_IP,
                     calls=2000, rate=1000, limit=2000, timeout=20)
        await flood.start()
        await asyncio.sleep(0.5)
        await register(s, tmp_path, "phone-during-flood")
        await flood.wait()
        assert guard.banned(FLOOD_IP)
        assert blocked("flood") == before_flood + 1
        dropped = blocked("banned") - before_banned
        assert dropped >= 1000, dropped  # most of the flood never got past the edge
        assert not guard.banned(PHONE_IP)


def _call(s, tmp_path: Path, name: str, callee: str, expected: int, local_ip: str = PHONE_IP) -> Sipp:
    return Sipp("uac_call_expect_error.xml", s.target, workdir=tmp_path / name, service=callee, user="1001",
                domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"], local_ip=local_ip,
                variables={"expected": expected}, timeout=15)


async def test_tenant_ip_filter_in_the_sbc(tmp_path: Path) -> None:
    """Seed: filter on with an empty list → no outgoing call at all (though another tenant
    lists the very same addresses: policies do not leak between tenants); a listed range
    lets the phones call."""
    policies = {"tenants": {DOMAIN: {"filter_by_ip": True}, "other.example": {"filter_by_ip": True,
                                                                             "allowed_sources": ["127.0.0.0/8"]}}}
    async with stack(tmp_path, names=("a",), protection=policies) as s:
        before = blocked("ip_filter")
        r = await _call(s, tmp_path, "blocked", "0034911234567", 403).run()
        r.assert_ok()
        assert not r.received(407), "refused at the edge, before the node's challenge"
        assert blocked("ip_filter") == before + 1
        # the same tenant with its phones' range listed: the call reaches the node (no such
        # callee registered there: the node's own answer, not the edge's 403)
        s.sbc.proxy.guard.set_tenant_policy(DOMAIN, {"filter_by_ip": True, "allowed_sources": ["127.0.0.16/28"]})
        r = await _call(s, tmp_path, "allowed", "1002", 480).run()
        r.assert_ok()
        assert r.received(407), "the node challenged it: the edge let it through"
        # a phone outside the listed range is still refused
        r = await _call(s, tmp_path, "outside-range", "1002", 403, local_ip="127.0.0.40").run()
        r.assert_ok()
        assert not r.received(407)


async def test_transaction_cap_answers_503_with_retry_after_but_lets_dialogs_end(tmp_path: Path) -> None:
    """Above max_transactions live transactions new work gets 503 + Retry-After from the
    edge; a request inside a dialog (here a BYE) still goes through to be answered."""
    async with stack(tmp_path, names=("a",), protection={"max_transactions": 10, "retry_after": 9}) as s:
        loop = asyncio.get_running_loop()
        host, port = s.sbc.address("udp")
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Phone(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.30", 0))
        me = transport.get_extra_info("sockname")

        def request(i: int, method: str = "OPTIONS", to_tag: str = "") -> bytes:
            return (f"{method} sip:1002@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bK-o{i};rport\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=p{i}\r\nTo: <sip:1002@{DOMAIN}>{to_tag}\r\n"
                    f"Call-ID: cap-{i}@test\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode()

        async def statuses(n: int) -> list[bytes]:
            out = []
            for _ in range(n):
                out.append(await asyncio.wait_for(answers.get(), 5))
            return out

        try:
            before = blocked("overload")
            for i in range(30):  # non-INVITE transactions linger (Timer J), so they pile up
                transport.sendto(request(i), (host, port))
            got = await statuses(30)
            refused = [d for d in got if d.startswith(b"SIP/2.0 503")]
            assert 10 <= len(refused) <= 25, [d.split(b"\r\n", 1)[0] for d in got]
            assert all(b"\r\nRetry-After: 9\r\n" in d for d in refused)
            assert blocked("overload") - before == len(refused)
            # in-dialog work is never refused by the cap: the BYE reaches the node (481 there)
            transport.sendto(request(99, "BYE", ";tag=x"), (host, port))
            (bye,) = await statuses(1)
            assert not bye.startswith(b"SIP/2.0 503"), bye.split(b"\r\n", 1)[0]
        finally:
            transport.close()
