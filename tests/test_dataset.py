"""Prepared clips: the engine's own crops on the 25 fps grid, the mel lined up, cached once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from rtdiar.config import load_config
from rtdiar.dataset import PreparedClip, cache_path, find_clips, prepare_clips, prep_digest, track_clip
from rtdiar.tracking import FaceDetector


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory, dev_clip) -> Path:
    """Two seconds of the dev clip at its own 25 fps, and the same re-timed to 30 fps."""
    folder = tmp_path_factory.mktemp("clips") / "wild"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-t", "2", "-i", str(dev_clip), str(folder / "a25.mp4")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-t", "2", "-i", str(dev_clip), "-r", "30", str(folder / "b30.mp4")],
                   check=True)
    return folder


@pytest.fixture(scope="module")
def prepared(short_clips) -> dict[str, PreparedClip]:
    config = load_config()
    with FaceDetector(config.detector) as detector:
        return {p.stem: track_clip(p, config, detector) for p in sorted(short_clips.glob("*.mp4"))}


def test_a_clip_becomes_crops_on_the_25_fps_grid_with_its_mel(prepared):
    clip = prepared["a25"]
    assert clip.crops.shape[1:] == (48, 96, 3) and clip.crops.dtype == np.uint8
    # 2 s at 25 fps, less the frames the tracker needs to confirm a face
    assert 45 <= len(clip.crops) <= 50 and clip.valid.all()
    assert clip.mel.shape[0] == 80 and abs(clip.mel.shape[1] - 2 * 80) <= 6  # AAC ends on whole 1024-sample frames
    assert clip.mel_window(clip.window_starts()[0]).shape == (80, 16)


def test_another_frame_rate_lands_on_the_same_grid(prepared):
    a, b = prepared["a25"], prepared["b30"]
    assert abs(len(a.crops) - len(b.crops)) <= 2  # same duration on the 25 fps grid
    overlap = range(max(a.first_frame, b.first_frame), min(a.first_frame + len(a.crops), b.first_frame + len(b.crops)))
    mean_abs = [np.abs(a.crops[g - a.first_frame].astype(int) - b.crops[g - b.first_frame]).mean() for g in overlap]
    assert np.median(mean_abs) < 12  # the same moments of the same face (resampling blurs a little)


def test_shifted_audio_windows_are_the_later_mel(prepared):
    clip = prepared["a25"]
    k = int(clip.window_starts(max_shift=5)[0])
    np.testing.assert_array_equal(clip.mel_window(k, shift=5), clip.mel[:, clip.mel_index(k) + 16:clip.mel_index(k) + 32])


def test_cache_is_reused_and_keyed_by_the_settings(short_clips, tmp_path):
    config = load_config()
    clips = find_clips([short_clips])
    paths = prepare_clips(clips, tmp_path, config, workers=1)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert prepare_clips(clips, tmp_path, config, workers=1) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # not prepared again
    loaded = PreparedClip.load(paths[0])
    assert loaded.name == "wild/a25" and loaded.crops.shape[1:] == (48, 96, 3)
    other = load_config(overrides={"tracker.pad_bottom": 0.2})
    assert prep_digest(other) != prep_digest(config)
    assert cache_path(clips[0], tmp_path, other) != paths[0]


def test_a_clip_without_a_face_is_remembered_and_skipped(tmp_path):
    folder = tmp_path / "faceless"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=1",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=1", "-shortest", str(folder / "bars.mp4")],
                   check=True)
    assert prepare_clips(find_clips([folder]), tmp_path / "cache", load_config(), workers=1) == []
