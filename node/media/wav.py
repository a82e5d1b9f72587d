"""WAV files as the media engine keeps them: 8 kHz mono 16-bit PCM (what G.711 carries).

Anything else is refused with a message naming the problem; the upload path converts
other formats with sox before storing (node.media_engine.prompts).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from node.media.errors import MediaError

RATE = 8000


class WavFormatError(MediaError):
    """A file that is not 8 kHz mono 16-bit PCM WAV."""


def read_wav(path: str | Path) -> np.ndarray:
    """Samples of an 8 kHz mono 16-bit WAV as int16."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            if (rate, channels, width) != (RATE, 1, 2):
                raise WavFormatError(
                    f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; need 8000 Hz mono 16-bit "
                    "(convert it: sox in.wav -r 8000 -c 1 -b 16 out.wav)"
                )
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise WavFormatError(f"{path}: not a PCM WAV file ({e})") from None
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray) -> None:
    """Write int16 samples as an 8 kHz mono 16-bit WAV (atomically: temp file then rename,
    so a reader never sees half a recording)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    tmp.replace(path)
