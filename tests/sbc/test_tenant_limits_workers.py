"""A tenant's limits hold across the workers of one SBC host (`hivepbx sbc --workers 2`):
max_calls = 2 admits exactly 2 concurrent calls whichever worker the kernel hands each
caller to (per-worker counters admitted 4), and the day's usage, kept in the state dir,
survives a worker killed -9 and the SBC restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.peers.sbc_process import SbcProcess
from tests.peers.sipp import Sipp
from tests.sbc._tenant_calls import DOMAIN, EXTERNAL, external_caller, node_uas

pytestmark = pytest.mark.interop



def _metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_start))


def _sbc(tmp_path: Path, name: str, node_port: int, state_dir: Path, policy: str) -> SbcProcess:
    return SbcProcess(tmp_path, name, state_dir, f"""
[[nodes]]
id = "uas"
address = "127.0.0.1:{node_port}"

[protection.tenants."{DOMAIN}"]
{policy}
""", workers=2)


async def test_max_calls_holds_across_two_workers(tmp_path: Path) -> None:
    uas, node_port = await node_uas(tmp_path, 40)
    try:
        async with _sbc(tmp_path, "sbc", node_port, tmp_path / "state", "max_calls = 2") as sbc:
            loop = asyncio.get_running_loop()

            async def metric(name: str) -> list[float]:
                return [await loop.run_in_executor(None, _metric, sbc.http + i, name) for i in range(2)]

            invites = 'hivepbx_sbc_requests_total{method="INVITE",side="outside"}'
            for rnd in range(3):
                before = await metric(invites)
                # ten callers at once, each from its own port: the kernel spreads them over
                # both workers; every admitted call is held 8 s, so all ten overlap
                callers = [external_caller(sbc.target, tmp_path / f"r{rnd}c{i}", 8000) for i in range(10)]
                results = await asyncio.gather(*(c.run() for c in callers))
                answered = sum(r.successful for r in results)
                assert answered == 2, [r.describe() for r in results if r.successful][:3]
                assert sum(r.failed for r in results) == 8
                assert all(r.received(503) for r in results if r.failed)
                per_worker = [a - b for a, b in zip(await metric(invites), before)]
                if min(per_worker) > 0:
                    break  # both workers took callers: the limit held across them
                # (1 in 512: the kernel gave every caller to one worker; another round)
            assert min(per_worker) > 0, per_worker
            assert sum(await metric('hivepbx_sbc_blocked_total{cause="max_calls"}')) == 8 * (rnd + 1)
            # those calls are over: their BYEs, whichever worker saw them, freed the slots
            again = await asyncio.gather(*(external_caller(sbc.target, tmp_path / f"again{i}", 200).run() for i in range(2)))
            assert sum(r.successful for r in again) == 2, [r.describe() for r in again]
    finally:
        await uas.stop()


def _hung_up_by_the_node(target: str, workdir: Path) -> Sipp:
    return Sipp("uac_call_remote_bye.xml", target, workdir=workdir, service=EXTERNAL, user="1001", domain=DOMAIN,
                calls=1, timeout=30)


async def test_daily_usage_survives_a_killed_worker(tmp_path: Path) -> None:
    """The far end hangs up (the node's BYE ends the call at the edge: its answered time is
    the usage), the usage is over the day's limit, a worker is killed -9, and the restarted
    SBC still refuses the tenant's next call."""
    uas, node_port = await node_uas(tmp_path, 10, "uas_answer_hangup.xml", variables={"hangup_ms": 2500})
    state = tmp_path / "state"
    policy = "max_daily_usage = 2  # seconds of answered external outgoing calls"
    try:
        async with _sbc(tmp_path, "first", node_port, state, policy) as sbc:
            (await _hung_up_by_the_node(sbc.target, tmp_path / "long").run()).assert_ok()  # 2.5 s of usage
            over = await Sipp("uac_call_expect_error.xml", sbc.target, workdir=tmp_path / "over1", service=EXTERNAL,
                              user="1001", domain=DOMAIN, variables={"expected": 403}, timeout=20).run()
            over.assert_ok()
            victim = sbc.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)  # the parent then stops the other worker and exits 1
            assert await asyncio.wait_for(sbc.proc.wait(), 30) == 1
        async with _sbc(tmp_path, "second", node_port, state, policy) as sbc:
            again = await Sipp("uac_call_expect_error.xml", sbc.target, workdir=tmp_path / "over2",
                               service=EXTERNAL, user="1001", domain=DOMAIN, variables={"expected": 403},
                               timeout=20).run()
            again.assert_ok()
        # positive control: the same SBC with a fresh state dir lets the call through
        async with _sbc(tmp_path, "fresh", node_port, tmp_path / "fresh-state", policy) as sbc:
            (await _hung_up_by_the_node(sbc.target, tmp_path / "fresh").run()).assert_ok()
    finally:
        await uas.stop()
