"""Shared set-up of the interop tests of transfers, park and calls whose media rtpengine
relays (test_transfer_*, test_*park*, test_*rtpengine*, test_recording_app_sipp.py): a node
on the test's rtpengine with RTP peers and SIPp phones that are always cleaned up, finding
the calls in the node, and listening to what the parties hear. Not a test module."""

from __future__ import annotations

import asyncio
import re
import time

from node.pbx.app_call import AppCall
from node.pbx.call import CallState
from tests.interop.conftest import RunningNode
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone
from tests.peers.rtp_peer import RtpPeer, best_correlation, node_media_of, tone_level
from tests.peers.sipp import Sipp
from tests.waiting import until

LOOP = "127.0.0.1"
RTP = {"rtp_ip": LOOP}
#: the IVR 800: key 2 (pressed by ``ivr_caller``) puts the caller through to 1002
MENU = {"prompt": ["menu"], "timeout": 8, "options": {"2": "1002"}}
#: the IVR 801: no key needed, 1002 is rung after half a second
NO_INPUT_MENU = {"prompt": [], "timeout": 0.5, "options": {"2": "1002"},
                 "no_input": {"type": "extension", "value": "1002"}}


def rtp_keys(peer: RtpPeer, **more) -> dict:
    """SIPp keys for a phone whose SDP names ``peer`` (the test's own RTP socket)."""
    return {"rtp_ip": LOOP, "rtp_port": peer.port, **more}


def free_rtp_port() -> int:
    """A loopback port nobody listens on: RTP for a phone whose audio the test ignores."""
    from tests.peers.net import free_port

    return free_port(LOOP)


def sdp_port(body: str) -> int:
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert m, body
    return int(m.group(1))


def replaces_of(dialog, node_placed: bool = True) -> str:
    """Replaces (RFC 3891) naming a dialog of the node as the phone on its far end names it:
    the UAS's tag is the to-tag (the phone's when the node placed the call, an answered leg;
    the node's when the phone did, a call's a_dialog)."""
    uas, uac = (dialog.remote_tag, dialog.local_tag) if node_placed else (dialog.local_tag, dialog.remote_tag)
    return f"{dialog.call_id};to-tag={uas};from-tag={uac}"


async def stop_all(*sipps: Sipp | None) -> list:
    """Stop the SIPp instances that were started (None: never was); their results, in order."""
    async def stop(p):
        return await p.stop() if p is not None else None

    return list(await asyncio.gather(*(stop(p) for p in sipps)))


async def stop_running(*sipps: Sipp | None) -> None:
    """Stop those still running (a test that failed half-way); a finished one keeps its result
    for ``wait()``."""
    await asyncio.gather(*(p.stop() for p in sipps if p is not None and p.running))


def relay_ends(call) -> tuple[tuple[str, int], tuple[str, int]]:
    """Where side a's and side b's party send their RTP on the call's node relay."""
    session = call.media.session
    return (LOOP, session.leg("a").local_port), (LOOP, session.leg("b").local_port)


async def talk(a: RtpPeer, to_a, c: RtpPeer, to_c, seconds: float = 1.0) -> tuple[float, float]:
    """a sends 700 Hz to ``to_a``, c 1100 Hz to ``to_c``: (share of 700 Hz in what c heard,
    share of 1100 Hz in what a heard)."""
    t0 = time.monotonic()
    await asyncio.gather(a.send_tone(to_a, 700.0, seconds), c.send_tone(to_c, 1100.0, seconds))
    t1 = time.monotonic()
    return tone_level(c.audio(t0 + 0.2, t1), 700.0), tone_level(a.audio(t0 + 0.2, t1), 1100.0)


