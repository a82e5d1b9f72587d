"""Voicemail after no answer, and its e-mail: extension 1002 rings (a SIPp phone that never
answers) for the mailbox's 2 s; the mailbox answers, the caller leaves a 700 Hz tone, and a
real SMTP server (aiosmtpd, started here on a free port) receives the mail with the WAV
attached, whose audio is that tone."""

from __future__ import annotations

import asyncio
import email
import io

import numpy as np
import pytest
from aiosmtpd.controller import Controller

from node.pbx import voicemail
from node.runtime.app import Node
from tests.interop.conftest import RunningNode, node_config
from tests.interop.pbx.test_voicemail_sipp import DOMAIN, PW, TONE_HZ, _tenant, call_and_speak, dominant_hz
from tests.peers.net import free_port
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop


class Inbox:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=free_port("127.0.0.1"))
    ctl.start()
    yield ctl, inbox
    ctl.stop()


async def test_no_answer_goes_to_voicemail_and_mails_the_wav(tmp_path, smtp):
    ctl, inbox = smtp
    port = free_port("127.0.0.1")
    cfg = node_config(tmp_path, port, ring_timeout=8, smtp_host="127.0.0.1", smtp_port=ctl.port,
                      smtp_from="pbx@alpha.example")
    async with Node(cfg) as node:
        pbx = RunningNode(node, port)
        t = await _tenant(pbx)
        await voicemail.put(pbx.config, t.id, "1002", {"pin": "4711", "email": "bob@alpha.example", "ring": 2})
        phone = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "phone", user="1002",
                     domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], ooc_scenario="uas_noanswer.xml",
                     duration_ms=30000, timeout=50)
        await phone.start()
        assert await pbx.wait_registered(t.id, "1002")
        short = np.zeros(8000, dtype=np.int16)
        pbx.node.service.voicemail.store.save_greeting(t.id, "1002", "unavailable", short + 1)  # 1 s, near silence
        try:
            res, _ = await call_and_speak(pbx, tmp_path, "1002", 2.0 + 1.0 + voicemail.BEEP_SECONDS + 0.8)
            res.assert_ok()
        finally:
            pres = await phone.stop()
        # the phone rang and was cancelled after the mailbox's ring time
        assert len(pres.received("INVITE")) == 1 and pres.received("CANCEL"), pres.describe()
        assert await until(lambda: len(inbox.mails) == 1, timeout=15)
        assert await pbx.wait_idle()
    rcpts, raw = inbox.mails[0]
    assert rcpts == ["bob@alpha.example"]
    mail = email.message_from_bytes(raw)
    assert mail["From"] == "pbx@alpha.example" and "1001" in mail["Subject"]
    wavs = [p for p in mail.walk() if p.get_content_type() == "audio/wav"]
    assert len(wavs) == 1
    attached = wavs[0].get_payload(decode=True)
    import wave

    with wave.open(io.BytesIO(attached)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    hz = dominant_hz(audio)
    print(f"mailed WAV {len(audio) / 8000:.2f} s, dominant frequency {hz:.0f} Hz")
    assert abs(hz - TONE_HZ) < 15 and len(audio) >= 1.8 * 8000
