"""Causal smoothing and the speaker decision rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rtdiar.decision import CausalSmoother, SpeakerDecision


def test_moving_average_of_the_last_n_windows():
    smoother = CausalSmoother(3)
    assert smoother.value(1) is None
    outputs = [smoother.add(1, s) for s in (0.0, 0.3, 0.6, 0.9)]
    assert outputs == pytest.approx([0.0, 0.15, 0.3, 0.6])
    assert smoother.value(1) == pytest.approx(0.6)


def test_smoothing_never_looks_ahead():
    """Changing future scores must not change any output already produced."""
    rng = np.random.default_rng(0)
    scores = rng.random(40)
    changed = scores.copy()
    changed[25:] = rng.random(15) * 10.0
    first, second = CausalSmoother(5), CausalSmoother(5)
    out_a = [first.add(7, s) for s in scores]
    out_b = [second.add(7, s) for s in changed]
    assert out_a[:25] == out_b[:25]
    assert out_a[25] != out_b[25]


def test_tracks_are_smoothed_independently_and_forgotten():
    smoother = CausalSmoother(2)
    smoother.add(1, 1.0)
    smoother.add(2, 0.0)
    assert smoother.value(1) == 1.0 and smoother.value(2) == 0.0
    smoother.forget(1)
    assert smoother.value(1) is None


def _decide(cfg, steps, fps=25.0):
    """Run the decision over (scores, speech) steps at `fps`; return the speaker per step."""
    decision = SpeakerDecision(cfg)
    return [decision.update(i / fps, scores, speech) for i, (scores, speech) in enumerate(steps)]


@pytest.fixture
def cfg(config):
    return dataclasses.replace(config.decision, threshold=0.5, hysteresis=0.1, switch_margin=0.05,
                               min_hold_s=0.2, vad_hangover_s=0.1)


def test_speaker_is_the_best_face_above_threshold_when_speech(cfg):
    out = _decide(cfg, [({1: 0.3, 2: 0.7}, True)] * 3)
    assert out == [2, 2, 2]


def test_nobody_speaks_without_speech_or_below_threshold(cfg):
    assert _decide(cfg, [({1: 0.9, 2: 0.2}, False)] * 10) == [None] * 10
    assert _decide(cfg, [({1: 0.45, 2: 0.2}, True)] * 10) == [None] * 10
    assert _decide(cfg, [({1: None, 2: None}, True)] * 5) == [None] * 5


def test_hysteresis_keeps_the_speaker_just_below_threshold(cfg):
    steps = [({1: 0.6}, True)] * 10 + [({1: 0.45}, True)] * 10 + [({1: 0.35}, True)] * 10
    out = _decide(cfg, steps)
    assert out[:20] == [1] * 20  # 0.45 is above threshold - hysteresis = 0.4
    assert out[-1] is None  # 0.35 is not


def test_minimum_hold_stops_flicker(cfg):
    """Scores that alternate every frame must not make the highlight alternate every frame."""
    steps = [({1: 0.8, 2: 0.6}, True) if i % 2 == 0 else ({1: 0.6, 2: 0.8}, True) for i in range(50)]
    out = _decide(cfg, steps)
    changes = sum(a != b for a, b in zip(out, out[1:]))
    assert changes <= 50 / 25 / cfg.min_hold_s  # at most one change per hold period


def test_challenger_needs_the_margin(cfg):
    steps = [({1: 0.7, 2: 0.5}, True)] * 10 + [({1: 0.7, 2: 0.73}, True)] * 10 + [({1: 0.7, 2: 0.8}, True)] * 10
    out = _decide(cfg, steps)
    assert out[19] == 1  # 0.73 does not beat 0.7 by 0.05
    assert out[-1] == 2


def test_speech_hangover_bridges_short_pauses(cfg):
    steps = [({1: 0.8}, True)] * 10 + [({1: 0.8}, False)] * 2 + [({1: 0.8}, True)] * 3 + [({1: 0.8}, False)] * 20
    out = _decide(cfg, steps)
    assert out[:15] == [1] * 15  # a 2-frame (80 ms) pause is under the 100 ms hangover
    assert out[-1] is None


def test_a_face_that_leaves_is_never_the_speaker(cfg):
    steps = [({1: 0.8, 2: 0.2}, True)] * 5 + [({2: 0.2}, True)]
    assert _decide(cfg, steps)[-1] is None
