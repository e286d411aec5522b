"""MfccBuffer: the live MFCCs equal python_speech_features.mfcc of the whole signal, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import python_speech_features

from rtdiar.audio import MfccBuffer
from rtdiar.errors import RtdiarError
from rtdiar.media import decode_audio

SR = 16000


def _reference(wav: np.ndarray) -> np.ndarray:
    """LR-ASD's own call, on the int16-scale samples their demo reads from a wav file."""
    return python_speech_features.mfcc(wav * 32768.0, SR, numcep=13, winlen=0.025, winstep=0.010)


def _push_in_random_blocks(buffer: MfccBuffer, wav: np.ndarray, seed: int) -> None:
    """Push `wav` in blocks of 1 sample to several seconds, checking the row count after each."""
    rng = np.random.default_rng(seed)
    pushed = 0
    while pushed < len(wav):
        size = int(rng.choice([1, 3, 159, 160, 161, 320, 399, 401, 4000, 40000]))
        buffer.push(wav[pushed:pushed + size])
        pushed = min(len(wav), pushed + size)
        assert buffer.frames_ready == max(0, (pushed - 400) // 160 + 1)  # rows whose 400 samples are all there


@pytest.fixture(scope="module")
def speech(dev_clip: Path) -> np.ndarray:
    return decode_audio(dev_clip, SR)


def test_mfcc_buffer_matches_the_library_on_real_speech(speech: np.ndarray) -> None:
    reference = _reference(speech)
    buffer = MfccBuffer(capacity_frames=len(reference) + 10)
    _push_in_random_blocks(buffer, speech, seed=0)
    buffer.finish()
    assert buffer.frames_ready == len(reference)
    rows = buffer.window(0, len(reference))
    assert rows.shape == (len(reference), 13) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_samples", [1, 399, 400, 401, 560, 561, 12345])
def test_mfcc_buffer_pads_the_end_like_the_library(n_samples: int) -> None:
    wav = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32) * 0.1
    buffer = MfccBuffer(capacity_frames=100)
    _push_in_random_blocks(buffer, wav, seed=n_samples)
    buffer.finish()
    buffer.finish()  # idempotent
    reference = _reference(wav)
    assert buffer.frames_ready == len(reference)
    np.testing.assert_allclose(buffer.window(0, len(reference)), reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        buffer.push(wav)


def test_mfcc_buffer_on_silence_and_nothing() -> None:
    buffer = MfccBuffer(capacity_frames=10)
    buffer.push(np.zeros(1000, np.float32))
    buffer.finish()
    np.testing.assert_allclose(buffer.window(0, buffer.frames_ready), _reference(np.zeros(1000)), atol=1e-4)
    assert buffer.window(0, 1)[0, 0] == pytest.approx(np.log(np.finfo(float).eps))  # the library's floor, not -inf
    empty = MfccBuffer(capacity_frames=10)
    empty.finish()
    assert empty.frames_ready == 0 and empty.window(0, 1) is None


def test_mfcc_buffer_ring_keeps_the_newest_rows(speech: np.ndarray) -> None:
    reference = _reference(speech)
    buffer = MfccBuffer(capacity_frames=50)
    buffer.push(speech)
    ready = buffer.frames_ready
    assert buffer.window(ready - 50, 50) is not None
    np.testing.assert_allclose(buffer.window(ready - 50, 50), reference[ready - 50:ready], rtol=1e-4, atol=1e-4)
    assert buffer.window(ready - 51, 2) is None  # evicted
    assert buffer.window(ready - 1, 2) is None  # not computed yet
    assert buffer.window(-1, 1) is None


def test_mfcc_buffer_rejects_other_sample_rates() -> None:
    with pytest.raises(RtdiarError, match="16000"):
        MfccBuffer(capacity_frames=10, sample_rate=44100)


def test_a_whole_clip_gets_the_rows_the_live_stream_gets(speech: np.ndarray) -> None:
    """What training, evaluation and the offset search compute over a whole clip is what the models
    read live: the int16-scaled MFCCs, whole 25 fps frames of them."""
    from rtdiar.scorers.fused import clip_mfcc

    rows = clip_mfcc(speech, SR)
    assert len(rows) % 4 == 0 and len(rows) >= len(_reference(speech)) - 4
    np.testing.assert_allclose(rows, _reference(speech)[:len(rows)], rtol=1e-4, atol=1e-3)
