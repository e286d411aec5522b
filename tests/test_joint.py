"""rtdiar-joint: rtdiar-lrasd and rtdiar-distilled weighed into one judgement. Live, each score is the
fit's fusion of what each member gives alone, on the same frame; the recipe writes a file that runs."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DEV_WILD, streamed_clip

from rtdiar.config import load_config
from rtdiar.errors import RtdiarError
from rtdiar.lab import joint, sync_training
from rtdiar.scorers.base import ScorerNeeds, TrackWindow
from rtdiar.scorers.distilled import DistilledASD
from rtdiar.scorers.fused import FusedScorer, face_embeddings, sound_embeddings
from rtdiar.scorers.inference import load_scorer
from rtdiar.scorers.joint import JointScorer, JointWindows
from rtdiar.scorers.registry import judgement_line, resolve
from rtdiar.scorers.syncnet import build_model

COHORT = range(5, 26)
WEIGHTS = [0.5, 2.0, 0.2, 1.0, -0.3]  # LR-ASD's logit, its head's sync, the student's logit, its sync, bias


def _config(**overrides):
    return load_config(overrides={"model.device": "cpu", **overrides})


def _fusion():
    fusion = build_model("joint")
    fusion.weights.copy_(torch.tensor(WEIGHTS))
    return fusion


def _offline_features(scorer: FusedScorer, frames: np.ndarray, mfcc: np.ndarray) -> np.ndarray:
    """(n, 2) per frame from `first_scored` on: what the member's fit reads, over the frames it has embedded."""
    faces, sound = face_embeddings(scorer.model, frames), sound_embeddings(scorer.model, mfcc)
    embedded = len(frames) - scorer.delay
    return sync_training.pairing_features(scorer.model, scorer.head, faces[:embedded], sound[:embedded], COHORT,
                                          scorer.window_frames)


def test_each_live_score_is_the_fusion_of_both_members_on_the_same_frame(asd_weights_dir, one_thread):
    """Streamed frame by frame, the joint score of a frame is the fusion of LR-ASD's member's features
    (9 frames late) and the student's (no delay), both of that frame, as `rtdiar-joint`'s fit pairs them."""
    torch.manual_seed(0)
    config = _config()
    lrasd = load_scorer(_config(**{"model.weights": "rtdiar-lrasd"}))
    student = DistilledASD().eval()
    members = [lrasd, FusedScorer(student, student.head, torch.device("cpu"), config, COHORT, "onnx")]
    scorer = JointScorer(_fusion(), members)
    assert scorer.needs.latency_frames == 9 and scorer.needs.audio_frames == lrasd.needs.audio_frames
    live, frames, mfcc = streamed_clip(scorer)

    first = sync_training.first_scored(lrasd.head, COHORT, lrasd.window_frames)
    slow, fast = (_offline_features(member, frames, mfcc) for member in members)
    offline = np.concatenate([slow, fast[:len(slow)]], axis=1) @ np.array(WEIGHTS[:-1]) + WEIGHTS[-1]
    np.testing.assert_allclose([live[first + i + 9] for i in range(len(offline))], offline, atol=2e-3)


class _Member:
    """A member whose features name the step they were computed at (latency `lag`)."""

    def __init__(self, lag: int) -> None:
        self.needs = ScorerNeeds(crop=lambda image, box: image, frames=1, audio="mfcc", audio_frames=10 + lag,
                                 latency_frames=lag)
        self.runtime, self.clip_windows, self.forgotten = "torch", None, []

    def features(self, step, tracks, audio):
        return {track.id: (float(step), 0.0) for track in tracks}

    def forget(self, track_id):
        self.forgotten.append(track_id)


