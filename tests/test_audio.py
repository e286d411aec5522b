"""Audio ring, Wav2Lip mel (whole clip and live) and VAD, checked against librosa and real speech."""

from __future__ import annotations

import threading
from pathlib import Path

import librosa
import numpy as np
import pytest

from rtdiar.audio import AudioRing, MelBuffer, VoiceActivity, wav2lip_melspectrogram
from rtdiar.errors import RtdiarError
from rtdiar.media import decode_audio

SR = 16000


@pytest.fixture(scope="module")
def speech(dev_clip: Path) -> np.ndarray:
    return decode_audio(dev_clip, SR)


@pytest.fixture(scope="module")
def vad() -> VoiceActivity:
    return VoiceActivity(SR)


def _librosa_wav2lip_mel(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's recipe written directly with librosa's high-level calls, from its hparams."""
    emphasised = librosa.effects.preemphasis(wav.astype(np.float64), coef=0.97, zi=[0.0])
    mel = librosa.feature.melspectrogram(y=emphasised, sr=SR, n_fft=800, hop_length=200, win_length=800,
                                         center=True, pad_mode="constant", power=1.0,
                                         n_mels=80, fmin=55, fmax=7600)
    db = librosa.amplitude_to_db(mel, amin=1e-5, top_db=None) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def _push_in_random_chunks(buffer: MelBuffer, wav: np.ndarray, reference: np.ndarray, seed: int) -> None:
    """Push `wav` in chunks of 1 sample to several seconds, checking every frame computed so far."""
    rng = np.random.default_rng(seed)
    pushed = 0
    while pushed < len(wav):
        size = int(rng.choice([1, 1, 3, 199, 200, 201, 399, 401, 320, 4000, 40000]))
        buffer.push(wav[pushed:pushed + size])
        pushed = min(len(wav), pushed + size)
        complete = max(0, (pushed - 400) // 200 + 1)  # frames whose 800-sample window is all there
        assert buffer.frames_ready == complete
        if complete:
            np.testing.assert_allclose(buffer.window(0, complete), reference[:, :complete], atol=1e-4)


def test_reference_mel_matches_librosa_recipe(speech: np.ndarray) -> None:
    mel = wav2lip_melspectrogram(speech)
    assert mel.shape == (80, 1 + len(speech) // 200)
    assert mel.dtype == np.float32
    assert mel.min() >= -4 and mel.max() <= 4
    assert mel.std() > 0.5  # real speech, not a clipped constant
    np.testing.assert_allclose(mel, _librosa_wav2lip_mel(speech), atol=1e-4)


def test_reference_mel_rejects_other_sample_rates(speech: np.ndarray) -> None:
    with pytest.raises(RtdiarError, match="16000"):
        wav2lip_melspectrogram(speech, sr=44100)


def test_pure_tone_lands_in_its_mel_bin() -> None:
    tone_hz = 1000.0
    wav = 0.5 * np.sin(2 * np.pi * tone_hz * np.arange(SR) / SR).astype(np.float32)
    mel = wav2lip_melspectrogram(wav)
    centres_hz = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    expected_bin = int(np.argmin(np.abs(centres_hz - tone_hz)))
    loudest_bins = mel[:, 10:-10].argmax(axis=0)
    assert np.all(np.abs(loudest_bins - expected_bin) <= 1)


def test_mel_buffer_equals_reference_for_random_chunks(speech: np.ndarray) -> None:
    reference = wav2lip_melspectrogram(speech)
    buffer = MelBuffer(capacity_frames=reference.shape[1] + 10)
    _push_in_random_chunks(buffer, speech, reference, seed=0)
    buffer.finish()
    assert buffer.frames_ready == reference.shape[1]
    np.testing.assert_allclose(buffer.window(0, reference.shape[1]), reference, atol=1e-4)


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large")  # librosa, on clips shorter than one window
@pytest.mark.parametrize("n_samples", [0, 150, 399, 400, 1000, 12345])
def test_mel_buffer_short_and_odd_lengths(n_samples: int) -> None:
    wav = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32) * 0.1
    reference = wav2lip_melspectrogram(wav) if n_samples else None
    buffer = MelBuffer(capacity_frames=100)
    if reference is not None:
        _push_in_random_chunks(buffer, wav, reference, seed=n_samples)
    buffer.finish()
    buffer.finish()  # idempotent
    assert buffer.frames_ready == 1 + n_samples // 200
    if reference is not None:
        np.testing.assert_allclose(buffer.window(0, buffer.frames_ready), reference, atol=1e-4)
    with pytest.raises(ValueError):
        buffer.push(wav[:10])


def test_mel_buffer_window_none_when_missing_or_evicted(speech: np.ndarray) -> None:
    reference = wav2lip_melspectrogram(speech)
    buffer = MelBuffer(capacity_frames=40)
    buffer.push(speech[:SR])
    ready = buffer.frames_ready
    assert ready == (SR - 400) // 200 + 1
    np.testing.assert_allclose(buffer.window(ready - 16), reference[:, ready - 16:ready], atol=1e-4)
    np.testing.assert_allclose(buffer.window(ready - 40, 40), reference[:, ready - 40:ready], atol=1e-4)
    assert buffer.window(ready - 15) is None  # its last frame is not computed yet
    assert buffer.window(ready - 41) is None  # its first frame is evicted
    assert buffer.window(0) is None
    assert buffer.window(-1) is None
    buffer.push(speech[SR:2 * SR])  # wraps the ring
    ready = buffer.frames_ready
    np.testing.assert_allclose(buffer.window(ready - 16), reference[:, ready - 16:ready], atol=1e-4)


def test_audio_ring_wraps_and_keeps_the_sample_clock() -> None:
    ring = AudioRing(capacity_samples=1000, sample_rate=SR)
    signal = np.arange(2500, dtype=np.float32)
    ring.write(signal[:700])
    ring.write(signal[700:1400])  # wraps around
    assert ring.written == 1400
    np.testing.assert_array_equal(ring.read(400, 1400), signal[400:1400])
    ring.write(signal[1400:2500])  # more than the capacity in one write
    assert ring.written == 2500
    np.testing.assert_array_equal(ring.read(1500, 2500), signal[1500:2500])
    np.testing.assert_array_equal(ring.read(2000, 2000), signal[2000:2000])
    with pytest.raises(ValueError):
        ring.read(1499, 1600)  # evicted
    with pytest.raises(ValueError):
        ring.read(2400, 2501)  # not written yet


def test_audio_ring_wait_for() -> None:
    ring = AudioRing(capacity_samples=1000, sample_rate=SR)
    assert not ring.wait_for(10, timeout_s=0.05)
    writer = threading.Timer(0.05, ring.write, args=(np.zeros(20, np.float32),))
    writer.start()
    assert ring.wait_for(10, timeout_s=10.0)
    assert ring.written >= 10
    writer.join()
    closer = threading.Timer(0.05, ring.close)
    closer.start()
    assert ring.wait_for(10_000, timeout_s=10.0)
    closer.join()
    assert ring.closed and ring.written == 20
    with pytest.raises(ValueError):
        ring.write(np.zeros(5, np.float32))


def test_vad_finds_speech_in_a_real_clip(vad: VoiceActivity, speech: np.ndarray) -> None:
    vad.reset()
    for start in range(0, len(speech), 320):  # 20 ms blocks, as from a microphone
        vad.push(speech[start:start + 320])
    duration_s = len(speech) / SR
    probs = [vad.speech_prob(t, t + 0.2) for t in np.arange(0, duration_s - 0.25, 0.1)]
    assert None not in probs
    assert max(probs) > 0.5


@pytest.mark.parametrize("noise_std", [0.0, 0.003])
def test_vad_silent_on_silence_and_faint_noise(vad: VoiceActivity, noise_std: float) -> None:
    vad.reset()
    vad.push((np.random.default_rng(1).standard_normal(3 * SR) * noise_std).astype(np.float32))
    probs = [vad.speech_prob(t, t + 0.2) for t in np.arange(0, 2.7, 0.1)]
    assert None not in probs
    assert max(probs) < 0.5


def test_vad_none_until_computed(vad: VoiceActivity) -> None:
    vad.reset()
    vad.push(np.zeros(1000, np.float32))  # one complete 512-sample chunk, one partial
    assert vad.speech_prob(0.0, 0.03) is not None
    assert vad.speech_prob(0.0, 0.05) is None
    assert vad.speech_prob(-0.5, -0.1) is None
    vad.push(np.zeros(24, np.float32))
    assert vad.speech_prob(0.0, 0.05) is not None
    vad.reset()
    assert vad.speech_prob(0.0, 0.03) is None


def test_vad_forgets_beyond_its_history() -> None:
    vad = VoiceActivity(SR, history_s=1.0)
    vad.push(np.zeros(3 * SR, np.float32))
    assert vad.speech_prob(0.0, 0.1) is None
    assert vad.speech_prob(2.5, 2.9) is not None
