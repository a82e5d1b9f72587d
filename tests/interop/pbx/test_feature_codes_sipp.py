"""Feature codes dialled from real SIPp phones: DND on/off, call forward set, the same code
meaning different things in two tenants, and the confirmation beep the node answers with."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.media import g711
from node.pbx import feature_codes, forwarding, time_switch
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, pw, stop_all, tenant_with
from tests.peers.net import free_port
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop


async def _done(pbx, tmp_path, code: str, name: str, **kw) -> None:
    """A feature call the node answers, confirms and hangs up itself."""
    res = await dial(pbx, tmp_path, code, "uac_call_remote_bye.xml", name, **kw).run()
    res.assert_ok()
    assert res.received(200) and res.received("BYE")


async def _refused(pbx, tmp_path, code: str, name: str, expected: int, **kw) -> str:
    res = await dial(pbx, tmp_path, code, "uac_call_expect_error.xml", name, variables={"expected": expected}, **kw).run()
    res.assert_ok()
    return res.received(expected)[0].first_line


async def test_dnd_and_forward_codes(pbx, tmp_path):
    a = await tenant_with(pbx, "1002", "1003")
    b = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(b.id, "1001", pw("1001"))
    for code, doc in (("*78", {"action": "dnd_on"}), ("*79", {"action": "dnd_off"}),
                      ("*72", {"action": "forward_set", "type": "unconditional"})):
        await feature_codes.save(pbx.config, a.id, code, doc)
    await feature_codes.save(pbx.config, b.id, "*78", {"action": "daynight_night", "toggle": "main"})
    p3 = await phone(pbx, tmp_path, a, "1003", "uas_answer.xml")
    try:
        await _done(pbx, tmp_path, "*78", "dnd-on")
        assert (await forwarding.load(pbx.config, a.id, "1001"))["dnd"] is True
        line = await _refused(pbx, tmp_path, "1001", "to-dnd", 486, user="1002")
        assert "do not disturb" in line
        await _done(pbx, tmp_path, "*79", "dnd-off")
        await _done(pbx, tmp_path, "*721003", "cf")
        assert (await forwarding.load(pbx.config, a.id, "1001"))["unconditional"] == "1003"
        assert "Address Incomplete" in await _refused(pbx, tmp_path, "*72", "cf-empty", 484)
        (await dial(pbx, tmp_path, "1001", user="1002", duration_ms=200, name="fwd").run()).assert_ok()
        # beta's *78 is a night switch: it must not touch alpha's 1001, and alpha's *72 means nothing in beta
        await _done(pbx, tmp_path, "*78", "beta", domain="beta.example")
        await _refused(pbx, tmp_path, "*721003", "beta-cf", 404, domain="beta.example")
        await asyncio.sleep(0.3)
    finally:
        (r3,) = await stop_all(p3)
    assert len(r3.received("INVITE")) == 1  # the forwarded call
    assert (await forwarding.load(pbx.config, a.id, "1001")).get("dnd") is False
    assert await forwarding.load(pbx.config, b.id, "1001") == {}
    assert await time_switch.get_mode(pbx.config, b.id, "main") == "night"
    assert await time_switch.get_mode(pbx.config, a.id, "main") == "day"
    cdrs = {c.callee: c for c in await pbx.wait_cdrs(a.id, 6)}
    assert (cdrs["*78"].disposition, cdrs["*72"].sip_code) == ("answered", 484)


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets.append(data)


async def test_done_feature_code_is_confirmed_with_a_beep(pbx, tmp_path):
    t = await tenant_with(pbx)
    await feature_codes.save(pbx.config, t.id, "*78", {"action": "dnd_on"})
    loop = asyncio.get_running_loop()
    rtp_port = free_port("127.0.0.1")
    listener = _Rtp()
    transport, _ = await loop.create_datagram_endpoint(lambda: listener, local_addr=("127.0.0.1", rtp_port))
    try:
        res = await Sipp("uac_call_remote_bye_rtp.xml", pbx.target, workdir=tmp_path / "beep", service="*78",
                         user="1001", domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), timeout=20,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": rtp_port}).run()
        res.assert_ok()
    finally:
        transport.close()
    pcmu = sorted((int.from_bytes(p[2:4], "big"), p[12:]) for p in listener.packets if len(p) > 12 and p[1] & 0x7F == 0)
    audio = g711.ulaw_decode(b"".join(pl for _, pl in pcmu)).astype(np.float64)
    assert len(audio) >= 0.4 * 8000, f"only {len(audio) / 8000:.2f} s of audio"
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.argmax(spectrum) * 8000 / len(audio)
    assert abs(peak_hz - 1000) < 30, f"the confirmation is not the 1 kHz beep (peak at {peak_hz:.0f} Hz)"
    bye_after = res.received("BYE")[0].at - res.received(200)[0].at
    assert 0.4 <= bye_after <= 3.0, f"hung up {bye_after:.1f}s after answering"
    assert (await forwarding.load(pbx.config, t.id, "1001"))["dnd"] is True
