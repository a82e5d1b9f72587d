"""pcap files of RTP for SIPp's ``play_pcap_audio``: RFC 4733 key presses made by the test.

SIPp replays the UDP payloads with the pcap's timing from its media port to the address in
the SDP answer it received; addresses and ports in the file do not matter. Written as
classic libpcap (Ethernet, IPv4, UDP with checksum 0 = none, RFC 768).
"""

from __future__ import annotations

import struct
from pathlib import Path

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def rfc4733_packets(digits: str, *, pt: int = 101, gap_ms: int = 300, duration_ms: int = 120,
                    ssrc: int = 0x1234ABCD, volume: int = 10) -> list[tuple[float, bytes]]:
    """(seconds from start, RTP datagram) for each packet of each digit: one packet every
    20 ms with growing duration, the first with the marker bit, three end packets."""
    codes = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
    out: list[tuple[float, bytes]] = []
    t, seq, ts = 0.0, 1000, 160_000
    for digit in digits:
        steps = duration_ms // 20
        for i in range(1, steps + 1 + 2):
            end = i >= steps
            dur = min(i, steps) * 160
            flags = (0x80 if end else 0) | volume
            header = struct.pack("!BBHII", 0x80, pt | (0x80 if i == 1 else 0), seq, ts, ssrc)
            out.append((t, header + struct.pack("!BBH", codes[digit], flags, dur)))
            seq += 1
            t += 0.02
        ts += (duration_ms + gap_ms) * 8
        t += gap_ms / 1000
    return out


def write_pcap(path: Path, packets: list[tuple[float, bytes]], *, src_port: int = 40000, dst_port: int = 40002) -> Path:
    with open(path, "wb") as f:
        f.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # DLT_EN10MB
        for t, payload in packets:
            udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                             bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            sec = int(t)
            f.write(_RECORD.pack(sec, int(round((t - sec) * 1e6)), len(frame), len(frame)))
            f.write(frame)
    return path


def _checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pcmu_packets(samples, *, ssrc: int = 0x5EED0001, pt: int = 0) -> list[tuple[float, bytes]]:
    """int16 audio (8 kHz) as PCMU RTP packets of 20 ms: in-band DTMF for a peer that
    negotiated no telephone-event."""
    import numpy as np

    from node.media import g711

    x = np.asarray(samples, dtype=np.int16)
    x = np.concatenate([x, np.zeros((-len(x)) % 160, dtype=np.int16)])
    payload = g711.ulaw_encode(x)
    out = []
    for i in range(len(x) // 160):
        header = struct.pack("!BBHII", 0x80, pt | (0x80 if i == 0 else 0), 2000 + i, 320_000 + 160 * i, ssrc)
        out.append((0.02 * i, header + payload[160 * i:160 * (i + 1)]))
    return out
