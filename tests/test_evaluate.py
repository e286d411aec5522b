"""`rtdiar evaluate`: the metrics on inputs whose answer is known, and one small run on real clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rtdiar.scorers.baseline import EnergyBaseline
from rtdiar.lab.dataset import PreparedClip
from rtdiar.errors import RtdiarError
from rtdiar.lab.evaluate import (APPLIED_SHIFTS, OFFSET_SEARCH, ClipEmbeddings, embed_clip, evaluate_model,
                             format_report, hamilton_figure, offset_figure, roc_auc,
                             two_faces_figure, window_auc_figure)
from rtdiar.scorers.inference import SyncScorer
from rtdiar.offset import clip_windows, shift_mel
from rtdiar.types import FaceResult, FrameResult

GRID_PAD = 2 * OFFSET_SEARCH  # room for grid frames before 0 in the time-code embeddings


def test_auc_of_separated_scores_is_one_and_of_identical_scores_one_half():
    assert roc_auc(np.array([0.8, 0.9, 0.7]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.8, 0.9, 0.7])) == 0.0
    assert roc_auc(np.full(4, 0.3), np.full(7, 0.3)) == 0.5
    assert roc_auc(np.array([0.5]), np.zeros(0)) is None


def test_mel_shift_moves_content_16_mel_frames_per_5_video_frames_with_silence():
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))
    later = shift_mel(mel, 5)
    np.testing.assert_array_equal(later[:, 16:], mel[:, :-16])
    assert np.all(later[:, :16] == -4.0)
    earlier = shift_mel(mel, -10)
    np.testing.assert_array_equal(earlier[:, :-32], mel[:, 32:])
    assert np.all(earlier[:, -32:] == -4.0)
    np.testing.assert_array_equal(shift_mel(mel, 0), mel)
    with pytest.raises(ValueError):
        shift_mel(mel, 3)  # 9.6 mel frames


class TimeCodeScorer:
    """A scorer that is right by construction: a face window embeds the grid frame painted in its
    crops, an audio window the grid frame its sound came from (mel frame m holds the value m), and
    silence embeds as zero."""

    def __init__(self, frames: int) -> None:
        self.dim = frames + 2 * GRID_PAD

    needs_lips = False  # reads crops only, as the scorer of a pixel model

    def face_embeddings(self, windows: np.ndarray, lips: np.ndarray | None = None) -> np.ndarray:
        return np.eye(self.dim, dtype=np.float32)[windows[:, 0, 0, 0, 0].astype(int) + GRID_PAD]

    def audio_embeddings(self, mels: np.ndarray) -> np.ndarray:
        first = mels[:, 0, 0]
        heard = first >= 0
        out = np.zeros((len(mels), self.dim), dtype=np.float32)
        out[np.flatnonzero(heard), np.round(first[heard] / 3.2).astype(int) + GRID_PAD] = 1.0
        return out


def test_offset_and_window_auc_of_a_perfect_scorer(config):
    frames = 60
    crops = np.repeat(np.arange(frames, dtype=np.uint8), 48 * 96 * 3).reshape(frames, 48, 96, 3)
    mel = np.tile(np.arange(frames * 3.2 + 20, dtype=np.float32), (80, 1))
    clip = PreparedClip("wild/timecode", crops, np.ones(frames, bool), 0, mel)
    silence = np.zeros(int(frames / 25 * 16000), np.float32)
    embedded = embed_clip(clip, silence, clip_windows(TimeCodeScorer(frames), config), config)
    np.testing.assert_array_equal(embedded.scores(None), 1.0)  # each window with its own sound

    offsets = offset_figure([embedded], config)
    assert offsets["per_clip"]["wild/timecode"] == list(APPLIED_SHIFTS)  # audio delayed by d is found at +d
    assert offsets["accuracy"] == 1.0 and offsets["relative_accuracy"] == 1.0
    assert offsets["reliable_cases"] == len(APPLIED_SHIFTS) and offsets["reliable_accuracy"] == 1.0
    auc = window_auc_figure([embedded])
    assert auc["all"] == 1.0
    assert auc["voiced"] is None  # no speech in silence: nothing to measure
    assert auc["ceiling"] == 0.5  # nor could any detector: silence in sync sounds like silence off sync
    assert window_auc_figure([embedded], config.decision.cohort())["all"] == 1.0  # and against off-sync pairings


def test_a_clip_recorded_out_of_sync_misses_every_offset_but_follows_every_shift(config):
    """Its sound is 3 frames late as recorded: each estimate reads 3 more than the shift applied."""
    frames = 60
    crops = np.repeat(np.arange(3, frames + 3, dtype=np.uint8), 48 * 96 * 3).reshape(frames, 48, 96, 3)
    mel = np.tile(np.arange(frames * 3.2 + 20, dtype=np.float32), (80, 1))
    late = embed_clip(PreparedClip("wild/late", crops, np.ones(frames, bool), 0, mel),
                      np.zeros(int(frames / 25 * 16000), np.float32), clip_windows(TimeCodeScorer(frames), config), config)
    offsets = offset_figure([late], config)
    assert offsets["per_clip"]["wild/late"] == [shift + 3 for shift in APPLIED_SHIFTS]
    assert offsets["accuracy"] == 0.0
    assert offsets["relative_accuracy"] == 1.0 and offsets["relative_cases"] == len(APPLIED_SHIFTS) - 1


def fake_clip(name: str, face: np.ndarray, voice: np.ndarray, windows: int = 40) -> ClipEmbeddings:
    """A clip whose every face window embeds as `face` and every audio window as `voice`, all voiced."""
    rows = windows + 2 * OFFSET_SEARCH
    return ClipEmbeddings(name, np.arange(windows), np.tile(face, (windows, 1)),
                          {shift: np.tile(voice, (rows, 1)) for shift in APPLIED_SHIFTS},
                          np.ones(windows, bool), np.ones((windows, 6), bool), np.ones((windows, 6), bool), 100.0, 1.0)


def test_the_ceiling_guesses_only_between_silent_pairings():
    """Half the windows are silent in sync and every off-sync sound is silent: a perfect detector puts
    the voiced windows first and can only guess among the rest, 0.5 * 1 + 0.5 * 0.5; with speech
    everywhere it makes no mistake, whatever the model scores."""
    e1 = np.eye(2, dtype=np.float32)[0]
    half = fake_clip("half", e1, e1)
    half.voiced[::2] = False
    half.voiced_off[:] = False
    assert window_auc_figure([half])["ceiling"] == 0.75
    heard = fake_clip("heard", e1, e1)
    figure = window_auc_figure([heard])
    assert figure["ceiling"] == 1.0 and figure["all"] == 0.5  # the flat model ties everything


def test_off_sync_sounds_are_judged_speech_by_their_own_time(config, dev_clip):
    """The VAD reads each pairing's own sound: with a real clip's speech only after 2 s, a window there
    is voiced, and a window's sound 15 frames later is voiced where that lands in the speech."""
    from rtdiar.lab.evaluate import speech_windows
    from rtdiar.sources import FileSource

    wave = FileSource(dev_clip, None, "fast", config.video, config.audio).aligned_audio()[:4 * 16000].copy()
    wave[:2 * 16000] = 0.0
    clip = PreparedClip("wild/half_voiced", np.zeros((100, 48, 96, 3), np.uint8), np.ones(100, bool), 0,
                        np.full((80, 330), -4.0, np.float32))
    starts = np.array([[10, 25], [60, 75], [45, 60]])  # own sound, then 15 frames later; speech from 2.2 s
    np.testing.assert_array_equal(speech_windows(clip, starts, wave, config, config.window.mel_frames),
                                  [[False, False], [True, True], [False, True]])


