"""The asyncio media engine on loopback: endpoints play, record, hear digits both ways,
bridge, mix and share music on hold, all on one clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.media.tones import FRAME, dtmf_tone, sine
from node.media.wav import read_wav, write_wav
from node.media_engine import Conference, MediaEngine, MusicOnHold
from node.rtp_engine.errors import PortsExhausted
from node.rtp_engine.port_pool import PortPool
from tests.peers.net import free_port


@pytest.fixture
async def engine():
    base = free_port("127.0.0.1", span=24)
    eng = MediaEngine(PortPool(base, base + 23), "127.0.0.1")
    yield eng
    eng.close()


async def _pair(engine):
    a = await engine.open_endpoint("c1", "t")
    b = await engine.open_endpoint("c1", "t")
    a.accept_answer(b.answer(a.offer("127.0.0.1"), "127.0.0.1"))
    return a, b


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Peak normalised cross-correlation (y is x delayed and G.711-coded)."""
    x = x.astype(float) - x.mean()
    y = y.astype(float) - y.mean()
    c = np.correlate(y, x, mode="full")
    return float(c.max() / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


async def test_play_reaches_peer_recording_intact(engine, tmp_path):
    a, b = await _pair(engine)
    clip = sine((440.0, 700.0), 8000, 0.2)
    clip[4000:] = 0
    clip[6000:7000] = sine((1000.0,), 1000, 0.3)
    write_wav(tmp_path / "p.wav", clip)
    b.record(tmp_path / "rec.wav")
    how = await asyncio.wait_for(a.play([tmp_path / "p.wav", tmp_path / "missing.wav"]), 3)
    assert how == "finished"
    await asyncio.sleep(0.1)
    await b.stop_recording()
    rec = read_wav(tmp_path / "rec.wav")
    assert len(rec) >= len(clip)  # plus silence frames sent around it
    assert _corr(clip, rec) > 0.95
    assert a.packets_out >= 50 and b.packets_in >= 50 and b.dropped == 0


async def test_rfc4733_digits_one_each_and_interrupt(engine, tmp_path):
    a, b = await _pair(engine)
    assert a.te_pt == 101 and b.te_pt == 101
    write_wav(tmp_path / "long.wav", sine((440.0,), 8000 * 5, 0.2))
    pb = b.play([tmp_path / "long.wav"], interruptible=True)
    for d in "1#":
        a.send_dtmf(d)
        await asyncio.sleep(0.25)
    assert await asyncio.wait_for(pb, 1) == "interrupted"
    assert [await b.get_digit(1), await b.get_digit(1), await b.get_digit(0.3)] == ["1", "#", None]
    assert b.digits_inband == 0


async def test_inband_digits_when_no_events(engine, tmp_path):
    a = await engine.open_endpoint()
    b = await engine.open_endpoint()
    offer = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             f"m=audio {a.local_port} RTP/AVP 8\r\n").encode()
    a.accept_answer(b.answer(offer, "127.0.0.1"))
    assert a.pt == 8 and b.te_pt is None
    write_wav(tmp_path / "d.wav", np.concatenate([dtmf_tone(k, 80, 80) for k in "42*"]).ravel())
    await a.play([tmp_path / "d.wav"])
    got = [await b.get_digit(1) for _ in range(3)]
    assert got == ["4", "2", "*"] and b.digits_inband == 3


async def test_bridge_forwards_and_transcodes(engine, tmp_path):
    a, b = await _pair(engine)  # a ↔ b over PCMU
    c = await engine.open_endpoint()
    d = await engine.open_endpoint()
    offer = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             f"m=audio {c.local_port} RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n").encode()
    c.accept_answer(d.answer(offer, "127.0.0.1"))  # c ↔ d over PCMA
    b.bridge(d)  # what a sends arrives at b, goes out of d to c
    write_wav(tmp_path / "t.wav", sine((600.0,), 4000, 0.3))
    c.record(tmp_path / "c.wav")
    await a.play([tmp_path / "t.wav"])
    a.send_dtmf("9")
    assert await c.get_digit(1) == "9"
    await c.stop_recording()
    rec = read_wav(tmp_path / "c.wav").astype(float)
    spectrum = np.abs(np.fft.rfft(rec))
    assert abs(np.argmax(spectrum) * 8000 / len(rec) - 600) < 10
    assert d.pt == 8 and b.pt == 0


async def test_conference_mix_minus(engine, tmp_path):
    parties = []
    for hz in (500.0, 900.0, 1300.0):
        phone = await engine.open_endpoint()
        member = await engine.open_endpoint()
        phone.accept_answer(member.answer(phone.offer("127.0.0.1"), "127.0.0.1"))
        parties.append((hz, phone, member))
    conf = Conference(engine)
    for _, phone, member in parties:
        conf.add(member)
    for hz, phone, _ in parties:
        write_wav(tmp_path / f"{hz}.wav", sine((hz,), 8000, 0.2))
        phone.record(tmp_path / f"rec{hz}.wav")
        phone.play([tmp_path / f"{hz}.wav"])
    await asyncio.sleep(1.2)
    for hz, phone, _ in parties:
        await phone.stop_recording()
        rec = read_wav(tmp_path / f"rec{hz}.wav").astype(float)
        power = np.abs(np.fft.rfft(rec)) ** 2
        freqs = np.fft.rfftfreq(len(rec), 1 / 8000)
        share = {f: power[np.abs(freqs - f) < 20].sum() / power.sum() for f, _, _ in parties}
        others = [f for f, _, _ in parties if f != hz]
        assert share[hz] < 0.01, (hz, share)  # no echo of oneself
        assert all(share[f] > 0.2 for f in others), (hz, share)


