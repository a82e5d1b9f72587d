"""IVR open hours against real SIPp peers, at a pinned "now" (never the wall clock): outside
the hours the caller hears the menu's closed announcement (the RTP it gets correlates with
the prompt and lasts as long) and is bridged to the out-of-hours destination, a SIPp phone;
inside them the same number plays the normal menu and a key leads to its option."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from node.media.wav import read_wav
from node.pbx import ivr
from tests.interop.pbx.pcap_caller import RtpListener, pcap_call, received_audio
from tests.peers.net import free_port
from tests.peers.rtp_pcap import rfc4733_packets, write_pcap
from tests.peers.rtp_peer import best_correlation
from tests.peers.sipp import Sipp, sipp_phone

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
TZ = "America/New_York"
PW = {n: f"pw-{n}-secret" for n in ("1001", "1002", "1009")}
MENU = {
    "intro": ["welcome"],
    "prompt": ["menu"],
    "timeout": 8,
    "options": {"2": "1002"},
    "active": {"weekdays": "mon-fri", "time": "08:00-18:00"},
    "out_of_hours": "1009",
}


def _at(hour: int, minute: int) -> float:
    # Tuesday 2026-03-03 in New York (UTC-5): 07:30 there is 12:30 UTC, open if judged in UTC
    return dt.datetime(2026, 3, 3, hour, minute, tzinfo=ZoneInfo(TZ)).timestamp()


async def _setup(pbx):
    t = await pbx.tenant("alpha", DOMAIN, timezone=TZ)
    for n, pw in PW.items():
        await pbx.config.create_extension(t.id, n, pw, display_name=f"Ext {n}")
    await ivr.put(pbx.config, t.id, "800", MENU)
    return t


async def _phone(pbx, t, tmp_path, ext: str):
    p = sipp_phone(pbx.target, user=ext, password=PW[ext], domain=DOMAIN, answer_with="uas_answer.xml",
                   registered_ms=20000, timeout=40, workdir=tmp_path / f"phone-{ext}")
    await p.start()
    assert await pbx.wait_registered(t.id, ext)
    return p


def _voiced_seconds(audio: np.ndarray) -> float:
    """Seconds of 20 ms frames that are not silence."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    return float((np.sqrt((frames ** 2).mean(axis=1)) > 100).sum() * 0.02)


async def test_outside_hours_closed_announcement_then_out_of_hours_destination(pbx, tmp_path, monkeypatch):
    t = await _setup(pbx)
    monkeypatch.setattr(ivr, "clock", lambda: _at(7, 30))
    night = await _phone(pbx, t, tmp_path, "1009")
    day = await _phone(pbx, t, tmp_path, "1002")
    closed = read_wav(pbx.node.service.apps.prompts.path(t.id, "closed")).astype(np.float64)
    length = len(closed) / 8000
    pcap = write_pcap(tmp_path / "key2.pcap", rfc4733_packets("2"))  # a key pressed after the prompt: ignored
    try:
        caller, listener = await pcap_call(
            pbx, pcap, dtmf_after_ms=int(length * 1000) + 1200, hold_ms=1500, workdir=tmp_path / "caller",
            service="800", user="1001", domain=DOMAIN, auth_user="1001", auth_password=PW["1001"],
        )
        caller.assert_ok()
    finally:
        rn = await night.stop()
        rd = await day.stop()
    heard = received_audio(listener.packets)
    corr = best_correlation(closed, heard)
    voiced = _voiced_seconds(heard)
    print(f"closed prompt {length:.2f} s; heard {len(heard) / 8000:.2f} s, {voiced:.2f} s of it voiced,"
          f" correlation {corr:.3f}")
    assert corr > 0.8, "the caller did not hear the closed announcement"
    welcome = read_wav(pbx.node.service.apps.prompts.path(t.id, "welcome")).astype(np.float64)
    assert best_correlation(welcome, heard) < 0.5, "the menu played although the IVR is closed"
    # non-silent audio about as long as the prompt: the announcement, and nothing but it
    assert 0.6 * length <= voiced <= length + 0.5
    invites = rn.received("INVITE")
    assert len(invites) == 1 and "sip:1001@" in invites[0].header("From"), rn.describe()
    assert rn.received("BYE"), "the bridged call was not ended towards 1009"
    assert not rd.received("INVITE"), "the key pressed after the announcement was taken as a menu choice"
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [(c.caller, c.callee, c.disposition) for c in cdrs] == [("1001", "800", "answered")]
    assert await pbx.wait_idle()


