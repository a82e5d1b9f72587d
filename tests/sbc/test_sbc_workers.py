"""`hivepbx sbc --workers 2`: two processes on one UDP port (SO_REUSEPORT). Calls whose
source the kernel hands to either worker complete, and the node's answers reach the worker
that holds the transaction even when the kernel gives them to the other (the relay)."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from sbc.config import SbcConfigError, from_dict
from sbc.workers import CONN_SPAN, branch_owner, conn_owner, decode, encode
from node.sip.flow import Flow
from node.sip.parser import parse_datagram
from tests.peers.net import free_port
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

HIVEPBX = Path(sys.executable).parent / "hivepbx"


def _metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_start))


async def test_two_workers_share_the_port_and_both_carry_calls(tmp_path):
    port, http, uas_port = free_port(), free_port(span=2), free_port()
    uas = Sipp("uas_answer.xml", workdir=tmp_path / "uas", local_port=uas_port, calls=40, timeout=60)
    await uas.start()
    await uas.wait_listening()
    cfg = tmp_path / "sbc.toml"  # no load shedding: a busy test machine is not what this checks
    cfg.write_text("[sbc]\nmax_loop_lag = 0\n")
    proc = await asyncio.create_subprocess_exec(
        str(HIVEPBX), "sbc", "--config", str(cfg),
        "--listen", f"udp:127.0.0.1:{port}", "--node", f"uas=127.0.0.1:{uas_port}",
        "--secret", "workers-test-secret", "--http", f"127.0.0.1:{http}", "--workers", "2",
        "--probe-interval", "0", "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    loop = asyncio.get_running_loop()
    try:
        running: list[bytes] = []
        while len(running) < 2:  # each worker prints its banner once its sockets are bound
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, (await proc.stderr.read()).decode()[-2000:]
            if line.startswith(b"hivepbx SBC running"):
                running.append(line)
        assert all(b"of 2)" in b for b in running)
        per_worker = [0.0, 0.0]
        callers = 0
        # each caller has its own source port: the kernel's hash picks the worker; go on
        # until both have carried calls (a fair coin per caller: 12 callers leave 1 in 2,048)
        while callers < 12 and (callers < 2 or min(per_worker) == 0):
            caller = Sipp("uac_call.xml", f"127.0.0.1:{port}", workdir=tmp_path / f"uac{callers}",
                          service="2000", calls=2, duration_ms=50, timeout=20)
            result = await caller.run()
            result.assert_ok()
            callers += 1
            for i in range(2):
                per_worker[i] = await loop.run_in_executor(
                    None, _metric, http + i, 'hivepbx_sbc_requests_total{method="INVITE",side="outside"}')
        assert min(per_worker) > 0, f"one worker carried every call: {per_worker}"
        assert sum(per_worker) == 2 * callers
        # the UAS (the "node") answers from one address, so the kernel gives all its
        # responses to one worker: those to the other's branches were relayed to it
        relayed = [await loop.run_in_executor(None, _metric, http + i, "hivepbx_sbc_relayed_total") for i in range(2)]
        assert sum(relayed) >= 3 * min(per_worker), relayed  # 100/180/200 of each call at least
        assert proc.returncode is None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
        await uas.stop()
    assert rc == 0


def test_workers_need_fixed_ports():
    with pytest.raises(SbcConfigError, match="workers share fixed ports"):
        from_dict({"sbc": {"listen": ["udp:127.0.0.1:0"], "workers": 2}, "nodes": [{"address": "127.0.0.1:5060"}]})
    with pytest.raises(SbcConfigError, match="sbc.workers"):
        from_dict({"sbc": {"workers": 0}, "nodes": [{"address": "127.0.0.1:5060"}]})


def test_ownership_marks_and_the_relay_encoding():
    assert branch_owner("z9hG4bKabc.w1") == 1
    assert branch_owner("z9hG4bKabc") is None
    assert branch_owner("z9hG4bK.wx") is None
    assert conn_owner(3 * CONN_SPAN + 7) == 3 and conn_owner(5) == 0
    raw = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx.w1\r\nFrom: <sip:a@b>;tag=1\r\n"
           b"To: <sip:c@d>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    flow = Flow("tcp", ("127.0.0.9", 5090), ("127.0.0.1", 5060), CONN_SPAN + 4)
    item, got = decode(encode(parse_datagram(raw), flow), 65535)
    assert got == flow and item.status == 200 and item.call_id == "r1"
    assert decode(b"garbage", 65535) is None
