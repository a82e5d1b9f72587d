"""Music on hold: hold offers recognised, one shared source per tenant file, music fed into a
relay leg while the holder's stream is not relayed, taps that leave plain sockets alone, and
`hivepbx moh upload` converting with sox, per tenant."""

from __future__ import annotations

import asyncio
import io
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from node.cli import main
from node.media.tones import sine
from node.media.wav import read_wav, write_wav
from node.media_engine import MediaEngine
from node.pbx import hold
from node.rtp_engine import PortPool, RtpRelay
from node.rtp_engine import relay as relay_mod
from tests.peers.net import free_port

SDP = """v=0\r\no=- 1 {v} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP {fmts}\r\n{attrs}"""


def sdp(direction: str = "sendrecv", ip: str = "127.0.0.1", fmts: str = "0 8 101") -> bytes:
    attrs = "a=rtpmap:101 telephone-event/8000\r\n" + (f"a={direction}\r\n" if direction else "")
    return SDP.format(v=1, ip=ip, fmts=fmts, attrs=attrs).encode()


def test_hold_offers_and_answer_codec():
    assert hold.is_hold_offer(sdp("sendonly")) is True
    assert hold.is_hold_offer(sdp("inactive")) is True
    assert hold.is_hold_offer(sdp("sendrecv", ip="0.0.0.0")) is True  # RFC 2543 style hold
    assert hold.is_hold_offer(sdp("sendrecv")) is False
    assert hold.is_hold_offer(sdp("recvonly")) is False
    assert hold.is_hold_offer(sdp("")) is False
    assert hold.is_hold_offer(b"not sdp") is None
    assert hold.answer_codec(sdp(fmts="8 0")) == 8
    assert hold.answer_codec(sdp(fmts="101")) == 0
    assert hold.answer_codec(b"junk") == 0


def test_default_tune_is_music_and_tenant_file_wins(tmp_path):
    tune = hold.default_tune()
    assert len(tune) == 8 * 8000 and np.abs(tune).max() > 3000
    spec = np.abs(np.fft.rfft(tune.astype(float)))
    assert (spec > spec.max() / 10).sum() > 20  # many notes, not one beep
    assert hold.music_file(tmp_path, 3) == hold.default_file(tmp_path)
    own = hold.tenant_file(tmp_path, 3)
    own.parent.mkdir(parents=True)
    write_wav(own, sine((300.0,), 800))
    assert hold.music_file(tmp_path, 3) == own and hold.music_file(tmp_path, 4) == hold.default_file(tmp_path)
    with pytest.raises(hold.MohError):
        hold.tenant_file(tmp_path, -1)


@pytest.fixture
async def media():
    base = free_port("127.0.0.1", span=16)
    pool = PortPool(base, base + 15)
    eng = MediaEngine(pool, "127.0.0.1")
    rel = RtpRelay(pool, "127.0.0.1")
    yield eng, rel
    rel.close()
    eng.close()


async def test_moh_source_shared_and_reloaded(media, tmp_path):
    eng, _ = media
    a = hold.moh_source(eng, tmp_path, 1)
    assert hold.moh_source(eng, tmp_path, 1) is a  # one source for every held call of the file
    own = hold.tenant_file(tmp_path, 1)
    own.parent.mkdir(parents=True)
    write_wav(own, sine((300.0,), 1600))
    b = hold.moh_source(eng, tmp_path, 1)
    assert b is not a and b.path == own  # a new upload is heard by the next hold


class _Phone(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.got.append(data)


async def _phone():
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(_Phone, local_addr=("127.0.0.1", 0))
    return p, p.transport.get_extra_info("sockname")[1]


async def test_hold_feeds_music_and_mutes_the_holder_then_resume_restores(media, tmp_path):
    eng, rel = media
    session = await rel.open_session("c1", "t")
    (pa, port_a), (pb, port_b) = await _phone(), await _phone()
    session.a.set_remote("127.0.0.1", port_a)
    session.b.set_remote("127.0.0.1", port_b)
    call = SimpleNamespace(id="c1", media=SimpleNamespace(session=session), tenant=SimpleNamespace(id=1),
                           host=SimpleNamespace(apps=SimpleNamespace(engine=eng), cfg=SimpleNamespace(data_dir=tmp_path)))
    voice = b"\x80\x00\x00\x01" + b"\x00" * 8 + b"\x11" * 160
    pa.transport.sendto(voice, ("127.0.0.1", session.a.local_port))
    await asyncio.sleep(0.05)
    assert pb.got == [voice]  # plain relaying
    assert type(session.a.rtp) is relay_mod._Socket

    hold.on_offer_answered(call, "a", sdp("sendonly"), sdp("recvonly", fmts="8"))
    assert call.hold.held_side == "b" and type(session.a.rtp) is relay_mod._TappedSocket
    pb.got.clear()
    for _ in range(5):
        pa.transport.sendto(voice, ("127.0.0.1", session.a.local_port))
    await asyncio.sleep(0.3)
    assert voice not in pb.got  # the holder is not relayed
    music = [p for p in pb.got if p[1] & 0x7F == 8]
    assert len(music) >= 8  # PCMA (the held phone's codec), one per tick
    ssrcs = {p[8:12] for p in music}
    assert len(ssrcs) == 1 and session.stats().b.packets_out >= len(music)

    hold.on_offer_answered(call, "a", sdp("sendrecv"), sdp("sendrecv"))
    assert call.hold.held_side is None and not eng.tickers
    assert type(session.a.rtp) is relay_mod._Socket  # back on the plain path
    await asyncio.sleep(0.05)  # music sent before the resume, still in flight
    pb.got.clear()
    pa.transport.sendto(voice, ("127.0.0.1", session.a.local_port))
    await asyncio.sleep(0.1)
    assert pb.got == [voice]
    hold.on_call_ended(call)
    pa.transport.close()
    pb.transport.close()


async def test_hold_without_media_engine_is_a_no_op(media):
    _, rel = media
    session = await rel.open_session("c2", "t")
    call = SimpleNamespace(id="c2", media=SimpleNamespace(session=session), tenant=SimpleNamespace(id=1),
                           host=SimpleNamespace(apps=None, cfg=None))
    hold.on_offer_answered(call, "a", sdp("sendonly"), sdp("recvonly"))
    assert getattr(call, "hold", None) is None and type(session.a.rtp) is relay_mod._Socket


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_moh_upload_converts_per_tenant(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert _run("tenant", "add", "acme", "acme.example", *d)[0] == 0
    assert _run("tenant", "add", "beta", "beta.example", *d)[0] == 0
    src = tmp_path / "music-44k-stereo.wav"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(src), "synth", "1.5", "sine", "500"], check=True)
    rc, out, err = _run("moh", "upload", "acme", str(src), *d)
    assert rc == 0, err
    rc, out, _ = _run("moh", "show", "acme", "--json", *d)
    assert '"tenant"' in out and "moh/tenant/" in out
    rc, out, _ = _run("moh", "show", "beta", *d)
    assert "default tune" in out  # beta is untouched
    samples = read_wav(next((tmp_path / "moh" / "tenant").glob("*/moh.wav")))
    assert abs(len(samples) - 12000) < 100  # 1.5 s at 8 kHz mono
    rc, _, err = _run("moh", "upload", "acme", str(tmp_path / "missing.wav"), *d)
    assert rc == 2 and "no such file" in err
    assert _run("moh", "del", "beta", *d)[0] == 2
    assert _run("moh", "del", "acme", *d)[0] == 0
