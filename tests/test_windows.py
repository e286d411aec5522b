"""Window timing: 25 fps target frames from any source rate, and the matching mel / audio range."""

from __future__ import annotations

import numpy as np
import pytest

from rtdiar.windows import CropHistory, audio_end_sample, mel_start_index, nearest_frames, window_times


def _crop(index: int) -> np.ndarray:
    """A crop that says which source frame it came from."""
    return np.full((48, 96, 3), index, np.uint8)


def _history(fps: float, indices) -> CropHistory:
    history = CropHistory()
    for i in indices:
        history.add(i / fps, _crop(i))
    return history


def _frames_of(window: np.ndarray) -> list[int]:
    return [int(crop[0, 0, 0]) for crop in window]


def test_window_times_end_at_t_end_25_fps_apart():
    np.testing.assert_allclose(window_times(2.0), [1.84, 1.88, 1.92, 1.96, 2.0])


def test_at_25_fps_the_window_is_the_last_5_frames():
    fps = 25.0
    history = _history(fps, range(50))
    np.testing.assert_allclose(window_times(49 / fps), np.arange(45, 50) / fps)
    window = history.window(49 / fps)
    assert window.shape == (5, 48, 96, 3) and window.dtype == np.uint8
    assert _frames_of(window) == [45, 46, 47, 48, 49]


@pytest.mark.parametrize("fps", [30.0, 30000 / 1001])
def test_at_30_fps_the_nearest_frames_are_picked(fps):
    # targets 0.84, 0.88, 0.92, 0.96, 1.00 s (x 1.001 at 29.97) = source frames 25.2, 26.4, 27.6, 28.8, 30
    history = _history(fps, range(60))
    assert _frames_of(history.window(30 / fps)) == [25, 26, 28, 29, 30]


def test_a_missing_frame_the_window_needs_gives_none():
    fps = 30.0
    history = _history(fps, [i for i in range(60) if i != 29])
    assert history.window(30 / fps) is None
    # frame 27 falls between two targets: the window does not need it
    history = _history(fps, [i for i in range(60) if i != 27])
    assert _frames_of(history.window(30 / fps)) == [25, 26, 28, 29, 30]


def test_too_short_a_history_gives_none():
    history = _history(25.0, range(3))
    assert history.window(2 / 25.0) is None
    assert CropHistory().window(1.0) is None


def test_old_crops_are_forgotten():
    fps = 25.0
    history = _history(fps, range(100))  # 4 s, more than it keeps
    assert history.window(20 / fps) is None
    assert _frames_of(history.window(99 / fps)) == [95, 96, 97, 98, 99]


def test_an_explicit_tolerance_is_honoured():
    fps = 30.0
    history = _history(fps, range(60))
    # the 0.92 s target is 13.3 ms from frame 28
    assert history.window(30 / fps, tolerance_s=0.010) is None
    assert history.window(30 / fps, tolerance_s=0.014) is not None


def test_mel_start_index_rounds_to_the_nearest_80hz_frame():
    assert mel_start_index(0.84) == 67  # 67.2
    assert mel_start_index(0.8) == 64
    assert mel_start_index(0.845) == 68  # 67.6
    assert mel_start_index(0.0) == 0
    assert mel_start_index(-0.16) < 0


def test_audio_end_sample_covers_the_last_mel_frame_window(config):
    # t_end 1.0 s -> start 0.84 s -> mel 67; last mel frame 67 + 15 = 82 is centred on sample
    # 82 * 200 and its 800-sample window ends 400 samples later
    assert audio_end_sample(1.0, config.window, 16000) == (67 + 15) * 200 + 400
    # t_end 0.16 s -> start 0.0 -> mel 0..15
    assert audio_end_sample(0.16, config.window, 16000) == 15 * 200 + 400


def test_frames_dropped_under_load_still_give_a_window():
    # a 30 fps source of which only every other frame got processed: crops 66.7 ms apart
    fps = 30.0
    history = _history(fps, range(0, 60, 2))
    assert _frames_of(history.window(30 / fps)) == [26, 26, 28, 28, 30]


def test_nearest_frames_resamples_30_fps_onto_the_25_fps_grid():
    times = np.arange(30) / 30.0
    nearest = nearest_frames(times, np.arange(25) / 25.0, fps=25.0)
    assert (nearest >= 0).all()
    np.testing.assert_allclose(times[nearest], np.arange(25) / 25.0, atol=0.5 / 30 + 1e-9)


def test_nearest_frames_marks_a_gap_instead_of_repeating_a_frame():
    times = np.delete(np.arange(25) / 25.0, [10, 11, 12])  # three frames lost
    nearest = nearest_frames(times, np.arange(25) / 25.0, fps=25.0)
    assert list(np.flatnonzero(nearest < 0)) == [10, 11, 12]
