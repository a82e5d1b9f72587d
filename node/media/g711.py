"""G.711 µ-law (PCMU, PT 0) and A-law (PCMA, PT 8) with numpy lookup tables.

Both directions are one table index per sample: decoding indexes a 256-entry int16 table
with the payload bytes, encoding indexes a 65536-entry table with the samples viewed as
uint16. The tables are built once at import from the ITU-T G.711 segment rules (the same
arithmetic as the classic Sun reference code), vectorised, so no per-sample Python runs
on any path. ``audioop`` is gone from Python 3.13, hence our own.
"""

from __future__ import annotations

import numpy as np

PCMU = 0
PCMA = 8
#: RTP payload type → encoding name (RFC 3551 §6)
NAMES = {PCMU: "PCMU", PCMA: "PCMA"}
#: encoding name → static payload type
PAYLOAD_TYPES = {"PCMU": PCMU, "PCMA": PCMA}

_BIAS = 0x84
_CLIP = 32635  # 8159 in the 14-bit domain


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    x = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -x, x).astype(np.int16)


_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _ulaw_encode_table() -> np.ndarray:
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x) >> 2  # 14-bit domain, floor like the reference
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), _CLIP >> 2) + (_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _alaw_encode_table() -> np.ndarray:
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x) >> 3  # 13-bit magnitude domain
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


ULAW_DECODE = _ulaw_decode_table()
ULAW_ENCODE = _ulaw_encode_table()
ALAW_DECODE = _alaw_decode_table()
ALAW_ENCODE = _alaw_encode_table()
_DECODE = {PCMU: ULAW_DECODE, PCMA: ALAW_DECODE}
_ENCODE = {PCMU: ULAW_ENCODE, PCMA: ALAW_ENCODE}
#: one encoded byte of silence per codec (what an idle stream sends)
SILENCE_BYTE = {PCMU: int(ULAW_ENCODE[0]), PCMA: int(ALAW_ENCODE[0])}

Buffer = bytes | bytearray | memoryview


def decode(payload_type: int, payload: Buffer) -> np.ndarray:
    """G.711 bytes → int16 samples (a new array)."""
    return _DECODE[payload_type][np.frombuffer(payload, dtype=np.uint8)]


def encode(payload_type: int, samples: np.ndarray) -> bytes:
    """int16 samples → G.711 bytes."""
    return _ENCODE[payload_type][np.asarray(samples, dtype=np.int16).view(np.uint16)].tobytes()


def encode_array(payload_type: int, samples: np.ndarray) -> np.ndarray:
    """Like ``encode`` but keeps the uint8 array (any shape): a mixer encodes all parties at once."""
    return _ENCODE[payload_type][np.asarray(samples, dtype=np.int16).view(np.uint16)]


def ulaw_decode(payload: Buffer) -> np.ndarray:
    return decode(PCMU, payload)


def ulaw_encode(samples: np.ndarray) -> bytes:
    return encode(PCMU, samples)


def alaw_decode(payload: Buffer) -> np.ndarray:
    return decode(PCMA, payload)


def alaw_encode(samples: np.ndarray) -> bytes:
    return encode(PCMA, samples)


def transcode(from_pt: int, to_pt: int, payload: Buffer) -> bytes:
    """PCMU ↔ PCMA through linear PCM (a bridge between legs that settled on different laws)."""
    if from_pt == to_pt:
        return bytes(payload)
    return encode(to_pt, decode(from_pt, payload))
