"""Tones, Goertzel DTMF detection, mix-minus, the frame clock, the jitter buffer, WAV files."""

from __future__ import annotations

import numpy as np
import pytest

from node.media import g711
from node.media.clock import FrameClock
from node.media.dtmf_detect import DtmfDetector
from node.media.jitter import JitterBuffer
from node.media.mixer import mix, mix_minus
from node.media.tones import FRAME, TONES, dtmf_tone, render, sine
from node.media.wav import WavFormatError, read_wav, write_wav


def _detect(frames: np.ndarray, det: DtmfDetector | None = None) -> str:
    det = det or DtmfDetector()
    return "".join(d for d in (det.feed(f) for f in frames) if d)


def test_every_key_detected_once_through_g711() -> None:
    keys = "1234567890*#ABCD"
    frames = np.concatenate([dtmf_tone(k, 100, 60) for k in keys])
    for pt in (g711.PCMU, g711.PCMA):
        coded = g711.decode(pt, g711.encode(pt, frames.ravel())).reshape(-1, FRAME)
        assert _detect(coded) == keys


def test_long_press_is_one_digit_and_repeats_need_a_gap() -> None:
    assert _detect(dtmf_tone("5", 1000)) == "5"
    assert _detect(np.concatenate([dtmf_tone("5", 100, 60), dtmf_tone("5", 100, 60)])) == "55"


def test_noise_speechlike_and_single_tones_are_not_digits() -> None:
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 4000, 8000 * 3).astype(np.int16).reshape(-1, FRAME)
    assert _detect(noise) == ""
    # a vowel-like harmonic series with 770 Hz and 1336 Hz among many others
    harmonics = sine(tuple(float(f) for f in range(110, 3000, 110)), 8000 * 2, 0.03).reshape(-1, FRAME)
    assert _detect(harmonics) == ""
    assert _detect(sine((770.0,), 8000, 0.3).reshape(-1, FRAME)) == ""
    assert _detect(render(TONES["busy"])) == ""
    # too quiet to be a key press (-50 dBFS)
    assert _detect((dtmf_tone("1", 200) * 0.003).astype(np.int16)) == ""


def test_twist_limit() -> None:
    rows, cols = 697.0, 1209.0
    strong_low = (sine((rows,), 1600, 0.3).astype(np.int32) + sine((cols,), 1600, 0.02)).astype(np.int16)
    assert _detect(strong_low.reshape(-1, FRAME)) == ""  # 23 dB twist
    ok = (sine((rows,), 1600, 0.2).astype(np.int32) + sine((cols,), 1600, 0.12)).astype(np.int16)
    assert _detect(ok.reshape(-1, FRAME)) == "1"  # 4.4 dB twist


def test_tones_render_whole_periods() -> None:
    ring = render(TONES["ringback"])
    assert ring.shape == (300, FRAME)  # 2 s on + 4 s off
    assert np.abs(ring[:100]).max() > 10000 and np.abs(ring[100:]).max() == 0
    assert render(TONES["busy"]).shape == (50, FRAME)
    with pytest.raises(ValueError):
        dtmf_tone("x")
    with pytest.raises(ValueError):
        dtmf_tone("1", 30)


def test_mix_minus_each_hears_the_others_clipped() -> None:
    f = np.array([[100, 30000, -5], [200, 30000, -5], [400, 1, -5]], dtype=np.int16)
    out = mix_minus(f)
    assert out[:, 0].tolist() == [600, 500, 300]
    assert out[0, 1] == 30001 and out[1, 1] == 30001 and out[2, 1] == 32767  # clipped, not wrapped
    assert out[:, 2].tolist() == [-10, -10, -10]
    assert mix(f)[1] == 32767 and mix(f)[0] == 700
    assert mix_minus(f[:1]).tolist() == [[0, 0, 0]]  # alone: silence, not an echo


def test_frame_clock_keeps_absolute_deadlines() -> None:
    c = FrameClock(start=0.0, period=0.02, max_burst=5)
    assert c.due(0.019) == 0
    assert c.due(0.021) == 1
    assert c.due(0.045) == 1  # 5 ms late: one frame, next deadline still 0.06
    assert c.next_due == pytest.approx(0.06)
    assert c.due(0.101) == 3  # 0.06, 0.08, 0.10 all fell due
    assert c.due(1.0) == 5 and c.skipped > 0  # a stall: bounded burst, the rest skipped
    assert c.next_due > 1.0 and c.due(c.next_due - 0.001) == 0


def test_jitter_buffer_reorders_and_conceals() -> None:
    jb = JitterBuffer(depth=2)
    f = {s: np.full(FRAME, s, dtype=np.int16) for s in range(10, 16)}
    for s in (10, 12, 11):
        jb.put(s, f[s])
    assert [int(jb.get()[0]) for _ in range(3)] == [10, 11, 12]
    jb.put(14, f[14])
    assert jb.get() is None  # 13 may still come
    jb.put(15, f[15])
    assert jb.get() is None and jb.lost == 1  # 13 given up: a gap frame
    assert int(jb.get()[0]) == 14
    jb.put(12, f[12])
    assert jb.late == 1


def test_wav_round_trip_and_clear_errors(tmp_path) -> None:
    x = sine((440.0,), 800)
    write_wav(tmp_path / "a.wav", x)
    assert np.array_equal(read_wav(tmp_path / "a.wav"), x)
    import wave

    with wave.open(str(tmp_path / "b.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(44100), w.writeframes(bytes(400))
    with pytest.raises(WavFormatError, match="44100 Hz, 2 channel"):
        read_wav(tmp_path / "b.wav")
    (tmp_path / "c.wav").write_bytes(b"not a wav")
    with pytest.raises(WavFormatError, match="not a PCM WAV"):
        read_wav(tmp_path / "c.wav")
