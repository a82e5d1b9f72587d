"""Test tones and what a recording holds: "the 440 Hz tone A sent arrives at B".

Mono 16-bit PCM WAV at 8 kHz, the G.711 rate, so baresip's aufile source plays it as is.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 8000


def write_tone(path: Path, hz: float, seconds: float, *, rate: int = RATE, level: float = 0.5) -> Path:
    """A sine of ``hz`` at ``level`` of full scale (-6 dBFS by default)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = np.round(level * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(samples as floats in [-1, 1], sample rate); a multi-channel file keeps channel 0."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit audio, expected 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return samples[::channels], rate


@dataclass(frozen=True, slots=True)
class ToneAnalysis:
    rms: float  # of the whole file, 0..1 of full scale (a -6 dBFS sine gives ~0.35)
    frequency: float  # the strongest frequency, Hz (0.0 for silence)
    seconds: float
    rate: int


def analyze(path: Path) -> ToneAnalysis:
    """RMS level and dominant frequency (peak of a Hann-windowed FFT, DC excluded)."""
    samples, rate = read_wav(path)
    if samples.size == 0:
        return ToneAnalysis(0.0, 0.0, 0.0, rate)
    rms = float(np.sqrt(np.mean(samples**2)))
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    spectrum[freqs < 20] = 0.0
    peak = int(np.argmax(spectrum))
    frequency = float(freqs[peak]) if spectrum[peak] > 0 else 0.0
    return ToneAnalysis(rms, frequency, samples.size / rate, rate)


def tone_share(path: Path, hz: float, *, bandwidth: float = 40.0) -> float:
    """Fraction (0..1) of the recording's energy within ``hz`` ± ``bandwidth``/2.

    A clean relay of a pure tone gives close to 1 (G.711 noise and jitter-buffer gaps take a
    little); the other party's tone leaking in, or silence, gives close to 0.
    """
    samples, rate = read_wav(path)
    if samples.size == 0:
        return 0.0
    power = np.abs(np.fft.rfft(samples * np.hanning(samples.size))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    power[freqs < 20] = 0.0
    total = float(power.sum())
    if total == 0.0:
        return 0.0
    return float(power[np.abs(freqs - hz) <= bandwidth / 2].sum() / total)
