"""`rtdiar offset`: the SyncNet-style estimate, real clips whose sound was shifted by a known amount,
the repaired copy, and one-line errors.

Random weights cannot find an offset, so the measurement is checked with a lip-sync expert that is
right by construction (`OracleScorer`); the real model only has to go through the same mechanics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import count_frames
from rtdiar.scorers import inference
from rtdiar.audio import MEL_SILENCE
from rtdiar.cli import main
from rtdiar.config import Config, load_config
from rtdiar.lab.dataset import PreparedClip, track_clip
from rtdiar.errors import RtdiarError
from rtdiar.offset import OffsetResult, analyse_clip, estimate_offset, write_fixed
from rtdiar.sources import FileSource
from rtdiar.tracking import FaceDetector

SAMPLE_RATE = 16000
FRAME_SAMPLES = 640  # one 25 fps window frame of 16 kHz audio
MAX_SHIFT = 15


def _ffmpeg(*args: str | Path | float) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def _aligned_audio(path: Path) -> np.ndarray:
    """The sound as rtdiar hears it: on the video's timeline (stream start times applied)."""
    config = load_config()
    return FileSource(path, None, "fast", config.video, config.audio).aligned_audio()


def _with_sound_moved(video: Path, frames: int, out: Path) -> Path:
    """A copy of `video` (video stream copied) whose sound is `frames` 25 fps frames later (earlier
    when negative): the samples are shifted, the length kept."""
    samples = _aligned_audio(video)
    n = frames * FRAME_SAMPLES
    silence = np.zeros(abs(n), np.float32)
    moved = np.concatenate([silence, samples[:len(samples) - n]]) if n >= 0 else np.concatenate([samples[-n:], silence])
    wav = out.with_suffix(".wav")
    soundfile.write(wav, moved, SAMPLE_RATE)
    _ffmpeg("-i", video, "-i", wav, "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", out)
    return out


def _sound_vector(mel: np.ndarray) -> np.ndarray:
    centred = mel.ravel() - mel.mean()
    return centred / (np.linalg.norm(centred) + 1e-9)


def _window_key(window: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(window).tobytes()).hexdigest()


class OracleScorer:
    """A lip-sync expert right by construction: it knows the in-sync sound of every face window of
    an original clip and embeds the face window as that sound, so a face matches exactly the audio
    it was recorded with. Copies of the clip with the video stream copied show it the same crops;
    a copy's sound may run a little longer (AAC padding), the original's is silence there."""

    def __init__(self, original: PreparedClip, frames: int = 5) -> None:
        padded = dataclasses.replace(original, mel=np.pad(original.mel, ((0, 0), (0, 80)), constant_values=MEL_SILENCE))
        self._sound = {_window_key(padded.crops[k:k + frames]): _sound_vector(padded.mel_window(k))
                       for k in padded.window_starts(frames)}

    needs_lips = False  # reads crops only, as the scorer of a pixel model
    family = "sync"  # a lip-sync expert: the commands that pair faces with shifted sound take it

    def face_embeddings(self, windows: np.ndarray, lips: np.ndarray | None = None) -> np.ndarray:
        return np.stack([self._sound[_window_key(window)] for window in windows])

    def audio_embeddings(self, mels: np.ndarray) -> np.ndarray:
        return np.stack([_sound_vector(mel) for mel in mels])


def _oracle(path: Path, config: Config) -> OracleScorer:
    detector = FaceDetector(config.detector)
    try:
        return OracleScorer(track_clip(path, config, detector))
    finally:
        detector.close()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def clip_3s(dev_clip: Path, tmp_path_factory) -> Path:
    """The first 3 s of a real talking-face clip (25 fps, one face)."""
    out = tmp_path_factory.mktemp("clips") / "talk.mp4"
    _ffmpeg("-i", dev_clip, "-t", "3", "-c", "copy", out)
    return out


# --- the estimator on similarity curves -------------------------------------------------------

def _peaked(windows: int, peak_shift: int, height: float, rng: np.random.Generator, base: float = 0.2) -> np.ndarray:
    sims = base + rng.normal(0.0, 0.005, (windows, 2 * MAX_SHIFT + 1))
    sims[:, peak_shift + MAX_SHIFT] += height
    return sims


def test_peak_at_a_shift_is_the_offset() -> None:
    offset, confidence, curve = estimate_offset(_peaked(40, 3, 0.4, np.random.default_rng(0)))
    assert offset == 3
    assert len(curve) == 2 * MAX_SHIFT + 1
    assert confidence == pytest.approx(0.4, abs=0.02)


