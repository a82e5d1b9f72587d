"""Music on hold across the bridge, with SIPp phones whose RTP is the test's own: 1001 talks
(a 700 Hz tone) to 1002, puts it on hold (re-INVITE a=sendonly), resumes (a=sendrecv). What
1002 hears is checked: the tone, then the node's music (it matches the MOH file, and the
tone is gone), then the tone again."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from node.media.wav import read_wav
from node.pbx import hold
from tests.peers.rtp_peer import RtpPeer, best_correlation, rms, tone_level
from tests.peers.sipp import Sipp, sipp_phone
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"


async def test_held_party_hears_music_then_the_caller_again(pbx, tmp_path):
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1)
    await pbx.config.create_extension(t.id, "1002", PW2)
    a, b = await RtpPeer.open(), await RtpPeer.open()
    callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_hold_media.xml",
                        registered_ms=20000, workdir=tmp_path / "phone", keys={"rtp_ip": "127.0.0.1", "rtp_port": b.port})
    await callee.start()
    assert await pbx.wait_registered(t.id, "1002")
    calls = pbx.node.service.calls

    def the_call():
        return next(iter(calls.values()), None)

    try:
        caller = asyncio.create_task(Sipp(
            "uac_hold_media.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=1600, timeout=30,
            keys={"rtp_ip": "127.0.0.1", "rtp_port": a.port}).run())
        assert await until(lambda: the_call() is not None and the_call().state.value == "answered")
        call = the_call()
        relay_a = ("127.0.0.1", call.media.session.a.local_port)  # where 1001's RTP goes (its SDP answer)
        talking = asyncio.create_task(a.send_tone(relay_a, 700.0, 5.2))
        assert await until(lambda: getattr(call, "hold", None) is not None and call.hold.held_side == "b")
        held_at = time.monotonic()
        assert await until(lambda: call.hold.held_side is None)
        resumed_at = time.monotonic()
        res = await asyncio.wait_for(caller, 30)
        await talking
    finally:
        a.close()
        b.close()
        cres = await callee.stop()
    res.assert_ok()
    invites = cres.received("INVITE")
    assert len(invites) == 3 and "a=sendonly" in invites[1].body, cres.describe()  # the hold reached 1002

    before = b.audio(held_at - 1.2, held_at)
    during = b.audio(held_at + 0.2, resumed_at)
    after = b.audio(resumed_at + 0.2, resumed_at + 1.3)
    tune = read_wav(hold.default_file(pbx.node.cfg.data_dir)).astype(np.float64)
    corr = best_correlation(during[:8000], np.concatenate([tune, tune]))
    print(f"700 Hz share: before {tone_level(before, 700):.3f} during {tone_level(during, 700):.3f} "
          f"after {tone_level(after, 700):.3f}; music rms {rms(during):.0f}, correlation with the MOH file {corr:.3f}")
    assert len(during) > 1.2 * 8000
    assert tone_level(before, 700.0) > 0.5
    assert rms(during) > 300 and corr > 0.8  # the node's music, not silence
    assert tone_level(during, 700.0) < 0.02  # the holder's stream is not relayed meanwhile
    assert tone_level(after, 700.0) > 0.5  # two-way relay restored
    assert await pbx.wait_idle()
    assert not pbx.node.media.tickers  # the music stopped with the hold
