"""Call recording of bridged SIPp calls whose RTP is the test's own: each party sends its own
tone; the WAV the node writes must hold the caller's tone on the left channel and the
callee's on the right (FFT). On demand: *1 (RFC 4733, seen by the relay) starts and stops it."""

from __future__ import annotations

import asyncio
import wave

import numpy as np
import pytest

from node.pbx import recording
from tests.peers.rtp_peer import RtpPeer, tone_level
from tests.peers.sipp import Sipp, sipp_phone
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"


def _read_stereo(path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2).astype(np.float64)


async def _call(pbx, tmp_path, t, a: RtpPeer, b: RtpPeer, talk):
    """1001 calls 1002; ``talk(call, to_a, to_b)`` runs once the call is answered."""
    callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_hold_media.xml",
                        registered_ms=20000, workdir=tmp_path / "phone", keys={"rtp_ip": "127.0.0.1", "rtp_port": b.port})
    await callee.start()
    assert await pbx.wait_registered(t.id, "1002")
    calls = pbx.node.service.calls
    try:
        caller = asyncio.create_task(Sipp(
            "uac_media_call.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1, timeout=30,
            keys={"rtp_ip": "127.0.0.1", "rtp_port": a.port, "formats": "0 101", "hold_ms": 3000}).run())
        assert await until(lambda: calls and next(iter(calls.values())).state.value == "answered")
        call = next(iter(calls.values()))
        s = call.media.session
        await talk(call, ("127.0.0.1", s.a.local_port), ("127.0.0.1", s.b.local_port))
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
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1)
    await pbx.config.create_extension(t.id, "1002", PW2)
    return t


async def test_always_recorded_call_holds_both_parties_in_stereo(pbx, tmp_path):
    t = await _tenant(pbx)
    await recording.put(pbx.config, t.id, "1002", {"mode": "always"})
    other = await pbx.tenant("beta", "beta.example")
    a, b = await RtpPeer.open(), await RtpPeer.open()

    async def talk(call, to_a, to_b):
        await asyncio.gather(a.send_tone(to_a, 600.0, 2.0), b.send_tone(to_b, 1100.0, 2.0))

    call = await _call(pbx, tmp_path, t, a, b, talk)
    data_dir = pbx.node.cfg.data_dir
    recs = recording.list_recordings(data_dir, t.id)
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r["caller"], r["callee"], r["cdr_id"], r["trigger"]) == ("1001", "1002", call.id, "always")
    wav = _read_stereo(recording.recording_path(data_dir, t.id, r["file"]))
    left, right = wav[:, 0], wav[:, 1]
    shares = {ch: (round(tone_level(x, 600.0), 3), round(tone_level(x, 1100.0), 3)) for ch, x in (("L", left), ("R", right))}
    print(f"recording {r['file']}: {len(wav) / 8000:.2f} s, (600 Hz, 1100 Hz) shares per channel {shares}")
    assert len(wav) >= 1.8 * 8000
    assert tone_level(left, 600.0) > 0.5 and tone_level(left, 1100.0) < 0.01  # the caller, left
    assert tone_level(right, 1100.0) > 0.5 and tone_level(right, 600.0) < 0.01  # the callee, right
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [c.id for c in cdrs] == [r["cdr_id"]]  # the recording names its CDR
    assert recording.list_recordings(data_dir, other.id) == []  # nothing for another tenant
    assert recording.delete_recording(data_dir, t.id, r["file"])
    assert recording.list_recordings(data_dir, t.id) == []


async def test_on_demand_star1_records_only_between_the_keys(pbx, tmp_path):
    t = await _tenant(pbx)
    await recording.put(pbx.config, t.id, "1001", {"mode": "on_demand"})
    a, b = await RtpPeer.open(), await RtpPeer.open()

    async def talk(call, to_a, to_b):
        async def caller():
            await a.send_tone(to_a, 600.0, 0.4)  # not recorded yet
            await a.send_digits(to_a, "*1")
            await a.send_tone(to_a, 600.0, 1.0)
            await a.send_digits(to_a, "*1")
            await a.send_tone(to_a, 600.0, 0.4)  # no longer recorded

        async def callee():
            await b.send_tone(to_b, 1300.0, 2.0)  # the callee's keys would not count anyway

        await asyncio.gather(caller(), callee())

    await _call(pbx, tmp_path, t, a, b, talk)
    recs = recording.list_recordings(pbx.node.cfg.data_dir, t.id)
    assert len(recs) == 1 and recs[0]["trigger"] == "on_demand", recs
    wav = _read_stereo(recording.recording_path(pbx.node.cfg.data_dir, t.id, recs[0]["file"]))
    left = wav[: len(wav) // 160 * 160, 0].reshape(-1, 160)
    voiced = float((np.sqrt((left ** 2).mean(axis=1)) > 300).sum() * 0.02)
    print(f"on-demand segment: {len(wav) / 8000:.2f} s, caller's tone in it {voiced:.2f} s")
    assert 0.8 <= voiced <= 1.3  # the 1 s between the two *1, not the 1.8 s the caller sent
    assert tone_level(wav[:, 0], 600.0) > 0.5 and tone_level(wav[:, 1], 1300.0) > 0.5