class RawRtp(asyncio.DatagramProtocol):
    """A loopback UDP socket of the test that keeps every datagram it gets (``packets``), for
    tests that look at RTP headers (sequence numbers, payload types)."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.port = 0
        self.transport = None

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets.append(data)

    @classmethod
    async def open(cls) -> "RawRtp":
        self = cls()
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(LOOP, 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def moh_correlation(pbx, heard) -> float:
    """How closely the first second of ``heard`` matches the node's default music on hold
    (node/pbx/hold.py), wherever in the tune it started."""
    import numpy as np

    from node.media.wav import read_wav
    from node.pbx import hold

    tune = read_wav(hold.default_file(pbx.node.cfg.data_dir)).astype(np.float64)
    return best_correlation(heard[:8000], np.concatenate([tune, tune]))


def assert_held_then_resumed(res) -> None:
    """A transferee the transferor held: its re-INVITEs are the hold (forwarded, sendonly),
    then the resume (sendrecv) at the same relay port it was answered with."""
    answer = [m for m in res.received(200) if m.method == "INVITE"][0]
    reinvites = res.received("INVITE")
    assert len(reinvites) == 2, res.describe()
    assert "a=sendonly" in reinvites[0].body  # the hold, forwarded
    assert "a=sendrecv" in reinvites[1].body and "a=sendonly" not in reinvites[1].body  # the resume
    assert sdp_port(reinvites[1].body) == sdp_port(answer.body), "the resume moved the transferee off its relay port"


async def transferor_leaves_early(pbx, tmp_path, t, service: str, duration_ms: int) -> None:
    """1001 calls ``service`` (1002 answers, a phone or through an IVR) and blind-transfers
    1002 to 1003, hanging up right after the 202 (RFC 5589 §6.1): 1002 still reaches 1003.
    Then to 1004, busy: nobody is left to take the call back, 1002 is released. Tenant ``t``
    has 1002-1004."""
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer_hangup.xml", variables={"hangup_ms": 800})
    # busy after 500 ms: the transferor's BYE (sent right after the first NOTIFY) must go out
    # before the final NOTIFY arrives, or SIPp, busy sending, aborts on the NOTIFY
    p4 = await phone(pbx, tmp_path, t, "1004", "uas_busy.xml", variables={"busy_ms": 500})
    try:
        # -aa: a refer NOTIFY that arrives while SIPp is about to send its BYE is answered
        # 200 instead of aborting the scenario (the node's NOTIFYs race the transferor's BYE)
        ok = await dial(pbx, tmp_path, service, "uac_call_refer_bye.xml", "ok", duration_ms=duration_ms,
                        keys={"refer_to": f"1003@{t.domain}"}, extra_args=("-aa",)).run()
        ok.assert_ok()
        await asyncio.sleep(1.5)
        assert await pbx.wait_idle()
        gone = await dial(pbx, tmp_path, service, "uac_call_refer_bye.xml", "busy", duration_ms=duration_ms,
                          keys={"refer_to": f"1004@{t.domain}"}, extra_args=("-aa",)).run()
        gone.assert_ok()
        assert await pbx.wait_idle()
    finally:
        r2, r3, r4 = await stop_all(p2, p3, p4)
    assert len(r3.received("INVITE")) == 1 and len(r4.received("INVITE")) == 1
    assert len(r2.received("BYE")) == 2, "1002 was not released after the target hung up / was busy"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
        ("1001", service, "blind-transfer"), ("1002", "1003", "callee-bye"), ("1001", service, "transfer-failed-486")]


# ------------------------------------------------------------------ finding calls in the node
async def call_to(pbx, callee: str, state: CallState = CallState.ANSWERED, timeout: float = 5.0):
    """The call to ``callee`` in ``state`` (fails the test when none comes)."""
    def find():
        return next((c for c in pbx.node.service.calls.values() if c.plan.callee == callee and c.state is state), None)

    assert await until(lambda: find() is not None, timeout=timeout), f"no {state.value} call to {callee}"
    return find()


async def answered(node, callee: str):
    """The answered call whose callee is ``callee`` (fails the test when none comes)."""
    calls = node.service.calls
    found = []

    def pick():
        found[:] = [c for c in calls.values() if c.plan.callee == callee and c.state is CallState.ANSWERED]
        return found

    assert await until(pick), f"no answered call to {callee}"
    return found[0]


async def answered_call_with(pbx, number: str, timeout: float = 8.0):
    """1001's answered call whose callee is ``number`` now."""
    assert await until(lambda: _call_with(pbx, number) is not None, timeout=timeout), f"1001 is not talking to {number}"
    return _call_with(pbx, number)


def _call_with(pbx, number: str):
    return next((c for c in pbx.node.service.calls.values() if c.state is CallState.ANSWERED
                 and c.caller.number == "1001" and c.plan.callee == number), None)