async def test_moh_shared_and_ports_returned(engine, tmp_path):
    write_wav(tmp_path / "m.wav", sine((330.0,), 16000, 0.2))
    moh = MusicOnHold(engine, tmp_path / "m.wav")
    eps = [await engine.open_endpoint() for _ in range(4)]
    phones = [await engine.open_endpoint() for _ in range(4)]
    for ep, ph in zip(eps, phones):
        ph.accept_answer(ep.answer(ph.offer("127.0.0.1"), "127.0.0.1"))
        ep.listen(moh)
    assert moh.listeners == 4 and moh in engine.tickers
    await asyncio.sleep(0.3)
    assert all(ph.packets_in > 5 for ph in phones)
    for ep in eps:
        ep.close()
    assert moh.listeners == 0 and moh not in engine.tickers
    for ph in phones:
        ph.close()
    assert engine.pool.in_use == 0
    # exhaustion is a clear 503, not a crash
    held = [await engine.open_endpoint() for _ in range(engine.pool.capacity)]
    with pytest.raises(PortsExhausted):
        await engine.open_endpoint()
    for ep in held:
        ep.close()


async def test_metrics_are_exported(engine):
    from prometheus_client import generate_latest

    a, b = await _pair(engine)
    a.send_dtmf("3")
    assert await b.get_digit(1) == "3"
    text = generate_latest().decode()
    active = [l for l in text.splitlines() if l.startswith("hivepbx_media_endpoints_active ")]
    assert active and float(active[0].split()[1]) >= 2
    digits = [l for l in text.splitlines() if l.startswith("hivepbx_media_digits_total ")]
    assert digits and float(digits[0].split()[1]) >= 1


async def test_latching_strangers_and_garbage(engine, monkeypatch):
    import socket
    import struct

    ep = await engine.open_endpoint()
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    stranger.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    try:
        # the SDP says port 9 (NAT: not where packets come from), with telephone-event 101
        ep.answer(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                  b"m=audio 9 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n", "127.0.0.1")
        pkt = struct.pack("!BBHII", 0x80, 0, 1, 160, 42) + bytes([0xFF]) * 160
        phone.sendto(pkt, ("127.0.0.1", ep.local_port))
        await asyncio.sleep(0.1)
        assert ep.latched == phone.getsockname() and ep.dest == phone.getsockname()
        assert len(phone.recv(2048)) == 172  # symmetric RTP: our stream now reaches the phone
        stranger.sendto(pkt, ("127.0.0.1", ep.local_port))
        for junk in (b"", b"\x00" * 5, b"\x80", bytes([0x80, 101]) + bytes(10), bytes([0x80, 101]) + bytes(11)):
            phone.sendto(junk, ("127.0.0.1", ep.local_port))
        phone.sendto(struct.pack("!BBHII", 0x80, 101, 2, 320, 42) + b"\x01", ("127.0.0.1", ep.local_port))
        await asyncio.sleep(0.1)
        assert ep.latched == phone.getsockname()  # the stranger did not take over
        assert ep.dropped >= 6 and ep.digits_received == 0  # stranger, 4 runts, 1-byte event
        # the phone falls silent (NAT rebinding): after a second the new source takes over
        monkeypatch.setattr(engine, "ticks", engine.ticks + 60)
        stranger.sendto(pkt, ("127.0.0.1", ep.local_port))
        await asyncio.sleep(0.1)
        assert ep.latched == stranger.getsockname()
    finally:
        phone.close()
        stranger.close()


async def test_hold_offer_stops_our_sending_and_resume_restarts_it(engine):
    ep = await engine.open_endpoint()
    sdp = ("v=0\r\no=- 1 {v} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 0\r\na={d}\r\n")
    assert b"a=sendrecv" in ep.answer(sdp.format(v=1, d="sendrecv").encode(), "127.0.0.1")
    assert ep.dest == ("127.0.0.1", 40000)
    assert b"a=recvonly" in ep.answer(sdp.format(v=2, d="sendonly").encode(), "127.0.0.1")
    assert ep.dest is None  # on hold: the IVR sends nothing
    assert b"a=sendrecv" in ep.answer(sdp.format(v=3, d="sendrecv").encode(), "127.0.0.1")
    assert ep.dest == ("127.0.0.1", 40000)
    other = await engine.open_endpoint()
    other.offer("127.0.0.1")
    other.accept_answer(sdp.format(v=1, d="sendonly").encode())  # the callee only sends
    assert other.dest is None
