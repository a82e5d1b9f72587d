"""A real phone in the IVR: baresip hears the welcome prompt, dials extension 1002 directly
with its keypad (RFC 4733), and ends up talking to another baresip through the node's
media engine (each hears the other's tone)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.media.wav import read_wav
from node.pbx import ivr
from tests.peers.audio import read_wav as read_float_wav
from tests.peers.audio import tone_share
from tests.peers.rtp_peer import best_correlation

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"
A_HZ, B_HZ = 440, 1000


async def test_direct_dial_from_a_real_phone_bridges_both_ways(pbx, peers, tmp_path):
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1, display_name="Alice")
    await pbx.config.create_extension(t.id, "1002", PW2, display_name="Bob")
    await ivr.put(pbx.config, t.id, "800", {
        "intro": ["welcome"], "prompt": ["menu"], "timeout": 8, "digit_timeout": 1.5, "direct_dial": True,
    })
    a = await peers.baresip(f"1001@{DOMAIN}", PW1, pbx.target, tone_hz=A_HZ)
    b = await peers.baresip(f"1002@{DOMAIN}", PW2, pbx.target, tone_hz=B_HZ, auto_answer=True)
    await a.wait_registered()
    await b.wait_registered()
    assert await pbx.wait_registered(t.id, "1002")

    await a.dial(f"sip:800@{DOMAIN}")
    await a.wait_call_established()
    await asyncio.sleep(3.2)  # the welcome prompt (2.7 s, not interruptible), then the menu
    await a.send_dtmf("1002#")  # '#' ends the number at once (no inter-digit timeout)
    established = await b.wait_call_established(timeout=12)  # auto-answer: no CALL_INCOMING
    assert established["peeruri"] == f"sip:1001@{DOMAIN}"
    await asyncio.sleep(2.0)  # bridged: tones both ways
    await a.hangup()
    await a.wait_call_closed()
    assert (await b.wait_call_closed())["param"] == "Connection reset by peer"

    a_rec = await a.wait_recording()
    b_rec = await b.wait_recording()
    heard, _ = read_float_wav(a_rec)
    welcome = read_wav(pbx.node.service.apps.prompts.path(t.id, "welcome")).astype(np.float64)
    corr = best_correlation(welcome, heard[: 4 * 8000] * 32768)
    print(f"caller heard {len(heard) / 8000:.1f} s; welcome correlation {corr:.3f}")
    assert corr > 0.7
    # after the transfer the caller hears the callee's tone, the callee the caller's
    tail = a_rec.with_name("tail.wav")
    _write_tail(a_rec, tail, seconds=1.5)
    assert tone_share(tail, B_HZ) > 0.8
    assert tone_share(b_rec, A_HZ) > 0.8
    assert pbx.node.media.totals()["digits"] >= 4

    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.caller, cdr.callee, cdr.disposition, cdr.hangup_cause) == ("1001", "800", "answered", "caller-bye")
    assert await pbx.wait_idle()
    assert not pbx.node.media.endpoints


def _write_tail(src, dst, seconds: float) -> None:
    from node.media.wav import write_wav

    x = read_wav(src)
    write_wav(dst, x[-int(seconds * 8000):])
