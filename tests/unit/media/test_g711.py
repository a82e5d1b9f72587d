"""G.711 tables against the standard's known points and their own inverse."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from node.media import g711


def test_known_values() -> None:
    # silence, full scale and the segment ends of ITU-T G.711 (Sun reference values)
    assert g711.ulaw_encode(np.array([0, -1, 32767, -32768, 8, -9], dtype=np.int16)) == bytes([0xFF, 0x7E, 0x80, 0x00, 0xFE, 0x7D])
    assert g711.alaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)) == bytes([0xD5, 0x55, 0xAA, 0x2A])
    assert g711.ulaw_decode(bytes([0xFF, 0x80, 0x00])).tolist() == [0, 32124, -32124]
    assert g711.alaw_decode(bytes([0xD5, 0xAA, 0x2A])).tolist() == [8, 32256, -32256]
    assert g711.SILENCE_BYTE == {0: 0xFF, 8: 0xD5}


@pytest.mark.parametrize("pt", [g711.PCMU, g711.PCMA])
def test_every_code_survives_decode_encode(pt: int) -> None:
    codes = bytes(range(256))
    again = g711.encode(pt, g711.decode(pt, codes))
    diff = [c for c, d in zip(codes, again) if c != d]
    # µ-law has two zeros (0x7F is -0, which encodes back as +0 = 0xFF)
    assert diff == ([0x7F] if pt == g711.PCMU else [])


@pytest.mark.parametrize("pt", [g711.PCMU, g711.PCMA])
def test_quantisation_error_is_logarithmic_and_decode_is_monotonic(pt: int) -> None:
    x = np.arange(-32768, 32768, 7, dtype=np.int16)
    y = g711.decode(pt, g711.encode(pt, x)).astype(np.int32)
    err = np.abs(y - x.astype(np.int32))
    # segment step is at most 1/16 of the magnitude (plus the smallest step near zero)
    assert np.all(err <= np.abs(x.astype(np.int32)) / 16 + 40)
    assert np.all(np.diff(y) >= 0)


def test_matches_audioop_bit_exact_where_it_still_exists() -> None:
    # audioop (removed in Python 3.13) was CPython's reference implementation; where it is
    # gone, the known-value test above is the reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert g711.ulaw_encode(x) == audioop.lin2ulaw(x.tobytes(), 2)
    assert g711.alaw_encode(x) == audioop.lin2alaw(x.tobytes(), 2)
    codes = bytes(range(256))
    assert g711.ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_transcode_between_laws() -> None:
    x = (np.sin(np.arange(160) / 5) * 10000).astype(np.int16)
    u = g711.ulaw_encode(x)
    a = g711.transcode(g711.PCMU, g711.PCMA, u)
    assert len(a) == 160
    y = g711.alaw_decode(a).astype(int)
    assert np.max(np.abs(y - x)) < 700
    assert g711.transcode(g711.PCMU, g711.PCMU, u) == u
