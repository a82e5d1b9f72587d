"""N-party mixing: each party hears the sum of everyone else (mix-minus), clipped to int16.

All parties are mixed at once on a (parties, samples) array: one int32 sum over the party
axis, then ``sum - own`` per row, so cost grows with parties × samples in numpy, not Python.
"""

from __future__ import annotations

import numpy as np


def mix_minus(frames: np.ndarray) -> np.ndarray:
    """``frames`` int16 (parties, samples) → what each party hears, int16 same shape."""
    wide = frames.astype(np.int32)
    total = wide.sum(axis=0, dtype=np.int32)
    out = total[np.newaxis, :] - wide
    np.clip(out, -32768, 32767, out=out)
    return out.astype(np.int16)


def mix(frames: np.ndarray) -> np.ndarray:
    """Everyone summed (what a recorder or a listen-only party hears), clipped."""
    total = frames.astype(np.int32).sum(axis=0)
    return np.clip(total, -32768, 32767).astype(np.int16)
