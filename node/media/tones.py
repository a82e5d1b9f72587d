"""Call-progress and DTMF tones as precomputed 20 ms frames.

A tone is a cadence (on/off pattern) of summed sines. It is rendered once into one whole
period of int16 samples shaped (frames, 160), so playing it costs an index per tick; the
engine encodes that period once per codec and loops over the bytes. Cadences must be
multiples of 20 ms (every tone plan in use is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
FRAME_MS = 20

#: DTMF frequency pairs (ITU-T Q.23): low (row) and high (column) group
DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")
DTMF_FREQS: dict[str, tuple[float, float]] = {
    key: (DTMF_ROWS[r], DTMF_COLS[c]) for r, row in enumerate(DTMF_KEYS) for c, key in enumerate(row)
}


@dataclass(frozen=True, slots=True)
class ToneSpec:
    """Frequencies (Hz) played together, and a cadence of (on_ms, off_ms) pairs; an empty
    cadence is a steady tone. ``level`` is the peak of each sine as a fraction of full scale."""

    freqs: tuple[float, ...]
    cadence: tuple[tuple[int, int], ...] = ()
    level: float = 0.25


#: tone plans (ITU-T E.180 / the North American values used by most softphones)
TONES: dict[str, ToneSpec] = {
    "ringback": ToneSpec((440.0, 480.0), ((2000, 4000),)),
    "ringback_eu": ToneSpec((425.0,), ((1000, 4000),)),
    "busy": ToneSpec((480.0, 620.0), ((500, 500),)),
    "congestion": ToneSpec((480.0, 620.0), ((250, 250),)),
    "dialtone": ToneSpec((350.0, 440.0)),
    "beep": ToneSpec((1000.0,), ((200, 0),), level=0.35),
}


def sine(freqs: tuple[float, ...] | list[float], samples: int, level: float = 0.25, start: int = 0) -> np.ndarray:
    """Sum of sines as int16; ``start`` continues the phase of an earlier block."""
    t = (np.arange(samples) + start) / RATE
    out = np.zeros(samples)
    for f in freqs:
        out += level * np.sin(2 * np.pi * f * t)
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


def _frames_of(ms: int, what: str) -> int:
    if ms < 0 or ms % FRAME_MS:
        raise ValueError(f"{what} of {ms} ms: tone cadences are multiples of {FRAME_MS} ms")
    return ms // FRAME_MS


def render(spec: ToneSpec) -> np.ndarray:
    """One period of the tone, int16 shaped (frames, 160). Steady tones render 1 s, a whole
    number of cycles of every 1 Hz-multiple frequency, so looping it has no click."""
    if not spec.cadence:
        return sine(spec.freqs, RATE, spec.level).reshape(-1, FRAME)
    parts = []
    pos = 0
    for on_ms, off_ms in spec.cadence:
        on = _frames_of(on_ms, "tone on-time") * FRAME
        off = _frames_of(off_ms, "tone off-time") * FRAME
        parts.append(sine(spec.freqs, on, spec.level, pos))
        parts.append(np.zeros(off, dtype=np.int16))
        pos += on + off
    return np.concatenate(parts).reshape(-1, FRAME)


def dtmf_tone(digit: str, ms: int = 100, gap_ms: int = 0, level: float = 0.2) -> np.ndarray:
    """One DTMF digit (two sines at ``level`` each, about -17 dBm0) then ``gap_ms`` silence,
    int16 shaped (frames, 160): for peers that want in-band digits."""
    try:
        pair = DTMF_FREQS[digit.upper()]
    except KeyError:
        raise ValueError(f"not a DTMF digit: {digit!r}") from None
    on = _frames_of(ms, "DTMF duration") * FRAME
    off = _frames_of(gap_ms, "DTMF gap") * FRAME
    return np.concatenate([sine(pair, on, level), np.zeros(off, dtype=np.int16)]).reshape(-1, FRAME)
