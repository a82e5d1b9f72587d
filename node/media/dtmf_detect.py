"""In-band DTMF detection (Goertzel) for peers that send no RFC 4733 events.

Per 20 ms frame we evaluate the eight DTMF frequencies over the last 205 samples (the
classic Goertzel block: ~39 Hz resolution, enough to tell 697 from 770 Hz). The eight
single-bin DFTs at the exact frequencies are one real (16, 205) matrix product (cosine and
sine rows), which is the Goertzel result without a per-sample Python loop. A frame "hears" a digit when:

* the strongest row and column tones carry most of the block's energy (speech and music
  spread theirs; ``purity``),
* each is well above the runner-up of its group (``group_margin``),
* the two are within the allowed twist (ITU-T Q.24: about 8 dB normal, 4 dB reverse),
* the signal is above a floor (``min_level``, about -35 dBm0 per tone).

A digit is reported once, after ``hits`` consecutive frames hear it (≈45 ms of tone at
the default); the detector then waits for ``misses`` frames without it before it can report
the same key again, so a long press is one digit and a gap between equal digits is needed.
"""

from __future__ import annotations

import numpy as np

from node.media.tones import DTMF_COLS, DTMF_KEYS, DTMF_ROWS, FRAME, RATE

BLOCK = 205
_FREQS = np.array(DTMF_ROWS + DTMF_COLS)
_PHASE = 2 * np.pi * np.outer(_FREQS, np.arange(BLOCK)) / RATE
#: cosine rows then sine rows: one real (16, 205) product gives the 8 complex DFT bins
_BASIS = np.vstack([np.cos(_PHASE), np.sin(_PHASE)])
_SCALE = 2.0 / BLOCK**2


def tone_powers(block: np.ndarray) -> np.ndarray:
    """Normalised power of the 8 DTMF frequencies in ``block`` (BLOCK float samples): a pure
    sine of amplitude A gives ~A²/2 at its frequency, the same scale as the block's mean power."""
    x = _BASIS @ block
    x *= x
    return (x[:8] + x[8:]) * _SCALE


class DtmfDetector:
    __slots__ = ("purity", "group_margin", "twist", "reverse_twist", "min_level", "hits", "misses",
                 "_buf", "_cand", "_count", "_reported", "_quiet")

    def __init__(self, *, purity: float = 0.7, group_margin: float = 6.0, twist_db: float = 8.0,
                 reverse_twist_db: float = 4.0, min_level: float = 30.0, hits: int = 2, misses: int = 2) -> None:
        self.purity = purity
        self.group_margin = group_margin  # power ratio (~8 dB)
        self.twist = 10 ** (twist_db / 10)
        self.reverse_twist = 10 ** (reverse_twist_db / 10)
        self.min_level = min_level**2 / 2  # power of a sine of that amplitude (int16 units)
        self.hits = hits
        self.misses = misses
        self._buf = np.zeros(BLOCK, dtype=np.float64)
        self._cand: str | None = None
        self._count = 0
        self._reported: str | None = None
        self._quiet = 0

    def classify(self, block: np.ndarray) -> str | None:
        """The key a block of BLOCK samples holds, or None."""
        mean_power = float(np.dot(block, block)) / BLOCK
        if mean_power < 2 * self.min_level:
            return None
        # eight numbers: plain Python from here is cheaper than more numpy calls
        p = tone_powers(block).tolist()
        rows, cols = p[:4], p[4:]
        pr, pc = max(rows), max(cols)
        if pr < self.min_level or pc < self.min_level or pr + pc < self.purity * mean_power:
            return None
        r, c = rows.index(pr), cols.index(pc)
        rows[r] = cols[c] = 0.0
        if max(rows) * self.group_margin > pr or max(cols) * self.group_margin > pc:
            return None
        # normal twist: column (high) weaker than row; reverse: row weaker than column
        if pr > pc * self.twist or pc > pr * self.reverse_twist:
            return None
        return DTMF_KEYS[r][c]

    def feed(self, frame: np.ndarray) -> str | None:
        """Give the next frame (int16, 160 samples); returns a digit once when one is recognised."""
        n = len(frame)
        buf = self._buf
        if n >= BLOCK:
            buf[:] = frame[-BLOCK:]
        else:
            buf[:-n] = buf[n:]
            buf[-n:] = frame
        key = self.classify(buf)
        if key is None or key != self._cand:
            self._cand = key
            self._count = 1 if key is not None else 0
        else:
            self._count += 1
        if key == self._reported and key is not None:
            self._quiet = 0
            return None
        if key is None or key != self._reported:
            self._quiet += 1
            if self._quiet >= self.misses:
                self._reported = None
        if key is not None and self._reported is None and self._count >= self.hits:
            self._reported = key
            self._quiet = 0
            return key
        return None


__all__ = ["DtmfDetector", "tone_powers", "BLOCK", "FRAME"]
