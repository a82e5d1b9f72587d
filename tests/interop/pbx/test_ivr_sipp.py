"""The IVR against real SIPp peers: a caller hears the node's own prompt (the RTP it gets
is the welcome prompt, by correlation with the WAV), presses 2 as RFC 4733 events from a
pcap the test wrote, and is bridged to extension 1002, a SIPp phone that answers."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from node.config_rules import ConfigError
from node.media.wav import read_wav
from node.pbx import ivr
from tests.interop.pbx.pcap_caller import RtpListener, pcap_call, received_audio
from tests.peers.net import free_port
from tests.peers.rtp_pcap import rfc4733_packets, write_pcap
from tests.peers.rtp_peer import best_correlation
from tests.peers.sipp import Sipp, sipp_phone

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"
MENU = {
    "intro": ["welcome"],
    "prompt": ["menu"],
    "timeout": 8,
    "options": {"2": {"type": "extension", "value": "1002", "announce": ["transferring"]}},
}


async def _tenant(pbx):
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1, display_name="Alice")
    await pbx.config.create_extension(t.id, "1002", PW2, display_name="Bob")
    return t


async def test_ivr_prompt_then_rfc4733_key_bridges_to_extension(pbx, tmp_path):
    t = await _tenant(pbx)
    await ivr.put(pbx.config, t.id, "800", MENU)
    callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_answer.xml",
                        registered_ms=20000, timeout=40, workdir=tmp_path / "phone")
    await callee.start()
    assert await pbx.wait_registered(t.id, "1002")
    pcap = write_pcap(tmp_path / "key2.pcap", rfc4733_packets("2"))
    try:
        caller, listener = await pcap_call(
            pbx, pcap, dtmf_after_ms=3100, hold_ms=4200, workdir=tmp_path / "caller", service="800", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1,
        )
        caller.assert_ok()
    finally:
        cres = await callee.stop()

    # 1. the caller heard the welcome prompt, from the node's own media endpoint
    answer = next(m for m in caller.received(200) if "INVITE" in m.header("CSeq")).body
    assert "telephone-event" in answer and "m=audio" in answer
    heard = received_audio(listener.packets)
    assert len(heard) >= 2.9 * 8000, f"only {len(heard) / 8000:.1f} s of audio before the key press"
    welcome = read_wav(pbx.node.service.apps.prompts.path(t.id, "welcome")).astype(np.float64)
    assert np.sqrt(np.mean(heard[: len(welcome)] ** 2)) > 500  # not silence
    corr = best_correlation(welcome, heard)
    print(f"heard {len(heard) / 8000:.2f} s, correlation with the welcome prompt {corr:.3f}")
    assert corr > 0.8
    # the key came as RFC 4733 events (the caller's SDP offered them; none in-band)
    assert pbx.node.media.totals()["digits"] == 1

    # 2. the key led to extension 1002: the node placed the call and the phone answered it
    invites = cres.received("INVITE")
    assert len(invites) == 1, cres.describe()
    assert "sip:1001@alpha.example" in invites[0].header("From")
    assert "m=audio" in invites[0].body and "telephone-event" in invites[0].body
    assert cres.received("ACK") and cres.received("BYE"), "the bridged call was not ended towards 1002"

    # 3. one CDR: answered by the node, the IVR as callee
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [(c.caller, c.callee, c.disposition, c.hangup_cause) for c in cdrs] == [
        ("1001", "800", "answered", "caller-bye")]
    assert await pbx.wait_idle()
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints


async def test_ivr_config_is_validated_and_tenant_scoped(pbx, tmp_path):
    t = await _tenant(pbx)
    other = await pbx.tenant("beta", "beta.example")
    with pytest.raises(ConfigError, match="option key"):
        await ivr.put(pbx.config, t.id, "800", {"options": {"12": "1002"}})
    with pytest.raises(ConfigError, match="destination type"):
        await ivr.put(pbx.config, t.id, "800", {"options": {"1": {"type": "teleport"}}})
    with pytest.raises(ConfigError, match="is an extension"):
        await ivr.put(pbx.config, t.id, "1002", MENU)
    await ivr.put(pbx.config, other.id, "800", MENU)
    # alpha has no IVR 800: its caller gets the ordinary 404, never beta's menu
    res = await Sipp("uac_call_expect_error.xml", pbx.target, workdir=tmp_path / "c", service="800", user="1001",
                     domain=DOMAIN, auth_user="1001", auth_password=PW1, variables={"expected": 404}).run()
    res.assert_ok()
    assert not pbx.node.media.endpoints


async def test_did_from_carrier_reaches_ivr_and_inband_key_transfers(pbx, tmp_path):
    """A carrier call to a DID of type 'ivr'; the carrier offers no telephone-event, so the key
    arrives as an in-band DTMF tone in the PCMU stream and the Goertzel detector finds it."""
    from node.media.tones import dtmf_tone

    from tests.peers.rtp_pcap import pcmu_packets

    t = await _tenant(pbx)
    await ivr.put(pbx.config, t.id, "800", dict(MENU, options={"2": "1002"}))  # no announcement
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3")
    await pbx.config.create_did(t.id, "+441135550100", "ivr", "800")
    callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_answer.xml",
                        registered_ms=20000, timeout=40, workdir=tmp_path / "phone")
    await callee.start()
    assert await pbx.wait_registered(t.id, "1002")
    silence = np.zeros(8000 // 5, dtype=np.int16)
    audio = np.concatenate([silence, dtmf_tone("2", 120).ravel(), silence])
    pcap = write_pcap(tmp_path / "inband2.pcap", pcmu_packets(audio))
    try:
        caller, listener = await pcap_call(
            pbx, pcap, dtmf_after_ms=3100, hold_ms=1800, formats="0", workdir=tmp_path / "carrier",
            service="441135550100", user="447700900123", domain="carrier.example", local_ip="127.0.0.3",
        )
        caller.assert_ok()
        assert not caller.received(407)  # trunks are authenticated by address
    finally:
        cres = await callee.stop()
    answer = next(m for m in caller.received(200) if "INVITE" in m.header("CSeq")).body
    assert "telephone-event" not in answer  # none offered, none answered
    welcome = read_wav(pbx.node.service.apps.prompts.path(t.id, "welcome")).astype(np.float64)
    assert best_correlation(welcome, received_audio(listener.packets)) > 0.8
    invites = cres.received("INVITE")
    assert len(invites) == 1 and "447700900123" in invites[0].header("From"), cres.describe()
    assert cres.received("BYE")
    assert pbx.node.media.totals()["digits"] == 1
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.direction, cdr.caller, cdr.callee, cdr.disposition) == ("inbound", "447700900123", "800", "answered")
    assert await pbx.wait_idle()


async def test_hold_and_resume_in_the_ivr_are_answered_by_its_endpoint(pbx, tmp_path):
    """re-INVITEs of a caller sitting in the menu: sendonly gets recvonly, sendrecv gets
    sendrecv, the node's SDP keeps its o= line and port, and the caller's BYE ends the call."""
    t = await _tenant(pbx)
    await ivr.put(pbx.config, t.id, "800", dict(MENU, timeout=30))
    caller = await Sipp("uac_hold_resume.xml", pbx.target, workdir=tmp_path / "c", service="800", user="1001",
                        domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=700).run()
    caller.assert_ok()
    answers = [m.body for m in caller.received(200) if "INVITE" in m.header("CSeq")]
    assert len(answers) >= 3
    ports = {re.search(r"^m=audio (\d+)", a, re.M).group(1) for a in answers}
    origins = {re.search(r"^o=\S+ (\d+) ", a, re.M).group(1) for a in answers}
    assert len(ports) == 1 and len(origins) == 1
    assert "a=recvonly" in answers[-2] and "a=sendrecv" in answers[-1]
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.disposition, cdr.hangup_cause) == ("800", "answered", "caller-bye")
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_ivr_option_to_an_outside_number_through_an_authenticating_trunk(pbx, tmp_path):
    t = await _tenant(pbx)
    carrier = Sipp("uas_auth_answer.xml", None, workdir=tmp_path / "carrier", local_ip="127.0.0.3",
                   keys={"auth_user": "acct77", "auth_pass": "carrier-pw", "domain": "carrier.example"})
    await carrier.start()
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3", port=carrier.local_port,
                                  username="acct77", password="carrier-pw")
    await pbx.config.create_route(t.id, "0", "carrier", strip=1, prepend="44")
    await ivr.put(pbx.config, t.id, "800", {"prompt": ["menu"], "options": {"9": "tel:0113496000"}})
    pcap = write_pcap(tmp_path / "key9.pcap", rfc4733_packets("9"))
    try:
        caller, listener = await pcap_call(
            pbx, pcap, dtmf_after_ms=800, hold_ms=1500, workdir=tmp_path / "caller", service="800", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1,
        )
        caller.assert_ok()
    finally:
        res = await carrier.stop()
    assert received_audio(listener.packets).std() > 300  # the menu was playing
    invites = res.received("INVITE")
    assert len(invites) == 2, res.describe()  # challenged, then authenticated
    assert invites[1].first_line.startswith("INVITE sip:44113496000@127.0.0.3")
    assert "Authorization" in "\n".join(invites[1].text.splitlines()[:30])
    assert res.received("BYE")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.trunk, cdr.disposition) == ("800", "carrier", "answered")
    assert await pbx.wait_idle()


async def test_busy_extension_keeps_the_caller_in_the_ivr(pbx, tmp_path):
    """Key 2 rings 1002, which is busy: no bridge; the caller stays with the IVR (hears
    "unavailable", then the menu) until it hangs up itself."""
    t = await _tenant(pbx)
    await ivr.put(pbx.config, t.id, "800", {"prompt": ["menu"], "options": {"2": "1002"}, "timeout": 20})
    callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_busy.xml",
                        registered_ms=20000, timeout=40, workdir=tmp_path / "phone")
    await callee.start()
    assert await pbx.wait_registered(t.id, "1002")
    pcap = write_pcap(tmp_path / "key2.pcap", rfc4733_packets("2"))
    try:
        caller, _ = await pcap_call(
            pbx, pcap, dtmf_after_ms=800, hold_ms=2000, workdir=tmp_path / "caller", service="800", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1,
        )
        caller.assert_ok()  # its BYE was answered by the IVR, still holding the call
    finally:
        cres = await callee.stop()
    assert len(cres.received("INVITE")) == 1 and cres.sent(486)
    assert not cres.received("BYE")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.disposition, cdr.hangup_cause) == ("800", "answered", "caller-bye")
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_ivr_option_to_a_hunt_group_follows_its_rules(pbx, tmp_path):
    """Key 3 → hunt group 600 (sequential: 1002 then 1003). 1002 is busy, so the hunt moves on
    at once and 1003 answers: the IVR transfer runs the tenant's features like any call."""
    from node.pbx import hunt_groups

    t = await _tenant(pbx)
    await pbx.config.create_extension(t.id, "1003", "pw-1003-secret")
    await pbx.config.put_object(t.id, hunt_groups.KIND, "600", hunt_groups.validate(
        {"strategy": "sequential", "ring": 10, "members": ["1002", "1003"]}))
    await ivr.put(pbx.config, t.id, "800", {"prompt": ["menu"], "options": {"3": "600"}})
    phones = []
    for ext, pw, scenario in (("1002", PW2, "uas_busy.xml"), ("1003", "pw-1003-secret", "uas_answer.xml")):
        phone = sipp_phone(pbx.target, user=ext, password=pw, domain=DOMAIN, answer_with=scenario,
                           registered_ms=20000, timeout=40, workdir=tmp_path / f"phone{ext}")
        await phone.start()
        assert await pbx.wait_registered(t.id, ext)
        phones.append(phone)
    pcap = write_pcap(tmp_path / "key3.pcap", rfc4733_packets("3"))
    try:
        caller, _ = await pcap_call(
            pbx, pcap, dtmf_after_ms=800, hold_ms=2000, workdir=tmp_path / "caller", service="800", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1,
        )
        caller.assert_ok()
    finally:
        busy, answering = [await p.stop() for p in phones]
    assert len(busy.received("INVITE")) == 1 and busy.sent(486)
    assert len(answering.received("INVITE")) == 1 and answering.received("BYE"), answering.describe()
    assert await pbx.wait_idle() and not pbx.node.media.endpoints


