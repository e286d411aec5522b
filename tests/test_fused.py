"""rtdiar-lrasd: LR-ASD's speaking score checked against the sound by rtdiar's sync head. Known by
name and loaded only with LR-ASD downloaded; live, each score is what the fusion was fitted on; the
head's recipe learns sync from in-sync clips alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import streamed_clip

from rtdiar.config import load_config
from rtdiar.errors import RtdiarError
from rtdiar.lab import sync_training
from rtdiar.lab.evaluate import roc_auc
from rtdiar.lab.frontends import FrontendClip
from rtdiar.scorers.distilled import DistilledASD
from rtdiar.scorers.fused import FusedScorer, face_embeddings, sound_embeddings
from rtdiar.scorers.inference import load_scorer
from rtdiar.scorers.sync_head import SyncHead


def fused_config(name: str = "rtdiar-lrasd", **overrides):
    return load_config(overrides={"model.weights": name, "model.device": "cpu", **overrides})


def test_it_needs_lrasd_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDIAR_WEIGHTS_DIR", str(tmp_path))  # nothing downloaded here
    with pytest.raises(RtdiarError, match="rtdiar weights download lrasd-ava") as error:
        load_scorer(fused_config())
    assert "\n" not in str(error.value)


def _network_and_head(name: str, request) -> tuple[torch.nn.Module, SyncHead]:
    """LR-ASD (downloaded) with a fresh head, or a fresh distilled network with its own head."""
    torch.manual_seed(0)
    if name == "distilled":
        net = DistilledASD().eval()
        return net, net.head
    request.getfixturevalue("asd_weights_dir")
    return load_scorer(fused_config()).model, SyncHead()


@pytest.mark.parametrize("name, runtime", [("lrasd", "torch"), ("lrasd", "onnx"), ("distilled", "torch"),
                                           ("distilled", "onnx")])
def test_each_live_score_is_what_the_fusion_was_fitted_on(one_thread, request, name, runtime):
    """Streamed frame by frame, the fused score of a face is the fusion of the speaking logit and the
    cohort-relative sync score that `sync_training.pairing_features` computes offline on the same
    face and sound: the fit and the live judgement read the same numbers. The distilled network is
    causal: no delay, and the offline pass over the whole clip gives the same. Live in ONNX Runtime
    (the CPU's default) or torch; offline in torch."""
    net, head = _network_and_head(name, request)
    head.fusion.copy_(torch.tensor([0.5, 2.0, -0.1]))
    scorer = FusedScorer(net, head.eval(), torch.device("cpu"), fused_config(), range(5, 26), runtime)
    assert scorer.runtime == runtime
    live, frames, mfcc = streamed_clip(scorer)

    faces, sound = face_embeddings(scorer.model, frames), sound_embeddings(scorer.model, mfcc)
    embedded = len(frames) - scorer.delay  # the face frames the stream has embedded by the last step
    features = sync_training.pairing_features(scorer.model, head, faces[:embedded], sound[:embedded],
                                              range(5, 26), scorer.window_frames)
    offline = features @ head.fusion[:2].numpy() + head.fusion[2].item()
    first = sync_training.first_scored(head, range(5, 26), scorer.window_frames)
    scored = [live[first + i + scorer.delay] for i in range(len(offline))]
    assert first == 39 and len(offline) == len(frames) - first - scorer.delay
    assert scorer.delay == (0 if name == "distilled" else 9)
    np.testing.assert_allclose(scored, offline, atol=2e-3)


def _synthetic_clips(count: int, frames: int, rng: np.random.Generator, mix: np.ndarray) -> list[FrontendClip]:
    """Clips whose face embeddings follow their sound's through a fixed map, frame by frame: in sync."""
    clips = []
    for i in range(count):
        sound = rng.normal(size=(frames, 128)).astype(np.float32)
        faces = (sound @ mix + 0.3 * rng.normal(size=(frames, 128))).astype(np.float32)
        clips.append(FrontendClip(f"synthetic/{i}", faces, np.ones(frames, bool), 0, sound, np.ones(frames, np.float32)))
    return clips


def test_the_recipe_learns_sync_from_in_sync_clips_alone():
    """Trained on in-sync clips with their own shifted sound as the negatives, the head tells a new
    clip's face in sync from the same face with its sound 5-15 frames off."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(128, 128)).astype(np.float32) / np.sqrt(128)
    recipe = sync_training.load_recipe(None)
    recipe.frames, recipe.width, recipe.epochs, recipe.clips_per_batch = 5, 32, 15, 8
    head = sync_training.train_head(recipe, _synthetic_clips(64, 40, rng, mix))
    positives, negatives = [], []
    for clip in _synthetic_clips(8, 40, rng, mix):
        with torch.inference_mode():
            faces = head.face.sequence(torch.from_numpy(clip.faces)[None])[0].numpy()
            sounds = head.sound.sequence(torch.from_numpy(clip.sound)[None])[0].numpy()
        for k in range(15, len(faces) - 15):
            positives.append(faces[k] @ sounds[k])
            negatives += [faces[k] @ sounds[k + shift] for shift in (-15, -10, -5, 5, 10, 15)]
    assert roc_auc(np.array(positives), np.array(negatives)) > 0.9
