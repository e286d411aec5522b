"""Prepared clips: the engine's own crops on the 25 fps grid, the mel lined up, cached once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from rtdiar.config import load_config
from rtdiar.lab.dataset import (PreparedClip, cache_path, coded_cache_path, find_clips, prepare_clips, prepare_coded,
                            prep_digest, track_clip)
from rtdiar.errors import RtdiarError
from rtdiar.media import lossy_round_trip
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
    assert 0.9 <= clip.tracked_share() <= 1.0  # all but the frames before the track was confirmed
    assert clip.mel.shape[0] == 80 and abs(clip.mel.shape[1] - 2 * 80) <= 6  # AAC ends on whole 1024-sample frames
    assert clip.mel_window(clip.window_starts()[0]).shape == (80, 16)


def test_another_frame_rate_lands_on_the_same_grid(prepared):
    a, b = prepared["a25"], prepared["b30"]
    assert abs(len(a.crops) - len(b.crops)) <= 2  # same duration on the 25 fps grid
    overlap = range(max(a.first_frame, b.first_frame), min(a.first_frame + len(a.crops), b.first_frame + len(b.crops)))
    mean_abs = [np.abs(a.crops[g - a.first_frame].astype(int) - b.crops[g - b.first_frame]).mean() for g in overlap]
    assert np.median(mean_abs) < 12  # the same moments of the same face (resampling blurs a little)


def test_shrunk_frames_give_a_smaller_face_on_the_same_grid(prepared, short_clips):
    """`scale` stands the same person further from the camera: half the face, same crops and times."""
    config = load_config()
    with FaceDetector(config.detector) as detector:
        half = track_clip(short_clips / "a25.mp4", config, detector, scale=0.5)
    full = prepared["a25"]
    assert 100 < full.face_px < 400 and abs(half.face_px / full.face_px - 0.5) < 0.05
    assert half.crops.shape == full.crops.shape and half.first_frame == full.first_frame and half.valid.all()
    np.testing.assert_array_equal(half.mel, full.mel)
    assert prep_digest(config, 0.5) != prep_digest(config)  # cached apart


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
    assert loaded.lips is None  # FaceMesh runs only for a model that reads lip points
    assert loaded.name == "wild/a25" and loaded.crops.shape[1:] == (48, 96, 3) and loaded.face_px > 100
    other = load_config(overrides={"tracker.pad_bottom": 0.2})
    assert prep_digest(other) != prep_digest(config)
    assert cache_path(clips[0], tmp_path, other) != paths[0]


def test_clips_prepared_with_lips_carry_them_frame_by_frame_in_a_cache_of_their_own(short_clips, tmp_path):
    config = load_config()
    clips = find_clips([short_clips])
    plain = prepare_clips(clips, tmp_path, config, workers=1)
    with_lips = prepare_clips(clips, tmp_path, config, workers=1, lips=True)
    assert with_lips == [cache_path(c, tmp_path, config, lips=True) for c in clips] and set(with_lips).isdisjoint(plain)
    clip, same = PreparedClip.load(with_lips[0]), PreparedClip.load(plain[0])
    np.testing.assert_array_equal(clip.crops, same.crops)  # the same track, crops and mel
    np.testing.assert_array_equal(clip.mel, same.mel)
    assert clip.lips.shape == (len(clip.crops), 42, 2) and clip.lips_found().mean() > 0.9
    np.testing.assert_array_equal(clip.lips_found(), ~np.isnan(clip.lips).any(axis=(1, 2)))
    windows = clip.lips_windows(clip.window_starts())
    assert windows.shape == (len(clip.window_starts()), 5, 42, 2) and np.isfinite(windows).all()


def test_a_clip_without_a_face_is_remembered_and_skipped(tmp_path):
    folder = tmp_path / "faceless"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=1",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=1", "-shortest", str(folder / "bars.mp4")],
                   check=True)
    assert prepare_clips(find_clips([folder]), tmp_path / "cache", load_config(), workers=1) == []


def _bursts(rate: int = 16000) -> tuple[np.ndarray, list[int]]:
    """2 s of a 5.5 kHz hum with four 5 ms noise bursts, and where the bursts start."""
    rng = np.random.default_rng(0)
    starts = [4000, 12000, 20000, 28000]
    sound = (0.05 * np.sin(2 * np.pi * 5500 * np.arange(2 * rate) / rate)).astype(np.float32)
    for start in starts:
        sound[start:start + 80] += 0.5 * rng.standard_normal(80).astype(np.float32)
    return sound, starts


def test_a_lossy_round_trip_keeps_the_sound_in_place_and_drops_what_the_codec_drops():
    sound, starts = _bursts()
    for options in ("-c:a libmp3lame -b:a 24k", "-c:a aac -b:a 20k", "-ar 8000 -c:a libspeex"):
        coded = lossy_round_trip(sound, options)
        assert coded.shape == sound.shape and coded.dtype == np.float32
        envelope = np.convolve(np.abs(coded), np.ones(80), "same")
        found = [int(np.argmax(envelope[s - 800:s + 800])) + s - 800 - 40 for s in starts]
        assert all(abs(f - s) <= 32 for f, s in zip(found, starts)), (options, found)  # within 2 ms: no codec delay
    spectrum = np.abs(np.fft.rfft(lossy_round_trip(sound, "-ar 8000 -c:a libspeex")))
    high = np.fft.rfftfreq(len(sound), 1 / 16000) > 4500
    assert spectrum[high].sum() < 0.01 * np.abs(np.fft.rfft(sound))[high].sum()  # a telephone codec: nothing above 4 kHz
    with pytest.raises(RtdiarError, match="nosuchcodec"):
        lossy_round_trip(sound, "-c:a nosuchcodec")


def test_coded_mels_line_up_with_the_prepared_mel_and_are_cached(short_clips, tmp_path):
    config = load_config()
    clips = find_clips([short_clips])
    prepared = [PreparedClip.load(p) for p in prepare_clips(clips, tmp_path, config, workers=1)]
    codecs = ["-c:a libmp3lame -b:a 24k", "-ar 8000 -c:a libspeex"]
    paths = prepare_coded(clips, tmp_path, config, codecs, workers=1)
    assert paths == [coded_cache_path(c, tmp_path, config, codecs) for c in clips]
    for clip, path in zip(prepared, paths):
        coded = np.load(path).astype(np.float32)
        assert coded.shape == (2, *clip.mel.shape)
        # the same sound below 2 kHz (the lower 40 mel bands, which every codec here keeps): closest to the
        # clean mel at no lag, and not identical to it
        voiced = slice(10, clip.mel.shape[1] - 10)
        for mel in coded:
            lags = [np.corrcoef(clip.mel[:40, voiced].ravel(), np.roll(mel, lag, axis=1)[:40, voiced].ravel())[0, 1]
                    for lag in (-2, -1, 0, 1, 2)]
            assert int(np.argmax(lags)) == 2 and 0.5 < lags[2] < 0.999
    before = [p.stat().st_mtime_ns for p in paths]
    assert prepare_coded(clips, tmp_path, config, codecs, workers=1) == paths
    assert [p.stat().st_mtime_ns for p in paths] == before  # made once
    assert coded_cache_path(clips[0], tmp_path, config, codecs[:1]) != paths[0]  # other codecs, other copies