def test_a_sooner_member_is_held_back_to_the_frame_the_later_one_describes(monkeypatch):
    """Steps given twice (30 fps) or skipped (20 fps): the member without delay joins with its features
    from `lag` steps before (the newest before a gap); an ended track is forgotten by both."""
    monkeypatch.setattr("rtdiar.scorers.joint.JointWindows", lambda members, fusion: None)
    fusion = build_model("joint")
    fusion.weights.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))  # the joint score is the sooner member's step
    members = [_Member(3), _Member(0)]
    scorer = JointScorer(fusion, members)
    track = [TrackWindow(5, np.zeros((1, 2, 2), np.uint8))]
    got = {step: scorer.score_frame(step, track, np.zeros((4, 13), np.float32)).raw.get(5)
           for step in [0, 1, 2, 3, 4, 4, 5, 7, 8]}
    assert got == {0: None, 1: None, 2: None, 3: 0.0, 4: 1.0, 5: 2.0, 7: 4.0, 8: 5.0}
    scorer.forget(5)
    assert all(member.forgotten == [5] for member in members)


def test_the_offset_and_evaluation_windows_weigh_both_sync_scores():
    """One dot product of the joint window embeddings is the sum of the members' dot products, each
    times its sync weight (so `rtdiar offset` and `rtdiar evaluate` read the joint sync evidence)."""
    rng = np.random.default_rng(0)
    tables = [(rng.normal(size=(6, 4)), rng.normal(size=(6, 4))) for _ in range(2)]
    parts = [SimpleNamespace(frames=15, mel_frames=48, cohort=COHORT, starts=lambda clip: np.arange(6),
                             faces=lambda clip, starts, t=t: t[0], sounds=lambda clip, wave, grid, shift, t=t: t[1])
             for t in tables]
    windows = JointWindows([SimpleNamespace(clip_windows=part) for part in parts], _fusion())
    faces, sounds = windows.faces(None, None), windows.sounds(None, None, None, 0)
    want = WEIGHTS[1] * (tables[0][0] * tables[0][1]).sum(1) + WEIGHTS[3] * (tables[1][0] * tables[1][1]).sum(1)
    np.testing.assert_allclose((faces * sounds).sum(1), want)


def test_auto_takes_the_joint_judgement_once_lrasd_is_downloaded(asd_weights_dir, tmp_path, monkeypatch):
    """With LR-ASD downloaded `auto` is rtdiar-joint, read on the active-speaker decision's scale;
    without it, rtdiar-pair, and the start-up line says how to get the better one."""
    assert isinstance(load_scorer(_config(**{"model.weights": "auto"})), JointScorer)
    assert _config(**{"model.weights": "auto"}).decision.threshold == 0.0  # a logit
    assert "rtdiar-joint" in judgement_line("auto") and "download" not in judgement_line("auto")
    monkeypatch.setenv("RTDIAR_WEIGHTS_DIR", str(tmp_path))  # nothing downloaded here
    assert resolve("auto").name == "rtdiar_syncnet.safetensors"
    line = judgement_line("auto")
    assert line.startswith("rtdiar: judging with rtdiar-pair") and "rtdiar weights download lrasd-ava" in line
    with pytest.raises(RtdiarError, match="rtdiar weights download lrasd-ava") as error:
        load_scorer(_config(**{"model.weights": "rtdiar-joint"}))
    assert "\n" not in str(error.value)


def test_the_recipe_writes_a_file_that_judges(asd_weights_dir, one_thread, tmp_path, capsys):
    """Fitted on three dev clips (two faces talking on mute per sound), the file names its members,
    loads by path and scores a real clip."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("grid_brbk7n.mpg", "grid_lbax4n.mpg", "grid_sbwe5n.mpg"):
        os.symlink(DEV_WILD / name, dev / name)
    recipe = joint.load_recipe(None)
    recipe.dev, recipe.faces_per_sound = str(dev), 2
    out = tmp_path / "joint.safetensors"
    figures = joint.fit_joint(recipe, out)
    assert set(figures) == {"joint", "rtdiar-lrasd", "rtdiar-distilled"} and 0.0 <= figures["joint"] <= 1.0
    assert "joint" in capsys.readouterr().out
    with pytest.raises(RtdiarError, match="--overwrite"):
        joint.fit_joint(recipe, out)
    scorer = load_scorer(_config(**{"model.weights": str(out)}))
    assert isinstance(scorer, JointScorer) and scorer.fusion.weights.abs().sum() > 0