def test_silent_windows_do_not_drag_the_estimate() -> None:
    """10 speech windows agree on +3; 90 near-flat (silent) ones share a tiny misleading bump at -7.
    A plain average follows the many silent windows; the confidence-weighted one does not."""
    rng = np.random.default_rng(1)
    sims = np.concatenate([_peaked(10, 3, 0.3, rng), _peaked(90, -7, 0.05, rng, base=0.6)])
    assert int(np.argmax(sims.mean(axis=0))) - MAX_SHIFT == -7  # what SyncNet's plain average would say
    offset, _, _ = estimate_offset(sims)
    assert offset == 3


def test_sharp_peak_is_more_confident_than_a_flat_curve() -> None:
    rng = np.random.default_rng(2)
    _, sharp, _ = estimate_offset(_peaked(30, -4, 0.3, rng))
    _, flat, _ = estimate_offset(_peaked(30, -4, 0.0, rng))
    assert sharp > 5 * flat


def test_a_reading_needs_confidence_and_a_peak_inside_the_search() -> None:
    def reading(offset_frames: int, confidence: float) -> OffsetResult:
        return OffsetResult("clip.mp4", offset_frames, 40.0 * offset_frames, confidence, MAX_SHIFT, 50,
                            [0.0] * (2 * MAX_SHIFT + 1), min_confidence=0.07)

    assert reading(3, 0.2).reliable and "unreliable" not in reading(3, 0.2).describe()
    assert not reading(3, 0.05).reliable and "confidence below 0.07" in reading(3, 0.05).describe()
    for edge in (MAX_SHIFT, -MAX_SHIFT):
        assert not reading(edge, 0.3).reliable and "edge" in reading(edge, 0.3).describe()
    assert reading(MAX_SHIFT - 1, 0.3).to_json()["reliable"] is True


def test_no_evidence_is_called_in_sync() -> None:
    offset, confidence, curve = estimate_offset(np.full((12, 2 * MAX_SHIFT + 1), 0.3))
    assert (offset, confidence) == (0, 0.0)
    assert np.allclose(curve, 0.3)


# --- real clips, sound shifted by a known amount ----------------------------------------------

