"""Voicemail e-mail: the message as a WAV attachment, sent with the standard library's
smtplib (blocking: the voicemail service calls ``send_voicemail`` in a thread). Off unless
the node's config names an SMTP server (``smtp_host``)."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.pbx.voicemail_store import Message


def voicemail_mail(sender: str, to: str, tenant: str, box: str, msg: "Message") -> EmailMessage:
    m = EmailMessage()
    who = f"{msg.caller_name} <{msg.caller}>" if msg.caller_name else msg.caller or "unknown"
    m["Subject"] = f"New voicemail for {box} from {who} ({msg.duration:.0f} s)"
    m["From"] = sender
    m["To"] = to
    m["Date"] = formatdate(msg.time, localtime=False)
    m["Message-ID"] = make_msgid("voicemail")
    m.set_content(
        f"Mailbox {box} (tenant {tenant}) has a new message.\n\n"
        f"From: {who}\nReceived: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(msg.time))}\n"
        f"Length: {msg.duration:.1f} seconds\n\nThe recording is attached (WAV).\n")
    m.add_attachment(Path(msg.path).read_bytes(), maintype="audio", subtype="wav", filename=f"voicemail-{msg.id}.wav")
    return m


class Mailer:
    def __init__(self, host: str, port: int = 25, sender: str = "voicemail@localhost", timeout: float = 30) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout = timeout

    def send_voicemail(self, to: str, tenant: str, box: str, msg: "Message") -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as s:
            s.send_message(voicemail_mail(self.sender, to, tenant, box, msg))
