"""rtdiar-distilled: the compact judgement LR-ASD teaches. It ships, streams with no delay, and its
recipe learns from the teacher's targets to name a face that talks *this* sound, not one talking on mute."""

from __future__ import annotations

import numpy as np
import torch

from rtdiar.lab import distillation
from rtdiar.lab.evaluate import roc_auc
from rtdiar.scorers.active_speaker import AUDIO_CONTEXT_FRAMES
from rtdiar.scorers.fused import FusedScorer
from rtdiar.scorers.inference import load_scorer
from rtdiar.config import load_config

FRAMES = 40


def _synthetic_clip(rng: np.random.Generator) -> distillation.TaughtClip:
    """A face whose mouth opens while it talks, its sound loud while it talks, and the teacher sure
    of both: talking in bursts of a few frames."""
    talking = np.repeat(rng.random(FRAMES // 4) < 0.5, 4)
    faces = np.clip(rng.normal(120, 20, (FRAMES, 112, 112)), 0, 255).astype(np.uint8)
    faces[talking, 70:90, 35:77] = 250  # the open mouth
    mfcc = rng.normal(0, 1, ((FRAMES + AUDIO_CONTEXT_FRAMES) * 4, 13)).astype(np.float32)
    mfcc[AUDIO_CONTEXT_FRAMES * 4:][np.repeat(talking, 4)] += 4.0
    return distillation.TaughtClip(faces, np.ones(FRAMES, bool), AUDIO_CONTEXT_FRAMES, mfcc,
                                   np.where(talking, 4.0, -4.0).astype(np.float32))


def test_the_shipped_judgement_streams_with_no_delay():
    scorer = load_scorer(load_config(overrides={"model.weights": "rtdiar-distilled", "model.device": "cpu"}))
    assert isinstance(scorer, FusedScorer) and scorer.family == "asd"
    assert scorer.delay == 0 and scorer.needs.latency_frames == 0
    assert scorer.runtime == "onnx"  # on the CPU: about 2-3x faster than eager torch (docs/BENCHMARKS.md)


def test_the_recipe_learns_to_name_the_face_that_talks_this_sound():
    """Taught on the teacher's targets with faces on other clips' sound as "not the speaker", the
    student scores a new face with its own sound above the same face talking over another sound."""
    rng = np.random.default_rng(0)
    recipe = distillation.load_recipe(distillation.DEFAULT_RECIPE)
    recipe.window_frames, recipe.clips_per_batch, recipe.epochs, recipe.learning_rate = 20, 16, 12, 0.01
    student = distillation.train_student(recipe, [_synthetic_clip(rng) for _ in range(48)])
    held_out = [_synthetic_clip(rng) for _ in range(8)]
    own, mute = [], []  # the logits of faces talking, with their own sound and with another's
    with torch.inference_mode():
        faces = torch.stack([torch.from_numpy(c.crops) for c in held_out])
        sound = student.audio_frontend(torch.stack([torch.from_numpy(c.mfcc) for c in held_out]))
        visual = student.visual_frontend(faces)
        audio = sound[:, AUDIO_CONTEXT_FRAMES:]
        matched = student.speaking_logits(audio, visual).numpy()
        moved = student.speaking_logits(audio, visual.roll(1, dims=0)).numpy()
    for i, clip in enumerate(held_out):  # row i of `moved`: clip i - 1's face on clip i's sound
        own += list(matched[i, 5:][clip.teacher[5:] > 0])
        mute += list(moved[i, 5:][held_out[i - 1].teacher[5:] > 0])
    assert roc_auc(np.array(own), np.array(mute)) > 0.8
