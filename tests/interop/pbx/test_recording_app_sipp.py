"""Recording of calls the node answered first: a SIPp caller reaches an IVR and presses 2, or
waits in a queue, and is put through to extension 1002, a SIPp phone. Both parties' RTP is
the test's own (RtpPeer), each a different tone; the WAV the node writes from its two media
endpoints holds the caller on the left, the extension on the right (FFT), and names the
call's one CDR. The answering extension's policy decides ("never" wins), and an on-demand
caller's *1 works as in a plain call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.pbx import ivr, queue_calls, recording
from tests.interop.pbx._calls import LOOP, rtp_keys
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, tenant_with
from tests.interop.pbx.test_recording_sipp import _read_stereo
from tests.peers.rtp_peer import RtpPeer, node_media_of, tone_level
from tests.waiting import until

pytestmark = pytest.mark.interop

MENU = {"intro": [], "prompt": ["menu"], "timeout": 8, "options": {"2": "1002"}}  # the menu takes keys at once


async def _ivr_call(pbx, tmp_path, t, a: RtpPeer, b: RtpPeer, seconds: float, *, service: str = "800",
                    digits: str = "2", talk=None):
    """1001 dials ``service`` (the IVR 800) and presses ``digits``; once 1002 answers, both
    send their tone for ``seconds`` (or ``talk(to_node, to_b_ep)`` runs)."""
    callee = await phone(pbx, tmp_path, t, "1002", "uas_hold_media.xml", keys=rtp_keys(b))
    calls = pbx.node.service.calls
    try:
        caller = asyncio.create_task(dial(pbx, tmp_path, service, "uac_media_call.xml", keys=rtp_keys(
            a, formats="0 101", hold_ms=int(seconds * 1000) + 3000)).run())
        to_node = await node_media_of(pbx, a)
        if digits:
            await a.send_digits(to_node, digits)
        assert await until(lambda: any(getattr(c, "answered_leg", None) is not None for c in list(calls.values())))
        call = next(iter(calls.values()))
        assert call.b_ep is not None and call.ep.peer is call.b_ep  # bridged in the media engine
        to_b_ep = (LOOP, call.b_ep.local_port)
        if talk is None:
            await asyncio.gather(a.send_tone(to_node, 600.0, seconds), b.send_tone(to_b_ep, 1100.0, seconds))
        else:
            await talk(to_node, to_b_ep)
        res = await asyncio.wait_for(caller, 30)
    finally:
        a.close()
        b.close()
        await callee.stop()
    res.assert_ok()
    assert await pbx.wait_idle()
    await recording.drain()
    return call


async def _tenant(pbx):
    t = await tenant_with(pbx, "1002")
    await ivr.put(pbx.config, t.id, "800", MENU)
    return t


async def test_ivr_transfer_to_always_recorded_extension_is_recorded_with_both_parties(pbx, tmp_path):
    t = await _tenant(pbx)
    await recording.put(pbx.config, t.id, "1002", {"mode": "always"})
    a, b = await RtpPeer.open(), await RtpPeer.open()
    call = await _ivr_call(pbx, tmp_path, t, a, b, 2.0)
    data_dir = pbx.node.cfg.data_dir
    recs = recording.list_recordings(data_dir, t.id)
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r["caller"], r["callee"], r["answered_by"], r["trigger"]) == ("1001", "800", "1002", "always")
    wav = _read_stereo(recording.recording_path(data_dir, t.id, r["file"]))
    left, right = wav[:, 0], wav[:, 1]
    shares = {ch: (round(tone_level(x, 600.0), 3), round(tone_level(x, 1100.0), 3)) for ch, x in (("L", left), ("R", right))}
    print(f"recording {r['file']}: {len(wav) / 8000:.2f} s, (600 Hz, 1100 Hz) shares per channel {shares}")
    assert len(wav) >= 1.8 * 8000
    assert tone_level(left, 600.0) > 0.5 and tone_level(left, 1100.0) < 0.01  # the caller, left
    assert tone_level(right, 1100.0) > 0.5 and tone_level(right, 600.0) < 0.01  # extension 1002, right
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [(c.id, c.callee, c.disposition) for c in cdrs] == [(r["cdr_id"], "800", "answered")]
    assert r["cdr_id"] == call.id and r["call_id"] == call.invite.call_id


async def test_ivr_transfer_to_extension_without_recording_writes_nothing(pbx, tmp_path):
    t = await _tenant(pbx)
    await recording.put(pbx.config, t.id, "1001", {"mode": "always"})
    await recording.put(pbx.config, t.id, "1002", {"mode": "never"})  # the agent opted out: never wins
    a, b = await RtpPeer.open(), await RtpPeer.open()
    call = await _ivr_call(pbx, tmp_path, t, a, b, 0.6)
    assert getattr(call, "recorder", None) is None
    assert recording.list_recordings(pbx.node.cfg.data_dir, t.id) == []
    assert len(await pbx.wait_cdrs(t.id, 1)) == 1


async def test_queue_agent_with_always_recording_is_recorded(pbx, tmp_path):
    t = await _tenant(pbx)
    await queue_calls.put(pbx.config, t.id, "700", {"members": ["1002"], "ring_timeout": 15})
    await pbx.node.acd.login(t.id, "1002")
    await recording.put(pbx.config, t.id, "1002", {"mode": "always"})
    a, b = await RtpPeer.open(), await RtpPeer.open()
    call = await _ivr_call(pbx, tmp_path, t, a, b, 1.5, service="700", digits="")
    recs = recording.list_recordings(pbx.node.cfg.data_dir, t.id)
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r["callee"], r["answered_by"], r["cdr_id"]) == ("700", "1002", call.id)
    wav = _read_stereo(recording.recording_path(pbx.node.cfg.data_dir, t.id, r["file"]))
    assert tone_level(wav[:, 0], 600.0) > 0.5 and tone_level(wav[:, 1], 1100.0) > 0.5
    assert [c.id for c in await pbx.wait_cdrs(t.id, 1)] == [call.id]


async def test_on_demand_caller_star1_through_ivr_records_between_the_keys(pbx, tmp_path):
    t = await _tenant(pbx)
    await recording.put(pbx.config, t.id, "1001", {"mode": "on_demand"})
    a, b = await RtpPeer.open(), await RtpPeer.open()

    async def talk(to_node, to_b_ep):
        async def caller():
            await a.send_tone(to_node, 600.0, 0.4)  # not recorded yet
            await a.send_digits(to_node, "*1")
            await a.send_tone(to_node, 600.0, 1.0)
            await a.send_digits(to_node, "*1")
            await a.send_tone(to_node, 600.0, 0.4)  # no longer recorded

        await asyncio.gather(caller(), b.send_tone(to_b_ep, 1300.0, 2.0))

    await _ivr_call(pbx, tmp_path, t, a, b, 2.2, talk=talk)
    recs = recording.list_recordings(pbx.node.cfg.data_dir, t.id)
    assert len(recs) == 1 and recs[0]["trigger"] == "on_demand", recs
    wav = _read_stereo(recording.recording_path(pbx.node.cfg.data_dir, t.id, recs[0]["file"]))
    left = wav[: len(wav) // 160 * 160, 0].reshape(-1, 160)
    voiced = float((np.sqrt((left ** 2).mean(axis=1)) > 300).sum() * 0.02)
    print(f"on-demand segment: {len(wav) / 8000:.2f} s, caller's tone in it {voiced:.2f} s")
    assert 0.8 <= voiced <= 1.3  # the 1 s between the two *1, not the 1.8 s the caller sent
    assert tone_level(wav[:, 0], 600.0) > 0.5 and tone_level(wav[:, 1], 1300.0) > 0.5