def test_readings_without_evidence_are_counted_as_unreliable(config):
    """Every face window matches every sound alike: each reading is a flat curve's tie, called in
    sync (right only where no shift was applied), and the tool vouches for none of them."""
    e1 = np.eye(2, dtype=np.float32)[0]
    offsets = offset_figure([fake_clip("flat", e1, e1)], config)
    assert offsets["per_clip"]["flat"] == [0] * len(APPLIED_SHIFTS)
    assert offsets["reliable_cases"] == 0 and offsets["reliable_accuracy"] is None
    assert offsets["unreliable_right"] == 1


def test_two_faces_counts_the_voice_owner_first_or_not():
    e1, e2 = np.eye(2, dtype=np.float32)
    owners_win = two_faces_figure([fake_clip("x", e1, e1), fake_clip("y", e2, e2)], smooth_windows=25)
    assert owners_win["accuracy"] == 1.0 and owners_win["pairs_won"] == 1.0
    assert owners_win["pairs"] == 2
    assert owners_win["time_points"] == 2 * (40 - 25 + 1)  # only times with 1 s of history count
    others_win = two_faces_figure([fake_clip("x", e2, e1), fake_clip("y", e1, e2)], smooth_windows=25)
    assert others_win["accuracy"] == 0.0 and others_win["pairs_won"] == 0.0