async def test_inside_hours_the_menu_plays(pbx, tmp_path, monkeypatch):
    t = await _setup(pbx)
    monkeypatch.setattr(ivr, "clock", lambda: _at(9, 15))
    night = await _phone(pbx, t, tmp_path, "1009")
    day = await _phone(pbx, t, tmp_path, "1002")
    pcap = write_pcap(tmp_path / "key2.pcap", rfc4733_packets("2"))
    try:
        caller, listener = await pcap_call(
            pbx, pcap, dtmf_after_ms=3100, hold_ms=1500, workdir=tmp_path / "caller",
            service="800", user="1001", domain=DOMAIN, auth_user="1001", auth_password=PW["1001"],
        )
        caller.assert_ok()
    finally:
        rn = await night.stop()
        rd = await day.stop()
    heard = received_audio(listener.packets)
    welcome = read_wav(pbx.node.service.apps.prompts.path(t.id, "welcome")).astype(np.float64)
    closed = read_wav(pbx.node.service.apps.prompts.path(t.id, "closed")).astype(np.float64)
    assert best_correlation(welcome, heard) > 0.8
    assert best_correlation(closed, heard) < 0.5
    assert len(rd.received("INVITE")) == 1, "key 2 of the open menu did not lead to 1002"
    assert not rn.received("INVITE")
    assert await pbx.wait_idle()


async def test_closed_with_tenant_prompt_and_no_destination_hangs_up(pbx, tmp_path, monkeypatch):
    """The tenant's own recording of "closed" plays (not the default) and, with no
    out-of-hours destination, the node hangs up: the caller gets our BYE."""
    t = await _setup(pbx)
    await ivr.put(pbx.config, t.id, "800", {k: v for k, v in MENU.items() if k != "out_of_hours"})
    monkeypatch.setattr(ivr, "clock", lambda: _at(18, 0))  # the end of the range is exclusive: closed
    src = tmp_path / "closed-own.wav"
    subprocess.run(["sox", "-n", "-r", "16000", str(src), "synth", "1.2", "sine", "300-1200", "vol", "0.5"], check=True)
    own = read_wav(pbx.node.service.apps.prompts.upload(t.id, "closed", src)).astype(np.float64)
    listener = RtpListener()
    port = free_port("127.0.0.1")
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: listener, local_addr=("127.0.0.1", port))
    try:
        res = await Sipp("uac_call_remote_bye_rtp.xml", pbx.target, workdir=tmp_path / "caller", service="800",
                         user="1001", domain=DOMAIN, auth_user="1001", auth_password=PW["1001"], timeout=20,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": port}).run()
    finally:
        transport.close()
    res.assert_ok()
    assert res.received("BYE"), "the node did not hang up after the closed prompt"
    heard = received_audio(listener.packets)
    default = read_wav(pbx.node.service.apps.prompts.default_dir / "closed.wav").astype(np.float64)
    voiced = _voiced_seconds(heard)
    print(f"own closed prompt {len(own) / 8000:.2f} s; heard {voiced:.2f} s voiced,"
          f" correlation {best_correlation(own, heard):.3f}")
    assert best_correlation(own, heard) > 0.8
    assert best_correlation(default, heard) < 0.5, "the default prompt played, not the tenant's"
    assert 0.8 <= voiced <= 1.2 + 0.5
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [(c.callee, c.disposition) for c in cdrs] == [("800", "answered")]
    assert await pbx.wait_idle()
