"""The mailbox menu against a real SIPp caller pressing keys (RFC 4733 events from a pcap):
*97 → PIN → 1 listen → 7 delete; and *98 cannot open another tenant's mailbox."""

from __future__ import annotations

import struct

import pytest

from node.pbx import feature_codes, voicemail
from tests.interop.pbx.pcap_caller import pcap_call
from tests.interop.pbx.test_voicemail_sipp import DOMAIN, PW, _tenant, tone
from tests.peers.rtp_pcap import rfc4733_packets, write_pcap
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop


def keys_at(batches: list[tuple[float, str]]) -> list[tuple[float, bytes]]:
    """RFC 4733 packets for each (start second, digits) batch: one timeline, one SSRC."""
    out = []
    for n, (start, digits) in enumerate(batches):
        for t, pkt in rfc4733_packets(digits):
            seq, ts = struct.unpack_from("!HI", pkt, 2)
            pkt = pkt[:2] + struct.pack("!HI", (seq + 100 * n) & 0xFFFF, ts + int(start * 8000)) + pkt[8:]
            out.append((start + t, pkt))
    return out


async def dial_menu(pbx, tmp_path, user: str, code: str, batches, hold_s: float):
    pcap = write_pcap(tmp_path / f"keys-{user}.pcap", keys_at(batches))
    res, _ = await pcap_call(
        pbx, pcap, dtmf_after_ms=500, hold_ms=int(hold_s * 1000), timeout=40, workdir=tmp_path / f"caller-{user}",
        service=code, user=user, domain=DOMAIN, auth_user=user, auth_password=PW[user],
    )
    return res


async def test_own_mailbox_pin_listen_delete(pbx, tmp_path):
    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711"})
    await feature_codes.save(pbx.config, t.id, "*97", {"action": "voicemail"})
    vm = pbx.node.service.voicemail
    old = vm.store.save_message(t.id, "1002", tone(500, 1.5), "1003", "", when=1000.0)
    new = vm.store.save_message(t.id, "1002", tone(600, 1.5), "1001", "Alice")
    assert vm.store.counts(t.id, "1002") == (2, 0)
    # 1002's message lamp (SIPp): the counts now, then the change listening makes
    lamp = Sipp("uac_subscribe_mwi.xml", pbx.target, workdir=tmp_path / "lamp", service="1002", user="1002",
                domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], keys={"expires": 120}, timeout=40)
    await lamp.start()
    assert await until(lambda: pbx.node.service.subscriptions.count == 1)
    # PIN, then 1 (listen); the newest message plays, 7 deletes it; # skips the older one
    res = await dial_menu(pbx, tmp_path, "1002", "*97", [(0.0, "4711#"), (3.0, "1"), (6.5, "7"), (10.5, "#")],
                          hold_s=12.0)
    res.assert_ok()
    lres = await lamp.wait()
    lres.assert_ok()
    from node.pbx import mwi

    summaries = [mwi.parse_summary(m.body)["voice-message"] for m in lres.received("NOTIFY")]
    assert summaries[:2] == ["2/0 (0/0)", "1/1 (0/0)"]  # listening to the newest made it old
    left = vm.store.messages(t.id, "1002")
    assert [m.id for m in left] == [old.id], "the newest message was not the one deleted"
    assert left[0].status == "saved"  # played (partly): no longer new
    assert vm.store.counts(t.id, "1002") == (0, 1)
    assert new.id not in {m.id for m in left}
    assert pbx.node.media.totals()["digits"] == 8
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_any_mailbox_code_stays_inside_the_callers_tenant(pbx, tmp_path):
    t = await _tenant(pbx)
    beta = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(beta.id, "1002", "pw-beta-1002")
    await voicemail.put(pbx.config, beta.id, "1002", {"pin": "4711"})
    await feature_codes.save(pbx.config, t.id, "*98", {"action": "voicemail_any"})
    vm = pbx.node.service.voicemail
    theirs = vm.store.save_message(beta.id, "1002", tone(500, 1.5), "2001", "")
    # alpha's 1001 types beta's mailbox number and PIN, then 1 and 7: it never gets in
    res = await dial_menu(pbx, tmp_path, "1001", "*98", [(0.0, "1002#4711#"), (5.2, "1"), (6.4, "7")], hold_s=7.2)
    res.assert_ok()
    assert [(m.id, m.status) for m in vm.store.messages(beta.id, "1002")] == [(theirs.id, "new")]
    # the same keys for a mailbox of alpha's own do get in (the refusal was the tenant, not the keys)
    await voicemail.put(pbx.config, t.id, "1003", {"pin": "4711"})
    mine = vm.store.save_message(t.id, "1003", tone(500, 1.5), "2001", "")
    res = await dial_menu(pbx, tmp_path, "1001", "*98", [(0.0, "1003#4711#"), (5.2, "1"), (6.4, "7")], hold_s=7.2)
    res.assert_ok()
    assert await until(lambda: vm.store.messages(t.id, "1003") == [])
    assert mine.id
    assert await pbx.wait_idle()