def test_two_faces_against_off_sync_pairings_puts_the_face_in_sync_first():
    """Face B matches every sound (a mouth the model always likes) and wins on raw cosines; measured
    against their off-sync pairings, as the engine scores, the face that follows the voice wins."""
    rng = np.random.default_rng(0)
    cohort, windows, dim = range(5, 26), 60, 16
    margin = OFFSET_SEARCH + cohort[-1]
    common = np.eye(dim)[0]

    def unit(rows):
        return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)

    def clip(name, faces, voice):
        return ClipEmbeddings(name, np.arange(windows), faces, {shift: voice for shift in APPLIED_SHIFTS},
                              np.ones(windows, bool), np.ones((windows, 6), bool), np.ones((windows, 6), bool),
                              100.0, 1.0, margin)

    voices = [unit(3.0 * common + rng.normal(size=(windows + margin + OFFSET_SEARCH, dim))) for _ in range(2)]
    in_sync = [unit(voice[margin:margin + windows] + 0.5 * rng.normal(size=(windows, dim))) for voice in voices]
    always_liked = unit(6.0 * common + 0.5 * rng.normal(size=(windows, dim)))
    clips = [clip("a", in_sync[0], voices[0]), clip("b", always_liked, voices[1])]
    raw = two_faces_figure(clips, smooth_windows=25)
    relative = two_faces_figure(clips, smooth_windows=25, cohort=cohort)
    assert raw["per_clip"]["a"] < 0.5  # a's voice: b's face outscores a's own on raw cosines
    assert relative["per_clip"]["a"] == 1.0


def test_two_faces_skips_unvoiced_times():
    e1, e2 = np.eye(2, dtype=np.float32)
    x, y = fake_clip("x", e1, e1), fake_clip("y", e2, e2)
    x.voiced[:30] = False
    figure = two_faces_figure([x, y], smooth_windows=25)
    assert figure["time_points"] == (40 - 30) + (40 - 25 + 1)


def test_hamilton_figure_finds_the_performer_by_shot_and_size_not_by_id():
    big, small = (100.0, 50.0, 300.0, 250.0), (10.0, 10.0, 40.0, 40.0)
    results = [
        FrameResult(5, 0.2, [FaceResult(1, big, 0.8), FaceResult(2, small, 0.3)], speaker=1, speech=True),
        FrameResult(100, 3.3, [FaceResult(7, big, 0.2), FaceResult(8, small, 0.6)], speaker=8, speech=True),
        FrameResult(50, 1.7, [FaceResult(2, small, 0.7)], speaker=2, speech=True),  # the audience shot
        FrameResult(101, 3.4, [FaceResult(7, big, 0.9)], speaker=None, speech=False),  # silence: not counted
    ]
    figure = hamilton_figure(results)
    assert figure["voiced_frames_performer_shown"] == 2 and figure["voiced_frames_performer_hidden"] == 1
    assert figure["performer_chosen"] == 0.5 and figure["performer_top_score"] == 0.5
    assert figure["audience_chosen"] == 1.0


def trim(source: Path, seconds: float, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-t", str(seconds), "-i", str(source), "-c:v", "libx264",
                    "-preset", "ultrafast", "-c:a", "aac", str(out)], check=True)


@pytest.fixture(scope="module")
def small_run(shared_dir: Path, tmp_path_factory) -> tuple[dict, Path]:
    """`evaluate_model` with the baseline on two trimmed dev clips and the start of hamilton."""
    from rtdiar.config import load_config

    root = tmp_path_factory.mktemp("dev")
    dev = shared_dir / "data" / "dev"
    trim(dev / "wild" / "pcavs_00067.mp4", 2.4, root / "wild" / "pcavs_00067.mp4")
    trim(dev / "wild" / "grid_lbax4n.mpg", 2.4, root / "wild" / "grid_lbax4n.mp4")
    trim(dev / "multi" / "hamilton_two_faces_one_singer.mp4", 3.6, root / "multi" / "hamilton_two_faces_one_singer.mp4")
    scorer = SyncScorer(EnergyBaseline(), torch.device("cpu"))
    return evaluate_model(load_config(), scorer, data_dir=root, cache_dir=root / "cache"), root


def test_small_run_gives_every_figure(small_run):
    figures, root = small_run
    assert figures["clips"] == 2
    assert len(list((root / "cache").rglob("*.npz"))) == 2  # prepared once, into the cache asked for
    auc = figures["window_auc"]
    assert set(auc["per_clip"]) == {"wild/pcavs_00067", "wild/grid_lbax4n"}
    assert 0.0 <= auc["all"] <= 1.0 and auc["positives"] > 0 and auc["negatives"] > auc["positives"]
    assert figures["offset"]["cases"] == 2 * len(APPLIED_SHIFTS)
    assert 0.0 <= figures["offset"]["accuracy"] <= 1.0
    assert figures["two_faces"]["pairs"] == 2 and 0.0 <= figures["two_faces"]["accuracy"] <= 1.0
    hamilton = figures["hamilton"]
    assert hamilton["voiced_frames_performer_shown"] > 0
    assert 0.0 <= hamilton["performer_chosen"] <= 1.0 and 0.0 <= hamilton["performer_top_score"] <= 1.0
    assert figures["crowd"] is None  # not in this data folder
    assert 100 < figures["face"]["median_px"] < 400 and figures["face"]["tracked"] > 0.9  # talking heads, face throughout