async def ringing_consultation(pbx, callee: str, timeout: float = 8.0):
    """The consultation call once its 180 reached the transferor, and its early dialog id as
    the transferor's phone sees it (its from-tag, the node's to-tag)."""
    def ringing():
        return next((c for c in pbx.node.service.calls.values() if c.plan.callee == callee
                     and c.state is CallState.RINGING and c.ringing_sent), None)

    assert await until(lambda: ringing() is not None, timeout=timeout), f"no ringing call to {callee}"
    call = ringing()
    return call, f"{call.invite.call_id};to-tag={call.a_tag};from-tag={call.invite.from_.tag}"


def plain_call_to(node, callee: str):
    """The answered call to ``callee`` that is not an application call (a consultation)."""
    return next((x for x in node.service.calls.values()
                 if not isinstance(x, AppCall) and x.plan.callee == callee and x.state is CallState.ANSWERED), None)


def app_call(pbx) -> AppCall | None:
    return next((c for c in pbx.node.service.calls.values() if isinstance(c, AppCall)), None)


def bridged(pbx) -> bool:
    """The application call's two endpoints are bridged (the caller talks to side b)."""
    c = app_call(pbx)
    return c is not None and c.answered_leg is not None and c.b_ep is not None and c.ep.peer is c.b_ep


async def ivr_caller(pbx, tmp_path, peer: RtpPeer, scenario: str = "uac_media_call.xml", **kw):
    """1001 calls the IVR 800 with ``peer`` as its media and presses 2 once the node
    answered: (the SIPp run task, where the node's endpoint for 1001 receives)."""
    keys = dict(RTP, rtp_port=peer.port, formats="0 101", **kw.pop("keys", {}))
    run = asyncio.create_task(dial(pbx, tmp_path, "800", scenario, keys=keys, **kw).run())
    dest = await node_media_of(pbx, peer)
    await peer.send_digits(dest, "2")
    return run, dest


# ------------------------------------------------------------------ rtpengine
async def rtpe_sessions(ng) -> list[str]:
    """The call ids rtpengine holds sessions for."""
    return list((await ng.command("list"))["calls"])


async def no_rtpe_sessions(ng, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while await rtpe_sessions(ng):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class RtpeNode:
    """``async with RtpeNode(tmp_path, rtpe, peers=3) as h``: a node whose media_relay is the
    test's rtpengine (``h.node``, ``h.pbx``, ``h.ng``; the ``rtpe`` fixture of
    test_media_rtpengine_sipp.py), ``h.peers`` RTP sockets of the test, and the phones started
    with ``h.phone``. On the way out, even a failing one, the peers are closed, the phones
    stopped (their results in ``h.results``, in start order) and the node shut down."""

    def __init__(self, tmp_path, rtpe, peers: int = 0, **node_kw) -> None:
        self.tmp_path = tmp_path
        self.engine, self.ng = rtpe
        self.n_peers = peers
        self.node_kw = node_kw
        self.peers: list[RtpPeer] = []
        self.phones: list[Sipp] = []
        self.results: list = []
        #: coroutine functions run after the phones stopped, before the node shuts down
        self.cleanups: list = []

    async def __aenter__(self) -> "RtpeNode":
        from tests.interop.pbx.test_media_rtpengine_sipp import _node

        self.node = await _node(self.tmp_path, self.engine.address, **self.node_kw)
        self.pbx = RunningNode(self.node, self.node.test_port)
        try:
            for _ in range(self.n_peers):
                self.peers.append(await RtpPeer.open())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def phone(self, tenant, ext: str, scenario: str, **kw) -> Sipp:
        p = await phone(self.pbx, self.tmp_path, tenant, ext, scenario, **kw)
        self.phones.append(p)
        return p

    def dial(self, callee: str, scenario: str = "uac_call.xml", name: str = "caller", **kw) -> Sipp:
        return dial(self.pbx, self.tmp_path, callee, scenario, name, **kw)

    async def __aexit__(self, *exc) -> None:
        for p in self.peers:
            p.close()
        try:
            self.results = await stop_all(*self.phones)
            for fn in self.cleanups:
                await fn()
        finally:
            await self.node.__aexit__(None, None, None)