async def test_temporary_greeting_recorded_by_phone_is_what_callers_hear(pbx, tmp_path):
    """*97, PIN, 0 (options), 3 (temporary greeting): after the beep the phone plays a 900 Hz
    tone and presses #. A caller to the (unregistered) extension then hears that tone as the
    greeting; the options' 4 would delete it again."""
    from node.media.wav import read_wav
    from tests.interop.pbx.test_voicemail_sipp import call_and_speak, dominant_hz
    from tests.peers.rtp_pcap import pcmu_packets

    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711"})
    await feature_codes.save(pbx.config, t.id, "*97", {"action": "voicemail"})
    lib = pbx.node.service.apps.prompts
    record_prompt = len(read_wav(lib.path(t.id, "vm-record-greeting"))) / 8000
    t_rec = 4.0 + record_prompt + voicemail.BEEP_SECONDS + 0.8
    packets = keys_at([(0.0, "4711#"), (3.0, "0"), (4.0, "3"), (t_rec + 1.8, "#")])
    packets += [(t_rec + ts, pkt) for ts, pkt in pcmu_packets(tone(900, 1.5))]
    packets.sort(key=lambda p: p[0])
    pcap = write_pcap(tmp_path / "greeting.pcap", packets)
    res, _ = await pcap_call(
        pbx, pcap, dtmf_after_ms=500, hold_ms=int((t_rec + 3.0) * 1000), timeout=40, workdir=tmp_path / "owner",
        service="*97", user="1002", domain=DOMAIN, auth_user="1002", auth_password=PW["1002"],
    )
    res.assert_ok()
    vm = pbx.node.service.voicemail
    greeting = vm.store.greeting(t.id, "1002", "temporary")
    assert greeting is not None, "no temporary greeting stored"
    g = read_wav(greeting)
    assert 1.0 <= len(g) / 8000 <= 2.5 and abs(dominant_hz(g) - 900) < 15
    # a caller now hears it (1002 has no phone registered: straight to the mailbox)
    res, heard = await call_and_speak(pbx, tmp_path, "1002", 2.5, tone_s=1.2)
    res.assert_ok()
    assert abs(dominant_hz(heard[: int(len(g) * 0.9)]) - 900) < 15
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_five_calls_the_sender_back(pbx, tmp_path):
    """A message from 1003; its owner listens and presses 5: 1003 (a SIPp phone that answers)
    is called through the dial plan, From the mailbox owner, and bridged."""
    t = await _tenant(pbx)
    await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711"})
    await feature_codes.save(pbx.config, t.id, "*97", {"action": "voicemail"})
    pbx.node.service.voicemail.store.save_message(t.id, "1002", tone(500, 3.0), "1003", "Carol")
    phone = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "phone", user="1003",
                 domain=DOMAIN, auth_user="1003", auth_password=PW["1003"], ooc_scenario="uas_answer.xml",
                 duration_ms=20000, timeout=40)
    await phone.start()
    assert await pbx.wait_registered(t.id, "1003")
    try:
        res = await dial_menu(pbx, tmp_path, "1002", "*97", [(0.0, "4711#"), (3.0, "1"), (4.2, "5")], hold_s=7.0)
        res.assert_ok()
    finally:
        pres = await phone.stop()
    invites = pres.received("INVITE")
    assert len(invites) == 1 and "sip:1002@" in invites[0].header("From"), pres.describe()
    assert pres.received("ACK") and pres.received("BYE")
    assert await pbx.wait_idle() and not pbx.node.media.endpoints