def test_report_shows_each_figure_with_its_target(small_run):
    report = format_report(small_run[0])
    for line_start, target in (("window AUC", ">= 0.95"), ("clip offset", ">= 95 %"),
                               ("two faces one voice", ">= 95 %"), ("hamilton", ">= 90 %")):
        line = next(line for line in report.splitlines() if line.strip().startswith(line_start))
        assert target in line
    assert "crowd" not in report


def test_a_frame_scale_measures_the_same_clips_with_smaller_faces(small_run, config):
    """`rtdiar evaluate --scale 0.5`: the single-face figures on faces half as tall, cached apart."""
    from rtdiar.lab.dataset import cache_path, find_clips

    figures, root = small_run
    scorer = SyncScorer(EnergyBaseline(), torch.device("cpu"))
    half = evaluate_model(config, scorer, data_dir=root, cache_dir=root / "cache", scale=0.5)
    assert half["clips"] == 2 and half["frame_scale"] == 0.5
    for name, full in figures["face"]["per_clip"].items():
        assert abs(half["face"]["per_clip"][name]["px"] / full["px"] - 0.5) < 0.05
    for clip in find_clips([root / "wild"]):
        assert cache_path(clip, root / "cache", config, 0.5).exists() and cache_path(clip, root / "cache", config).exists()
    assert half["hamilton"] is None and half["window_auc"]["positives"] > 0
    assert "shrunk to 0.5x" in format_report(half).splitlines()[0]
    with pytest.raises(RtdiarError, match="frame scale"):
        evaluate_model(config, scorer, data_dir=root, scale=1.5)


def test_missing_data_folder_is_a_one_line_error(config, tmp_path):
    with pytest.raises(RtdiarError) as error:
        evaluate_model(config, SyncScorer(EnergyBaseline(), torch.device("cpu")), data_dir=tmp_path / "nowhere")
    assert "nowhere" in str(error.value) and "\n" not in str(error.value)


def test_offset_figure_sees_what_the_offset_tool_sees(small_run, config):
    """The figure's in-sync similarities are the offset tool's own, window for window and shift for shift."""
    from rtdiar.offset import window_similarities

    scorer = SyncScorer(EnergyBaseline(), torch.device("cpu"))
    clip = PreparedClip.load(next((small_run[1] / "cache").rglob("pcavs_00067.npz")))
    windows = clip_windows(scorer, config)
    embedded = embed_clip(clip, np.zeros(16000, np.float32), windows, config)
    tool = window_similarities(clip, windows, OFFSET_SEARCH, None)
    np.testing.assert_allclose(embedded.similarities(0), tool, atol=1e-6)


def test_equal_error_threshold_splits_the_two_score_sets():
    from rtdiar.lab.evaluate import equal_error_threshold

    threshold, error = equal_error_threshold(np.array([0.6, 0.7, 0.8, 0.9]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert 0.4 <= threshold <= 0.6 and error == 0.0
    threshold, error = equal_error_threshold(np.array([0.3, 0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.4, 0.9]))
    assert 0.0 < error < 0.5


def test_held_out_measures_only_a_recipes_validation_clips_with_its_weights(small_run, tmp_path):
    """`rtdiar evaluate --held-out RECIPE`: a k-fold fold's figures, on the clips it never trained on."""
    import json

    from rtdiar.cli import main
    from rtdiar.config import PROJECT_ROOT

    root = small_run[1]
    recipe = tmp_path / "fold.yaml"
    recipe.write_text(f"out: {PROJECT_ROOT / 'weights' / 'rtdiar_syncnet.safetensors'}\n"
                      f"data:\n  validation: [{root / 'wild' / 'grid_lbax4n.mp4'}]\n")
    out = tmp_path / "figures.json"
    assert main(["evaluate", "--held-out", str(recipe), "--data", str(root), "--cache", str(root / "cache"),
                 "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["arch"] == "compact_pair" and figures["clips"] == 1
    assert set(figures["window_auc"]["per_clip"]) == {"wild/grid_lbax4n"}
