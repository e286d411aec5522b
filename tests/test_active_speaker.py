"""The active-speaker models (LR-ASD, Light-ASD) as the engine runs them: known by name, their own
decision defaults, every score the model's on the trailing window with nothing after the frame,
and on real clips a talking face named and a silent crowd never."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import SHARED
from rtdiar.cli import main
from rtdiar.config import load_config
from rtdiar.engine import Diarizer
from rtdiar.errors import RtdiarError
from rtdiar.scorers.base import TrackWindow
from rtdiar.scorers.inference import load_scorer
from rtdiar.sources import FileSource

CROWD = SHARED / "data" / "dev" / "multi" / "crowd_nobody_speaks.mp4"


def asd_config(name: str = "lrasd-ava", **overrides):
    return load_config(overrides={"model.weights": name, "model.device": "cpu", **overrides})


def test_a_known_name_loads_its_family_with_its_own_decision_defaults(asd_weights_dir, one_thread):
    config = asd_config()
    scorer = load_scorer(config)
    assert scorer.family == "asd" and scorer.model.arch == "lrasd"
    assert scorer.needs.audio == "mfcc" and scorer.needs.crop(np.zeros((360, 640, 3), np.uint8),
                                                              np.array([100.0, 50.0, 200.0, 180.0])).shape == (112, 112)
    pair = load_config(overrides={"model.weights": "rtdiar-pair"})
    assert config.decision.threshold == config.asd.decision["threshold"] != pair.decision.threshold
    assert config.decision.cohort_shifts is None  # asd.decision laid over
    assert asd_config(**{"decision.threshold": 1.5}).decision.threshold == 1.5  # the user's flag still wins
    assert pair.decision.threshold == 0.03  # the sync experts keep theirs
    assert scorer.delay == 9 and load_scorer(asd_config("lightasd-ava")).delay == 6  # exact: all they see ahead


def test_bad_settings_are_one_line(asd_weights_dir, capsys):
    with pytest.raises(RtdiarError, match="asd.delay_frames"):
        asd_config(**{"asd.delay_frames": -1})
    with pytest.raises(RtdiarError, match="0 .. 9"):
        load_scorer(asd_config(**{"asd.delay_frames": 12}))
    with pytest.raises(RtdiarError, match="asd.lookahead_frames"):
        asd_config(**{"asd.lookahead_frames": 25})
    assert main(["evaluate", "--weights", "lrasd-ava"]) == 2
    assert "`rtdiar bench` measures it" in capsys.readouterr().err


@pytest.mark.parametrize("delay, runtime", [(None, "auto"), (2, "auto"), (None, "torch")])
def test_each_score_is_the_models_on_the_trailing_window_with_nothing_after_the_frame(asd_weights_dir, one_thread,
                                                                                      delay, runtime):
    """Streamed frame by frame, the score at step t is the network's, offline, on the frames and sound
    up to t alone, read at frame t - delay of a `window_frames` window; each frame of the window embedded
    once, when its `delay` later frames had come (the frames after them zero-padded). On the CPU `auto`
    runs the sound front end and back end in ONNX Runtime; the offline reference is torch."""
    window = 6
    scorer = load_scorer(asd_config(**{"asd.window_frames": window, "asd.delay_frames": delay, "model.runtime": runtime}))
    assert scorer.runtime == ("onnx" if runtime == "auto" else "torch")
    model, d = scorer.model, scorer.delay
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (18, 112, 112), dtype=np.uint8)
    mfcc = rng.normal(0.0, 5.0, (4 * len(frames), 13)).astype(np.float32)
    with torch.inference_mode():  # each frame as embedded when its `delay` later frames had come
        embedded = [model.visual_frontend(torch.from_numpy(frames[None, :frame + d + 1]))[0, frame]
                    for frame in range(len(frames) - d)]
    rows_kept = 4 * scorer.needs.audio_frames
    scored = 0
    for step in range(len(frames)):
        audio = mfcc[max(0, 4 * step + 4 - rows_kept):4 * step + 4]
        got = scorer.score_frame(step, [TrackWindow(7, frames[step:step + 1])], audio).raw
        if step < d:
            assert got == {}  # no frame has all its `delay` later frames yet
            continue
        length = min(window, step - d + 1)
        with torch.inference_mode():
            faces = torch.stack(embedded[step - d - length + 1:step - d + 1])
            sound = model.audio_frontend(torch.from_numpy(audio[None]))[0]
            sound = sound[len(sound) - d - length:len(sound) - d]
            want = model.speaking_logits(sound[None], faces[None])[0, -1].item()
        assert got[7] == pytest.approx(want, abs=2e-3)
        scored += 1
    assert scored == len(frames) - d


def _run(config, clip) -> list:
    source = FileSource(clip, None, "fast", config.video, config.audio)
    return list(Diarizer(config, load_scorer(config)).run(source))


@pytest.mark.parametrize("name", ["lrasd-ava", "lightasd-ava"])
def test_a_talking_face_is_named_from_its_first_frames(asd_weights_dir, one_thread, dev_clip, name):
    """Each frame goes out once the model has seen the later frames its judgement needs, with the
    score of that very frame: every frame, in order, scored from the track's first."""
    results = _run(asd_config(name), dev_clip)
    assert [result.frame for result in results] == list(range(len(results)))
    ids = {face.id for result in results for face in result.faces}
    assert len(ids) == 1
    first_scored = next(i for i, result in enumerate(results) if result.faces and result.faces[0].score is not None)
    assert first_scored <= 3  # the track is confirmed at its third frame, and scored there
    voiced = [result for result in results[first_scored:] if result.speech]
    named = sum(result.speaker in ids for result in voiced)
    assert len(voiced) > 50 and named / len(voiced) > 0.75


def test_a_silent_crowd_is_never_named(asd_weights_dir, one_thread, shared_dir):
    config = asd_config()
    config = dataclasses.replace(config, decision=dataclasses.replace(config.decision, vad_threshold=0.0))
    results = _run(config, CROWD)  # the VAD gate opened: the model alone must keep everyone out
    assert max(len(result.faces) for result in results) >= 2
    assert all(result.speaker is None for result in results)


def test_frames_go_in_once_per_25_fps_step_whatever_the_source_rate(asd_weights_dir, one_thread):
    """A 30 fps source gives some steps twice (the first is kept), a 20 fps one skips steps (the frame
    after the gap stands in): each 25 fps step reaches the face encoder exactly once."""
    scorer = load_scorer(asd_config(**{"asd.window_frames": 4, "asd.delay_frames": 2}))
    pushed = []
    push = scorer.visual.push
    scorer.visual.push = lambda faces: pushed.append(sorted(faces)) or push(faces)
    crop = np.zeros((1, 112, 112), np.uint8)
    audio = np.zeros((4 * scorer.needs.audio_frames, 13), np.float32)
    for step in [0, 1, 1, 2, 4, 5, 5, 7]:
        scored = scorer.score_frame(step, [TrackWindow(3, crop)], audio).raw
    assert len(pushed) == 8 and all(ids == [3] for ids in pushed)  # steps 0 1 2 3 4 5 6 7
    assert 3 in scored
    # a gap longer than the window starts the track again: no score until its delay has passed
    assert scorer.score_frame(40, [TrackWindow(3, crop)], audio).raw == {} and len(pushed) == 9
