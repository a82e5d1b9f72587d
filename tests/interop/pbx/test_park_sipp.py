"""Call park with real SIPp phones: the callee parks the caller by transferring to the park
lot, the caller hears music on hold, another phone retrieves the call by
dialling the slot; an unretrieved call rings the parker again after the park timeout."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.media import g711
from node.pbx import feature_objects
from tests.interop.pbx._calls import RTP, RawRtp
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop


async def test_park_and_retrieve_from_another_phone(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await feature_objects.save(pbx.config, t.id, "park", "700", {"first": "701", "count": 3, "timeout": 30})
    parker = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer.xml", keys={"refer_to": f"700@{DOMAIN}"})
    listener = await RawRtp.open()
    caller = dial(pbx, tmp_path, "1002", "uac_call_remote_bye_rtp.xml", keys=dict(RTP, rtp_port=listener.port))
    await caller.start()
    try:
        for _ in range(100):  # until the call is parked
            if getattr(pbx.node.service, "parking", None) and pbx.node.service.parking.slots:
                break
            await asyncio.sleep(0.05)
        assert list(pbx.node.service.parking.slots) == [(t.id, "701")], "the call was not parked in 701"
        await asyncio.sleep(1.5)  # the caller listens to the hold tone
        parked_audio = list(listener.packets)
        empty = await dial(pbx, tmp_path, "702", "uac_call_expect_error.xml", "empty", user="1003",
                           variables={"expected": 404}).run()
        empty.assert_ok()
        retriever = await dial(pbx, tmp_path, "701", user="1003", duration_ms=800, name="retriever").run()
        retriever.assert_ok()
        cres = await caller.wait()
    finally:
        listener.close()
        (pres,) = await stop_all(parker)
    cres.assert_ok()
    assert pres.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and pres.received("BYE")
    assert "nothing parked in slot 702" in empty.received(404)[0].first_line
    # what the parked caller heard: the tenant's music on hold (the default tune: notes of
    # a C major / A minor / F / G arpeggio, half a second each) from the media engine
    pcmu = sorted((int.from_bytes(p[2:4], "big"), p[12:]) for p in parked_audio if len(p) > 12 and p[1] & 0x7F == 0)
    audio = g711.ulaw_decode(b"".join(pl for _, pl in pcmu)).astype(np.float64)
    assert len(audio) >= 0.5 * 8000, f"only {len(audio) / 8000:.2f} s of audio while parked"
    notes = (174.61, 196.0, 220.0, 246.94, 261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 523.25)
    heard = 0
    for i in range(0, len(audio) - 4000, 4000):
        chunk = audio[i:i + 4000]
        spectrum = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk))))
        peak = np.argmax(spectrum) * 8000 / len(chunk)
        heard += any(abs(peak - f) < 6 for f in notes if f != 440.0)  # 440 Hz: could be ringback
    assert heard >= 1, "the parked caller did not hear the music on hold"
    assert np.sqrt(np.mean(audio ** 2)) > 300, "the parked caller heard (near) silence"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
        ("1001", "1002", "parked"), ("1001", "701", "retrieved-by-1003"), ("1001", "1003", "callee-bye")]
    assert not pbx.node.service.parking.slots
    assert await pbx.wait_idle()
    assert all(pbx.node.service.line_states.dialogs(t.id, e) == [] for e in ("1001", "1002", "1003"))


async def test_park_timeout_rings_the_parker(pbx, tmp_path):
    t = await tenant_with(pbx, "1002")
    await feature_objects.save(pbx.config, t.id, "park", "700", {"first": "701", "count": 1, "timeout": 2})
    parked = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    parker_phone = await phone(pbx, tmp_path, t, "1001", "uas_answer_hangup.xml", variables={"hangup_ms": 500})
    try:
        res = await dial(pbx, tmp_path, "1002", "uac_call_refer.xml", "parker", duration_ms=300,
                         keys={"refer_to": f"700@{DOMAIN}"}).run()
        res.assert_ok()
        for _ in range(120):  # park timeout (2 s), recall, the parker's phone hangs up
            if not pbx.node.service.calls:
                break
            await asyncio.sleep(0.05)
    finally:
        r2, r1 = await stop_all(parked, parker_phone)
    recall = r1.received("INVITE")
    assert len(recall) == 1 and "sip:1002@alpha.example" in recall[0].header("From")
    assert r2.received("BYE"), "the parked party was not hung up after the recall ended"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
        ("1001", "1002", "parked"), ("1002", "701", "park-timeout"), ("1002", "1001", "callee-bye")]
    assert cdrs[2].start - cdrs[1].start >= 1.9