@pytest.mark.parametrize("fps, frames", [(25, 5), (30, -3)])
def test_known_shift_is_measured(clip_3s: Path, tmp_path: Path, config: Config, fps: int, frames: int) -> None:
    """The offset comes out in 25 fps window frames whatever the source rate: 120 ms is 3 frames at 30 fps too."""
    original = clip_3s
    if fps != 25:
        original = tmp_path / f"talk{fps}.mp4"
        _ffmpeg("-i", clip_3s, "-r", str(fps), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", original)
    shifted = _with_sound_moved(original, frames, tmp_path / "shifted.mp4")
    result = analyse_clip(shifted, config, _oracle(original, config), MAX_SHIFT)
    assert result.offset_frames == frames
    assert result.offset_ms == pytest.approx(40.0 * frames)
    assert result.windows > 50  # every window of the 3 s face track votes
    assert ("lags" if frames > 0 else "leads") in result.describe()


def test_clip_shorter_than_the_search_range(clip_3s: Path, tmp_path: Path, config: Config) -> None:
    """An LRW-length clip (29 frames) searched over ±15: audio beyond the clip counts as silence."""
    short = tmp_path / "lrw.mp4"
    _ffmpeg("-i", clip_3s, "-frames:v", "29", "-t", "1.16", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
            short)
    result = analyse_clip(short, config, _oracle(short, config), MAX_SHIFT)
    assert result.offset_frames == 0
    assert len(result.curve) == 2 * MAX_SHIFT + 1
    assert result.windows >= 20


def test_cli_measures_and_fixes(clip_3s: Path, tmp_path: Path, config: Config, capsys, monkeypatch) -> None:
    """`rtdiar offset FILE --json --fix OUT` with a right-by-construction expert on a clip whose sound
    is 5 frames late: +5 frames (200 ms), and the fixed copy measures in sync."""
    lagging = _with_sound_moved(clip_3s, 5, tmp_path / "lagging.mp4")
    oracle = _oracle(clip_3s, config)
    monkeypatch.setattr(inference, "load_scorer", lambda cfg: oracle)
    fixed = tmp_path / "fixed.mp4"
    assert main(["offset", str(lagging), "--json", "--fix", str(fixed)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["offset_frames"], report["offset_ms"]) == (5, 200.0)
    assert count_frames(fixed) == count_frames(lagging)
    assert analyse_clip(fixed, config, oracle, MAX_SHIFT).offset_frames == 0


def test_an_unreliable_reading_is_said_and_not_fixed_unless_forced(clip_3s: Path, tmp_path: Path, config: Config,
                                                                   capsys, monkeypatch) -> None:
    """The clip's sound replaced by noise: the lips match nothing, so the curve has no clear peak. Its
    highest point is still a number; the tool says it is unreliable and --fix will not move the sound
    by it without --force."""
    noisy = tmp_path / "noise.mp4"
    _ffmpeg("-i", clip_3s, "-f", "lavfi", "-i", "anoisesrc=duration=3:seed=1", "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-c:a", "aac", "-shortest", noisy)
    oracle = _oracle(clip_3s, config)
    monkeypatch.setattr(inference, "load_scorer", lambda cfg: oracle)
    fixed = tmp_path / "fixed.mp4"
    assert main(["offset", str(noisy), "--fix", str(fixed)]) == 2
    captured = capsys.readouterr()
    assert "unreliable" in captured.out and "--force" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not fixed.exists()
    assert main(["offset", str(noisy), "--json", "--fix", str(fixed), "--force"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reliable"] is False
    assert fixed.exists()
    in_sync = analyse_clip(clip_3s, config, oracle, MAX_SHIFT)
    assert in_sync.reliable and "unreliable" not in in_sync.describe()


def test_cli_runs_the_model(clip_3s: Path, random_weights: Path, capsys) -> None:
    """The real network through the same path (random weights: the figures mean nothing, the shape does)."""
    assert main(["offset", str(clip_3s), "--json", "--max-shift", "6", "--weights", str(random_weights)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["offset_ms"] == 40.0 * report["offset_frames"]
    assert abs(report["offset_frames"]) <= 6 and report["max_shift"] == 6
    assert report["confidence"] >= 0.0 and len(report["curve"]) == 13
    assert report["file"] == clip_3s.name and "lags" in report["sign"]
    trusted = report["confidence"] >= report["min_confidence"] and abs(report["offset_frames"]) < 6
    assert report["reliable"] == trusted and (report["doubt"] is None) == trusted


# --- the fixed copy ---------------------------------------------------------------------------

@pytest.mark.parametrize("offset_s, audio_start_s", [(0.2, 0.0), (-0.12, 0.0), (-0.12, 0.3)])
def test_fixed_copy_moves_the_sound_exactly(clip_3s: Path, tmp_path: Path, offset_s: float,
                                            audio_start_s: float) -> None:
    """On rtdiar's timeline, the fixed sound at t is the original sound at t + offset_s, also when the
    audio stream starts after the video; the video is copied."""
    original = clip_3s
    if audio_start_s:
        original = tmp_path / "late_audio.mp4"
        _ffmpeg("-i", clip_3s, "-itsoffset", audio_start_s, "-i", clip_3s, "-map", "0:v", "-map", "1:a", "-c", "copy",
                original)
    fixed = tmp_path / "fixed.mp4"
    write_fixed(original, offset_s, fixed)
    before, after = _aligned_audio(original), _aligned_audio(fixed)
    lag = int(round(offset_s * SAMPLE_RATE))
    later, earlier = (before[lag:], after) if lag > 0 else (before, after[-lag:])
    n = min(len(later), len(earlier)) - SAMPLE_RATE // 10  # the AAC tail may differ
    residual = later[:n] - earlier[:n]
    assert np.sqrt(np.mean(residual ** 2)) < 0.05 * np.sqrt(np.mean(later[:n] ** 2))
    # a copy one frame off would be far worse: the check can tell 40 ms apart
    off_by_one = later[FRAME_SAMPLES:n] - earlier[:n - FRAME_SAMPLES]
    assert np.sqrt(np.mean(off_by_one ** 2)) > 0.3 * np.sqrt(np.mean(later[:n] ** 2))
    assert count_frames(fixed) == count_frames(original)


def test_failed_fix_leaves_nothing(clip_3s: Path, tmp_path: Path) -> None:
    out = tmp_path / "fixed.notacontainer"
    with pytest.raises(RtdiarError) as error:
        write_fixed(clip_3s, 0.1, out)
    assert len(str(error.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_fix_never_overwrites(clip_3s: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fixed.mp4"
    out.write_bytes(b"keep me")
    assert main(["offset", str(clip_3s), "--fix", str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert out.read_bytes() == b"keep me"


# --- unusable input ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unusable(clip_3s: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("unusable")
    paths = {name: folder / f"{name}.mp4" for name in ("missing", "silent", "faceless", "brief")}
    _ffmpeg("-i", clip_3s, "-an", "-c", "copy", paths["silent"])
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", paths["faceless"])
    _ffmpeg("-i", clip_3s, "-frames:v", "4", "-t", "0.16", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
            paths["brief"])
    return paths


@pytest.mark.parametrize("name, reason", [("missing", "not found"), ("silent", "no audio"),
                                          ("faceless", "no face"), ("brief", "too short")])
def test_unusable_input_is_one_line(unusable: dict[str, Path], random_weights: Path, capsys,
                                    name: str, reason: str) -> None:
    assert main(["offset", str(unusable[name]), "--weights", str(random_weights)]) == 2
    assert reason in _error_line(capsys)
