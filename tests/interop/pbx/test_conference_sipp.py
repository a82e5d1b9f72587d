"""Conference rooms against real SIPp callers (signalling) whose RTP is the test's own socket:
each caller enters a PIN as RFC 4733 events, then sends its own tone; what each one hears is
checked by FFT (everybody else's talkers, never itself, never a listener), and a caller
beyond the room's maximum hears the "conf-full" prompt and is hung up by the node."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from node.config_rules import ConfigError
from node.media.wav import read_wav
from node.pbx import conference
from tests.peers.rtp_peer import RtpPeer, best_correlation, node_media_of, rms, tone_level
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW = {f"100{i}": f"pw-100{i}-secret" for i in range(1, 6)}


async def _tenant(pbx):
    t = await pbx.tenant("alpha", DOMAIN)
    for n, pw in PW.items():
        await pbx.config.create_extension(t.id, n, pw)
    return t


def _caller(pbx, tmp_path, user: str, peer: RtpPeer, room: str, hold_ms: int) -> Sipp:
    return Sipp("uac_media_call.xml", pbx.target, workdir=tmp_path / user, service=room, user=user, domain=DOMAIN,
                auth_user=user, auth_password=PW[user], timeout=30,
                keys={"rtp_ip": "127.0.0.1", "rtp_port": peer.port, "formats": "0 101", "hold_ms": hold_ms})


async def test_three_talkers_hear_each_other_listener_muted_fifth_refused(pbx, tmp_path):
    t = await _tenant(pbx)
    await conference.put(pbx.config, t.id, "700", {"talker_pin": "1111", "listener_pin": "2222", "max_members": 4})
    tones = {"1001": 400.0, "1002": 1000.0, "1003": 1700.0, "1004": 2300.0}
    talkers = ("1001", "1002", "1003")
    pins = {"1001": "1111#", "1002": "1111#", "1003": "1111#", "1004": "2222#"}  # 1004 is a listener
    peers = {u: await RtpPeer.open() for u in [*tones, "1005"]}
    room_key = (t.id, "700")
    rooms = conference.rooms(pbx.node.media)

    async def member(user: str, seconds: float) -> None:
        dest = await node_media_of(pbx, peers[user])
        await peers[user].send_digits(dest, pins[user])
        await peers[user].send_tone(dest, tones[user], seconds)

    try:
        sipps = [_caller(pbx, tmp_path, u, peers[u], "700", 9000) for u in tones]
        runs = [asyncio.create_task(s.run()) for s in sipps]
        talk = [asyncio.create_task(member(u, 7.0)) for u in tones]
        assert await until(lambda: room_key in rooms and rooms[room_key].count() == 4), "the four did not all join"
        roles = sorted(m.role for m in rooms[room_key].members)
        assert roles == ["listener", "talker", "talker", "talker"]
        await asyncio.sleep(0.6)  # entry tones over, every stream flowing
        t0 = time.monotonic()
        await asyncio.sleep(1.6)
        t1 = time.monotonic()

        # the fifth caller (a talker PIN) is beyond max_members: "conf-full", then the node hangs up
        d = peers["1005"]
        fourth = asyncio.create_task(_caller(pbx, tmp_path, "1005", d, "700", 15000).run())
        dest = await node_media_of(pbx, d)
        await asyncio.sleep(0.3)
        await d.send_digits(dest, "1111#")
        res4 = await asyncio.wait_for(fourth, 30)
        res4.assert_ok()
        assert res4.received("BYE"), "the node did not hang up the refused caller"
        assert rooms[room_key].count() == 4
        results = await asyncio.gather(*runs)
        await asyncio.gather(*talk)
    finally:
        for p in peers.values():
            p.close()
    for r in results:
        r.assert_ok()

    heard = {u: peers[u].audio(t0, t1) for u in tones}
    levels = {u: {v: round(tone_level(heard[u], f), 3) for v, f in tones.items()} for u in tones}
    print("tone shares heard (who hears: {whose tone: share}):", levels)
    for u in tones:
        assert len(heard[u]) >= 1.2 * 8000, f"{u} got {len(heard[u]) / 8000:.2f} s of audio"
    for u in talkers:  # each talker hears the other two, never itself, never the muted listener
        assert all(levels[u][v] > 0.2 for v in talkers if v != u), (u, levels[u])
        assert levels[u][u] < 0.01 and levels[u]["1004"] < 0.01, (u, levels[u])
    # the listener hears the three talkers (and not itself)
    assert all(levels["1004"][v] > 0.15 for v in talkers) and levels["1004"]["1004"] < 0.01, levels["1004"]

    full = read_wav(pbx.node.service.apps.prompts.path(t.id, "conf-full")).astype(np.float64)
    got = d.audio()
    corr = best_correlation(full, got)
    print(f"fifth caller: {len(got) / 8000:.1f} s received, correlation with conf-full {corr:.3f}")
    assert corr > 0.8

    cdrs = await pbx.wait_cdrs(t.id, 5)
    assert sorted((c.caller, c.callee, c.disposition) for c in cdrs) == [(u, "700", "answered") for u in PW]
    assert await pbx.wait_idle()
    assert not pbx.node.media.endpoints and room_key not in rooms


async def test_did_straight_into_a_room_without_pin_and_entry_tone(pbx, tmp_path):
    """A carrier call to a DID of type 'conference' lands in a PIN-less room at once; the first
    member hears the entry tone when the second arrives."""
    t = await _tenant(pbx)
    await conference.put(pbx.config, t.id, "701", {"max_members": 5})
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3")
    await pbx.config.create_did(t.id, "+441135550199", "conference", "701")
    a, b = await RtpPeer.open(), await RtpPeer.open()
    rooms = conference.rooms(pbx.node.media)
    try:
        first = asyncio.create_task(_caller(pbx, tmp_path, "1001", a, "701", 4000).run())
        assert await until(lambda: (t.id, "701") in rooms and rooms[(t.id, "701")].count() == 1)
        await asyncio.sleep(0.5)
        second = asyncio.create_task(Sipp(
            "uac_media_call.xml", pbx.target, workdir=tmp_path / "carrier", service="441135550199",
            user="447700900123", domain="carrier.example", local_ip="127.0.0.3", timeout=30,
            keys={"rtp_ip": "127.0.0.1", "rtp_port": b.port, "formats": "0", "hold_ms": 2000}).run())
        assert await until(lambda: rooms[(t.id, "701")].count() == 2)
        joined = time.monotonic() - 0.1
        dest = await node_media_of(pbx, b)
        await b.send_tone(dest, 1000.0, 1.0)
        for r in await asyncio.gather(first, second):
            r.assert_ok()
    finally:
        a.close()
        b.close()
    heard = a.audio(joined)
    assert rms(a.audio(0, joined)) < 50  # alone in the room: silence, no prompt
    assert tone_level(heard[:4000], 660.0) + tone_level(heard[:4000], 880.0) > 0.3, "no entry tone"
    assert tone_level(heard[4000:10400], 1000.0) > 0.3  # then the carrier caller's voice
    cdrs = await pbx.wait_cdrs(t.id, 2)
    assert {(c.direction, c.callee) for c in cdrs} == {("internal", "701"), ("inbound", "701")}
    assert await pbx.wait_idle()


async def test_room_config_validated_and_tenant_scoped(pbx, tmp_path):
    t = await _tenant(pbx)
    other = await pbx.tenant("beta", "beta.example")
    with pytest.raises(ConfigError, match="must differ"):
        await conference.put(pbx.config, t.id, "700", {"talker_pin": "1111", "listener_pin": "1111"})
    with pytest.raises(ConfigError, match="is an extension"):
        await conference.put(pbx.config, t.id, "1002", {})
    await conference.put(pbx.config, other.id, "700", {})
    res = await Sipp("uac_call_expect_error.xml", pbx.target, workdir=tmp_path / "c", service="700", user="1001",
                     domain=DOMAIN, auth_user="1001", auth_password=PW["1001"], variables={"expected": 404}).run()
    res.assert_ok()
    assert not pbx.node.media.endpoints
