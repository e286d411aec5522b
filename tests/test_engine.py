"""The whole engine on real clips from ../shared/data/dev, with a scorer double to check the wiring."""

from __future__ import annotations

import dataclasses
import subprocess
import time

import numpy as np
import pytest

from conftest import DEV_WILD, count_frames
from rtdiar.config import load_config
from rtdiar.engine import Diarizer
from rtdiar.scorers.inference import EmbeddingScorer, sync_needs
from rtdiar.tracking import FaceDetector
from rtdiar.sources import FileSource


EMBED_DIM = 80  # the test doubles' embedding size: one per mel band


class ConstantScorer(EmbeddingScorer):
    """Rates every face window the same with any sound, and records what the engine fed it: every
    sound embeds as one direction, every face at cosine `value` from it."""

    needs_lips = False

    def __init__(self, value: float = 0.9) -> None:
        self.needs = sync_needs(load_config(), self.needs_lips)
        self.value = value
        self.calls: list[tuple[tuple, tuple]] = []
        self.lips: list[np.ndarray] = []

    def embed(self, windows: np.ndarray, mel: np.ndarray, lips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        assert windows.dtype == np.uint8 and mel.dtype == np.float32
        if len(windows):
            self.calls.append((windows.shape, mel.shape))
            assert (lips is not None) == self.needs_lips
        if lips is not None:
            self.lips.append(lips)
        audio = self.audio(mel)
        return np.array([self.face(w, audio) for w in windows], np.float32).reshape(len(windows), EMBED_DIM), audio

    def audio(self, mel: np.ndarray) -> np.ndarray:
        return np.eye(EMBED_DIM, dtype=np.float32)[0]

    def face(self, window: np.ndarray, audio: np.ndarray) -> np.ndarray:
        return np.array([self.value, np.sqrt(1 - self.value ** 2)] + [0.0] * (EMBED_DIM - 2), np.float32)


class SyncedScorer(ConstantScorer):
    """Every face in sync with the sound: each sound embeds as its own spectral shape, and each face
    window as the sound of its own window."""

    def audio(self, mel: np.ndarray) -> np.ndarray:
        shape = mel.mean(axis=1) - mel.mean()
        return (shape / np.linalg.norm(shape)).astype(np.float32)

    def face(self, window: np.ndarray, audio: np.ndarray) -> np.ndarray:
        return audio


class LipsScorer(ConstantScorer):
    needs_lips = True


def _run(config, clip, pace="fast", scorer=None):
    scorer = scorer or ConstantScorer()
    source = FileSource(clip, None, pace, config.video, config.audio)
    return list(Diarizer(config, scorer).run(source)), scorer


def test_fast_mode_gives_every_frame_in_order_with_one_stable_face(config, dev_clip):
    results, scorer = _run(config, dev_clip)
    assert [r.frame for r in results] == list(range(count_frames(dev_clip)))
    times = [r.t for r in results]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    assert times[1] == pytest.approx(0.04, abs=1e-3)
    ids = {f.id for r in results for f in r.faces}
    assert ids == {1}
    assert sum(len(r.faces) == 1 for r in results) >= 0.9 * len(results)
    # the model saw 5 lower-half crops per face and 0.2 s of mel, one batch per frame
    assert scorer.calls and all(w[1:] == (5, 48, 96, 3) and m == (80, 16) for w, m in scorer.calls)


def test_a_model_that_reads_lips_gets_the_points_of_each_window(config, dev_clip):
    results, scorer = _run(config, dev_clip, scorer=LipsScorer())
    assert len(scorer.lips) == len(scorer.calls) > 0.8 * len(results)  # FaceMesh kept up with the tracked face
    lips = np.concatenate(scorer.lips)
    assert lips.shape[1:] == (5, 42, 2) and lips.dtype == np.float32 and np.isfinite(lips).all()
    opening = lips[:, :, 25, 1] - lips[:, :, 35, 1]  # inner lower lip (14) below inner upper lip (13)
    assert (opening > -0.01).all() and opening.max() > 0.1  # a talking mouth, measured in eye distances
    nose, upper_lip, lower_lip, chin = (lips[:, :, i, 1] for i in (41, 15, 5, 40))  # y grows downwards
    assert (0 < nose).all() and (nose < upper_lip).all() and (lower_lip < chin).all()  # a face the right way up


def test_scores_wait_for_a_full_window_and_the_speaker_needs_speech(config, dev_clip):
    results, _ = _run(config, dev_clip, scorer=SyncedScorer())
    first_scored = next(i for i, r in enumerate(results) if r.faces and r.faces[0].score is not None)
    assert first_scored >= config.tracker.min_hits - 1 + config.window.frames - 1
    assert all(r.faces[0].score is None for r in results[:first_scored] if r.faces)
    voiced = [r for r in results[first_scored:] if r.speech and r.faces]
    assert len(voiced) > len(results) // 2  # a talking-head clip is mostly speech
    # a face in sync beats the threshold: the one face speaks whenever speech is heard (after the hold)
    hold = int(config.decision.min_hold_s * 25) + 1
    assert all(r.speaker == 1 for r in voiced[hold:] if r.speech)
    for r in results:
        assert all(f.speaking == (f.id == r.speaker) for f in r.faces)


def test_low_scores_make_nobody_the_speaker(config, dev_clip):
    results, _ = _run(config, dev_clip, scorer=ConstantScorer(0.1))
    assert all(r.speaker is None for r in results)


def test_a_face_rated_high_with_any_sound_is_not_the_speaker(config, dev_clip):
    """Scores are measured against the face's off-sync pairings (`decision.cohort_shifts`): a face the
    model rates 0.9 with every sound scores 0 and is never chosen; on raw cosines it would be."""
    results, _ = _run(config, dev_clip, scorer=ConstantScorer(0.9))
    scores = [f.raw_score for r in results for f in r.faces if f.raw_score is not None]
    assert scores and np.allclose(scores, 0.0, atol=1e-6)
    assert all(r.speaker is None for r in results)
    raw = dataclasses.replace(config, decision=dataclasses.replace(config.decision, cohort_shifts=None))
    results, _ = _run(raw, dev_clip, scorer=ConstantScorer(0.9))
    raw_scores = [f.raw_score for r in results for f in r.faces if f.raw_score is not None]
    assert len(raw_scores) > len(scores) and np.allclose(raw_scores, 0.9)  # raw: scored from the first window on
    assert any(r.speaker == 1 for r in results)


def test_stride_scores_every_nth_frame(config, dev_clip):
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, stride_frames=3))
    results, scorer = _run(config, dev_clip)
    scored = sum(any(f.raw_score is not None for f in r.faces) for r in results)
    assert 0 < scored <= len(scorer.calls) <= len(results) // 3 + 1  # the cohort may wait for past sound
    assert all(r.frame % 3 == 0 for r in results if any(f.raw_score is not None for f in r.faces))


