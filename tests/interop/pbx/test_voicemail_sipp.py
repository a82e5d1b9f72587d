"""Voicemail against real SIPp peers: a call to a busy / unreachable extension is answered by
its mailbox; the caller hears the greeting (RTP that correlates with the greeting prompts),
plays a 700 Hz tone after the beep (PCMU from a pcap the test wrote), and the stored WAV
holds that tone. A SIPp phone subscribed to message-summary gets the new counts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.media.wav import read_wav
from node.pbx import mwi, voicemail
from tests.interop.pbx.pcap_caller import pcap_call, received_audio
from tests.peers.net import free_port
from tests.peers.rtp_pcap import pcmu_packets, write_pcap
from tests.peers.rtp_peer import best_correlation
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW = {"1001": "pw-1001-secret", "1002": "pw-1002-secret", "1003": "pw-1003-secret"}
TONE_HZ = 700.0


def tone(freq: float, seconds: float, level: float = 9000) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_hz(samples: np.ndarray) -> float:
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spec = np.abs(np.fft.rfft(x))
    spec[:5] = 0
    return float(np.argmax(spec) * 8000 / len(samples))


async def _tenant(pbx, name="alpha", domain=DOMAIN):
    t = await pbx.tenant(name, domain)
    for ext, pw in PW.items():
        await pbx.config.create_extension(t.id, ext, pw)
    return t


def greeting_seconds(pbx, t, names) -> float:
    lib = pbx.node.service.apps.prompts
    return sum(len(read_wav(lib.path(t.id, n))) for n in names) / 8000


async def call_and_speak(pbx, tmp_path, callee: str, after_s: float, *, tone_s: float = 2.0, hold_ms: int = 600):
    """1001 calls ``callee``; ``after_s`` seconds after the answer it plays the tone, then
    hangs up. Returns (SIPp result, audio the caller received before it started sending)."""
    pcap = write_pcap(tmp_path / "tone.pcap", pcmu_packets(tone(TONE_HZ, tone_s)))
    res, listener = await pcap_call(
        pbx, pcap, dtmf_after_ms=int(after_s * 1000), hold_ms=int(tone_s * 1000) + hold_ms, timeout=40,
        workdir=tmp_path / "caller", service=callee, user="1001", domain=DOMAIN, auth_user="1001",
        auth_password=PW["1001"],
    )
    return res, received_audio(listener.packets)


async def test_busy_extension_takes_a_message_with_the_default_greeting(pbx, tmp_path):
    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711"})
    phone = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "phone", user="1002",
                 domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], ooc_scenario="uas_busy.xml",
                 duration_ms=30000, timeout=50)
    await phone.start()
    assert await pbx.wait_registered(t.id, "1002")
    names = ["vm-person-at", "digit-1", "digit-0", "digit-0", "digit-2", "vm-is-busy", "vm-leave-message"]
    greet = greeting_seconds(pbx, t, names)
    try:
        res, heard = await call_and_speak(pbx, tmp_path, "1002", greet + voicemail.BEEP_SECONDS + 0.8)
        res.assert_ok()
    finally:
        pres = await phone.stop()
    assert len(pres.received("INVITE")) == 1 and pres.sent(486), pres.describe()

    # what the caller heard: the greeting, spoken by the node (not silence, the busy prompt in it)
    assert len(heard) >= greet * 8000 * 0.9
    assert np.sqrt(np.mean(heard ** 2)) > 500
    busy = read_wav(pbx.node.service.apps.prompts.path(t.id, "vm-is-busy")).astype(np.float64)
    corr = best_correlation(busy, heard)
    print(f"greeting {greet:.1f} s, correlation with 'vm-is-busy' {corr:.3f}")
    assert corr > 0.8

    # what it left: one new message whose WAV is the caller's tone
    vm = pbx.node.service.voicemail
    assert await until(lambda: vm.store.counts(t.id, "1002") == (1, 0))
    msg = vm.store.messages(t.id, "1002")[0]
    assert (msg.caller, msg.status) == ("1001", "new")
    audio = read_wav(msg.path)
    assert 1.8 <= msg.duration <= 4.5, msg.duration
    loud = audio[np.abs(audio) > 2000]
    assert len(loud) > 8000, "the tone is not in the recording"
    hz = dominant_hz(audio)
    print(f"message {msg.duration:.2f} s, dominant frequency {hz:.0f} Hz")
    assert abs(hz - TONE_HZ) < 15

    # one CDR: answered (by the mailbox), callee the extension dialled
    cdrs = await pbx.wait_cdrs(t.id, 1)
    await asyncio.sleep(0.3)
    cdrs = await pbx.cdrs.list(t.id)
    assert [(c.caller, c.callee, c.disposition) for c in cdrs] == [("1001", "1002", "answered")]
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_unregistered_extension_message_lights_the_lamp(pbx, tmp_path):
    """1003 has no phone registered (480): its mailbox answers at once with the unavailable
    greeting (here one the owner uploaded); 1003's SIPp lamp subscription sees 0 then 1 new."""
    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1003", {"pin": "4711"})
    vm = pbx.node.service.voicemail
    vm.store.save_greeting(t.id, "1003", "unavailable", tone(440, 1.0, level=6000))
    lamp = Sipp("uac_subscribe_mwi.xml", pbx.target, workdir=tmp_path / "lamp", service="1003", user="1003",
                domain=DOMAIN, auth_user="1003", auth_password=PW["1003"], keys={"expires": 120}, timeout=40)
    await lamp.start()
    assert await until(lambda: pbx.node.service.subscriptions.count == 1)
    res, heard = await call_and_speak(pbx, tmp_path, "1003", 1.0 + voicemail.BEEP_SECONDS + 0.8)
    res.assert_ok()
    assert abs(dominant_hz(heard[: 8000]) - 440) < 15  # the uploaded greeting, first
    assert await until(lambda: vm.store.counts(t.id, "1003") == (1, 0))
    # the lamp's SIPp unsubscribes after the second NOTIFY: let it finish
    lres = await lamp.wait()
    lres.assert_ok()
    bodies = [mwi.parse_summary(m.body) for m in lres.received("NOTIFY")]
    assert [b.get("messages-waiting") for b in bodies[:2]] == ["no", "yes"]
    assert [b.get("voice-message") for b in bodies[:2]] == ["0/0 (0/0)", "1/0 (0/0)"]
    assert bodies[0]["message-account"] == f"sip:1003@{DOMAIN}"
    msg = vm.store.messages(t.id, "1003")[0]
    assert abs(dominant_hz(read_wav(msg.path)) - TONE_HZ) < 15
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_another_extension_cannot_watch_the_mailbox(pbx, tmp_path):
    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1003", {"pin": "4711"})
    res = await Sipp("uac_subscribe_mwi.xml", pbx.target, workdir=tmp_path / "spy", service="1003", user="1002",
                     domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], keys={"expires": 120},
                     timeout=10).run()
    assert not res.ok
    assert res.received(403), res.describe()


