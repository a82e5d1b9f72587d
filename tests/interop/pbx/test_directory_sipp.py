"""Dial-by-name against real SIPp peers: the caller dials the directory code, spells J-A-S as
RFC 4733 events, hears the matching colleague's name spoken (the RTP correlates with the name
recording), presses 1 and is bridged to that extension's phone. The caller's RTP is the test's
own socket (tests/peers/rtp_peer.py), so the node's symmetric-RTP latch stays on what is analysed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.media.wav import read_wav
from node.pbx import feature_codes
from tests.peers.rtp_peer import RtpPeer, best_correlation, node_media_of
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "dir.example"


def pw(ext: str) -> str:
    return f"pw-{ext}-secret"


async def test_spell_hear_the_name_press_one(pbx, tmp_path):
    t = await pbx.tenant("dir", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", pw("1001"), display_name="Alice Caller")
    await pbx.config.create_extension(t.id, "1002", pw("1002"), display_name="Jasmine Okafor")
    await pbx.config.create_extension(t.id, "1003", pw("1003"), display_name="Karl Jaspers")
    other = await pbx.tenant("other", "other.example")
    await pbx.config.create_extension(other.id, "1009", pw("1009"), display_name="Jason Elsewhere")
    await feature_codes.save(pbx.config, t.id, "*411", {"action": "directory"})
    phone = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "phone", user="1002",
                 domain=DOMAIN, auth_user="1002", auth_password=pw("1002"), ooc_scenario="uas_answer.xml",
                 duration_ms=30000, timeout=60)
    await phone.start()
    assert await pbx.wait_registered(t.id, "1002")
    peer = await RtpPeer.open()
    caller = Sipp("uac_media_call.xml", pbx.target, workdir=tmp_path / "caller", service="*411", user="1001",
                  domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), timeout=40,
                  keys={"rtp_ip": "127.0.0.1", "rtp_port": peer.port, "formats": "0 101", "hold_ms": 12000})
    try:
        await caller.start()
        dest = await node_media_of(pbx, peer)
        await asyncio.sleep(0.8)
        await peer.send_digits(dest, "527")  # J A S
        spelled = asyncio.get_running_loop().time()
        names_dir = pbx.node.service.apps.prompts.root / "names" / str(t.id)
        for _ in range(100):  # the first match's name is being spoken
            if list(names_dir.glob("*.wav")):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, spelled + 5.5 - asyncio.get_running_loop().time()))
        await peer.send_digits(dest, "1")  # call this person
        await asyncio.sleep(2.0)
        cres = await caller.stop(grace=2.0)
    finally:
        pres = await phone.stop()
        peer.close()
    # the first match by name is Jasmine (Karl Jaspers second; the other tenant's Jason never)
    names = list(names_dir.glob("*.wav"))
    assert [p.name.split("-")[0] for p in names] == ["1002"], names
    heard = peer.audio()
    name = read_wav(names[0]).astype(np.float64)
    corr = best_correlation(name, heard)
    print(f"heard {len(heard) / 8000:.1f} s; correlation with the spoken name {corr:.3f}")
    assert corr > 0.8
    invites = pres.received("INVITE")
    assert len(invites) == 1 and "sip:1001@" in invites[0].header("From"), pres.describe()
    assert cres.received(200)