async def test_late_offer_call_into_the_ivr(pbx, tmp_path):
    """INVITE without SDP: the node's 200 carries its offer, the caller's ACK the answer, and
    the IVR then streams its prompt to the address in that answer."""
    t = await _tenant(pbx)
    await ivr.put(pbx.config, t.id, "800", dict(MENU, timeout=30))
    loop = asyncio.get_running_loop()
    listener = RtpListener()
    rtp_port = free_port("127.0.0.1")
    transport, _ = await loop.create_datagram_endpoint(lambda: listener, local_addr=("127.0.0.1", rtp_port))
    try:
        caller = await Sipp("uac_late_offer.xml", pbx.target, workdir=tmp_path / "c", service="800", user="1001",
                            domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=3200,
                            keys={"rtp_ip": "127.0.0.1", "rtp_port": rtp_port}).run()
    finally:
        transport.close()
    caller.assert_ok()
    offer = next(m for m in caller.received(200) if "INVITE" in m.header("CSeq")).body
    assert "telephone-event/8000" in offer and "a=sendrecv" in offer
    welcome = read_wav(pbx.node.service.apps.prompts.path(t.id, "welcome")).astype(np.float64)
    assert best_correlation(welcome, received_audio(listener.packets)) > 0.8
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.disposition, cdr.hangup_cause) == ("800", "answered", "caller-bye")
