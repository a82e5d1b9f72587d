"""A SIPp caller that plays a pcap the test wrote (RFC 4733 keys, in-band tones, speech)
into a call (tests/interop/sipp/uac_ivr_dtmf.xml) while the test's own UDP socket, the
address its SDP offers, records what the node sends back: IVR, voicemail and feature-code
tests all place their calls through ``pcap_call``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from node.media import g711
from tests.peers.net import free_port
from tests.peers.sipp import Sipp


class RtpListener(asyncio.DatagramProtocol):
    """Every datagram that arrives, in arrival order."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets.append(data)


def received_audio(packets: list[bytes]) -> np.ndarray:
    """PCMU payloads in sequence order, decoded."""
    audio = sorted((int.from_bytes(p[2:4], "big"), p[12:]) for p in packets if len(p) > 12 and p[1] & 0x7F == 0)
    return g711.ulaw_decode(b"".join(pl for _, pl in audio)).astype(np.float64)


async def pcap_call(pbx, pcap: Path, *, dtmf_after_ms: int, hold_ms: int, formats: str = "0 101", timeout: float = 30,
                    **sipp):
    """Call through ``pbx`` with uac_ivr_dtmf.xml: ``pcap`` starts ``dtmf_after_ms`` after the
    answer and the caller hangs up ``hold_ms`` after that; ``formats`` are the payload types
    its SDP offers. ``sipp`` are the Sipp arguments (workdir, service, user, auth, local_ip).
    Returns (SIPp result, RtpListener with what the node sent)."""
    loop = asyncio.get_running_loop()
    listener = RtpListener()
    rtp_port = free_port("127.0.0.1")
    transport, _ = await loop.create_datagram_endpoint(lambda: listener, local_addr=("127.0.0.1", rtp_port))
    try:
        res = await Sipp(
            "uac_ivr_dtmf.xml", pbx.target, timeout=timeout,
            keys={"rtp_ip": "127.0.0.1", "rtp_port": rtp_port, "dtmf_after_ms": dtmf_after_ms, "pcap": pcap,
                  "formats": formats, "hold_ms": hold_ms},
            **sipp,
        ).run()
    finally:
        transport.close()
    return res, listener