async def test_ivr_option_leads_to_a_mailbox(pbx, tmp_path):
    """IVR 800, key 8 → mailbox 1002 (its own 1 s greeting), the caller's tone is the message."""
    from node.pbx import ivr
    from tests.peers.rtp_pcap import rfc4733_packets

    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711"})
    await ivr.put(pbx.config, t.id, "800", {"prompt": ["menu"], "options": {"8": {"type": "voicemail", "value": "1002"}}})
    vm = pbx.node.service.voicemail
    vm.store.save_greeting(t.id, "1002", "unavailable", tone(440, 1.0, level=6000))
    start = 0.5 + 1.0 + voicemail.BEEP_SECONDS + 0.8
    packets = rfc4733_packets("8") + [(start + ts, p) for ts, p in pcmu_packets(tone(TONE_HZ, 1.5))]
    pcap = write_pcap(tmp_path / "ivr-vm.pcap", sorted(packets, key=lambda p: p[0]))
    res, _ = await pcap_call(
        pbx, pcap, dtmf_after_ms=800, hold_ms=int((start + 2.0) * 1000), workdir=tmp_path / "caller", service="800",
        user="1001", domain=DOMAIN, auth_user="1001", auth_password=PW["1001"],
    )
    res.assert_ok()
    assert await until(lambda: vm.store.counts(t.id, "1002") == (1, 0))
    msg = vm.store.messages(t.id, "1002")[0]
    assert msg.caller == "1001" and abs(dominant_hz(read_wav(msg.path)) - TONE_HZ) < 15
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.disposition) == ("800", "answered")
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_a_recording_cut_by_a_crash_is_a_message_after_restart(tmp_path):
    """What a node wrote of a recording before it died (its checkpoint file) is a new message
    once the node starts again; shorter than a second, it is dropped."""
    from node.pbx.voicemail_store import FileMailboxStore
    from node.runtime.app import Node
    from tests.interop.conftest import node_config

    cfg = node_config(tmp_path, free_port("127.0.0.1"))
    frames = list(tone(TONE_HZ, 2.0).reshape(-1, 160))
    cp = FileMailboxStore(cfg.data_dir).checkpoint(7, "1002", "1001", "Alice")
    cp.append(frames)  # ... and the process is killed here
    FileMailboxStore(cfg.data_dir).checkpoint(7, "1003", "1001", "Alice").append(frames[:30])
    async with Node(cfg) as node:
        store = node.service.voicemail.store
        msgs = store.messages(7, "1002")
        assert [(m.caller, m.status, m.recovered, m.duration) for m in msgs] == [("1001", "new", True, 2.0)]
        assert abs(dominant_hz(read_wav(msgs[0].path)) - TONE_HZ) < 15
        assert store.messages(7, "1003") == []


async def test_did_straight_to_a_mailbox(pbx, tmp_path):
    """A carrier call to a DID of type 'voicemail': the mailbox answers (unavailable greeting)
    and the carrier caller's tone is the message, with the carrier caller as sender."""
    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711"})
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3")
    await pbx.config.create_did(t.id, "+441135550199", "voicemail", "1002")
    vm = pbx.node.service.voicemail
    vm.store.save_greeting(t.id, "1002", "unavailable", tone(440, 1.0, level=6000))
    pcap = write_pcap(tmp_path / "tone.pcap", pcmu_packets(tone(TONE_HZ, 1.5)))
    res = await Sipp(
        "uac_ivr_dtmf.xml", pbx.target, workdir=tmp_path / "carrier", service="441135550199",
        user="447700900123", domain="carrier.example", local_ip="127.0.0.3", timeout=30,
        keys={"rtp_ip": "127.0.0.1", "rtp_port": free_port(), "dtmf_after_ms": int((1.0 + voicemail.BEEP_SECONDS + 0.8) * 1000),
              "pcap": pcap, "formats": "0", "hold_ms": 2100},
    ).run()
    res.assert_ok()
    assert await until(lambda: vm.store.counts(t.id, "1002") == (1, 0))
    msg = vm.store.messages(t.id, "1002")[0]
    assert msg.caller == "447700900123" and abs(dominant_hz(read_wav(msg.path)) - TONE_HZ) < 15
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.direction, cdr.callee, cdr.disposition) == ("inbound", "1002", "answered")
    assert await pbx.wait_idle()