def test_realtime_pace_replays_at_the_clip_speed(config, dev_clip):
    started = time.monotonic()
    results, _ = _run(config, dev_clip, pace="realtime")
    elapsed = time.monotonic() - started
    assert elapsed >= results[-1].t  # paced: never faster than the clip
    frames = [r.frame for r in results]
    assert frames == sorted(set(frames))  # in order; frames may only be dropped, never repeated
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in results)


def test_thirty_fps_clip_is_windowed_at_25_fps(config):
    clip = DEV_WILD / "w2l_input4_chaplin.mp4"
    if not clip.exists():
        pytest.skip("clip missing")
    results, scorer = _run(config, clip)
    assert len(results) == count_frames(clip)
    assert results[1].t == pytest.approx(1 / 30, abs=1e-3)
    assert scorer.calls


def test_audio_is_aligned_on_stream_start_times(config, shared_dir):
    """hamilton's video starts 0.85 s into the file and its audio at 0.01 s: ring sample 0 is at the first frame."""
    clip = shared_dir / "data" / "dev" / "multi" / "hamilton_two_faces_one_singer.mp4"
    source = FileSource(clip, None, "fast", config.video, config.audio)
    assert source.audio_offset_s == pytest.approx(0.852 - 0.008, abs=0.002)


def test_detection_every_nth_frame_keeps_the_faces_between(config, dev_clip, monkeypatch):
    calls = []
    detect = FaceDetector.detect
    monkeypatch.setattr(FaceDetector, "detect", lambda self, image: calls.append(1) or detect(self, image))
    config = dataclasses.replace(config, detector=dataclasses.replace(config.detector, every_frames=3))
    results, scorer = _run(config, dev_clip)
    assert [r.frame for r in results] == list(range(count_frames(dev_clip)))
    assert len(calls) == -(-len(results) // 3)  # frames 0, 3, 6, ...: the clip has no shot cut
    assert {f.id for r in results for f in r.faces} == {1}
    assert sum(len(r.faces) == 1 for r in results) >= 0.9 * len(results)
    assert len(scorer.calls) > 0.8 * len(results)  # the face is still scored at every frame


def test_a_shot_cut_gives_the_next_face_a_new_id_and_no_carried_score(config, tmp_path):
    """Two talking heads edited one after the other, the face in the same place: the second is
    another person, so it must not inherit the first one's id, crop window or smoothed score."""
    edited = tmp_path / "two_shots.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-t", "2", "-i", str(DEV_WILD / "pcavs_00067.mp4"),
                    "-t", "2", "-i", str(DEV_WILD / "pcavs_00098.mp4"), "-filter_complex",
                    "[0:v][0:a][1:v][1:a]concat=n=2:v=1:a=1[v][a]", "-map", "[v]", "-map", "[a]", str(edited)],
                   check=True)
    results, _ = _run(config, edited)
    first = {f.id for r in results[:50] for f in r.faces}
    second = {f.id for r in results[50:] for f in r.faces}
    assert first == {1} and second == {2}
    # the new face waits for min_hits and a whole window of its own before it is scored again
    scored = [i for i, r in enumerate(results) if i >= 50 and r.faces and r.faces[0].score is not None]
    assert scored[0] >= 50 + config.tracker.min_hits - 1 + config.window.frames - 1
    assert all(r.speaker in (None, 2) for r in results[50:])
    sparse = dataclasses.replace(config, detector=dataclasses.replace(config.detector, every_frames=25))
    results, _ = _run(sparse, edited)  # detecting once a second: the cut itself is detected
    assert {f.id for r in results[:50] for f in r.faces} == {1} and {f.id for r in results[50:] for f in r.faces} == {2}

    uncut = dataclasses.replace(config, tracker=dataclasses.replace(config.tracker, cut_threshold=0.0))
    results, _ = _run(uncut, edited)
    assert {f.id for r in results for f in r.faces} == {1}  # what happened before: one id for two people
