"""Scores measured against off-sync pairings: streaming (engine) and batch (evaluation) agree, the
cohort removes a face's own bias, and it never looks ahead."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rtdiar.cohort import OffSyncCohort, relative_scores
from rtdiar.config import load_config
from rtdiar.errors import RtdiarError

SHIFTS = range(5, 26)
D = 16


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _stream(faces: np.ndarray, audio: np.ndarray, lead: int) -> list[float | None]:
    """One track's faces from step `lead` on, with the sound from step 0, through the engine's cohort."""
    cohort = OffSyncCohort(SHIFTS)
    out = []
    for step, sound in enumerate(audio):
        scores = cohort.scores(step, sound, {1: faces[step - lead]} if step >= lead else {})
        if step >= lead:
            out.append(scores.get(1))
    return out


def test_the_engine_and_the_evaluation_score_a_track_alike():
    rng = np.random.default_rng(0)
    lead, n = SHIFTS[-1], 60
    audio = _unit(rng.normal(size=(lead + n, D)))
    faces = _unit(rng.normal(size=(n, D)))
    batch = relative_scores(faces, audio, np.arange(lead, lead + n), SHIFTS)
    np.testing.assert_allclose(_stream(faces, audio, lead), batch, atol=1e-6)


def test_a_new_track_is_scored_from_its_first_window_against_past_sound():
    rng = np.random.default_rng(1)
    audio = _unit(rng.normal(size=(40, D)))
    face = _unit(rng.normal(size=D))
    first = _stream(face[None], audio[:31], 30)[0]
    expected = face @ audio[30] - np.mean(audio[30 - np.array(SHIFTS)] @ face)
    assert first == pytest.approx(expected, abs=1e-6)


def test_no_score_before_any_past_sound():
    cohort = OffSyncCohort(SHIFTS)
    sound = np.ones(D) / np.sqrt(D)
    for step in range(SHIFTS.start):  # steps before the stream began hold nothing, not zeros
        assert cohort.scores(step, sound, {1: sound}) == {}
    assert cohort.scores(SHIFTS.start, sound, {1: sound}) == {1: pytest.approx(0.0, abs=1e-6)}


def test_a_face_that_matches_any_sound_loses_to_the_face_in_sync():
    """A face the model rates high with every sound (an open mouth) has the higher raw score, but
    only the face whose motion follows the sound scores above its off-sync pairings."""
    rng = np.random.default_rng(2)
    n, lead = 80, SHIFTS[-1]
    common = _unit(rng.normal(size=D))
    audio = _unit(3.0 * common + rng.normal(size=(lead + n, D)))  # every sound leans one way
    rows = np.arange(lead, lead + n)
    in_sync = _unit(audio[rows] + 0.5 * rng.normal(size=(n, D)))
    biased = _unit(6.0 * common + 0.5 * rng.normal(size=(n, D)))  # close to every sound, to none in particular
    raw_sync, raw_biased = (np.einsum("nd,nd->n", f, audio[rows]) for f in (in_sync, biased))
    assert raw_biased.mean() > raw_sync.mean()
    sync, bias = (relative_scores(f, audio, rows, SHIFTS) for f in (in_sync, biased))
    assert sync.mean() > 0.2
    assert abs(bias.mean()) < 0.05
    assert sync.mean() > bias.mean()


def test_scores_never_look_ahead():
    rng = np.random.default_rng(3)
    lead, n = SHIFTS[-1], 50
    audio = _unit(rng.normal(size=(lead + n, D)))
    faces = _unit(rng.normal(size=(n, D)))
    changed_audio, changed_faces = audio.copy(), faces.copy()
    changed_audio[lead + 30:] = _unit(rng.normal(size=(n - 30, D)))
    changed_faces[30:] = _unit(rng.normal(size=(n - 30, D)))
    rows = np.arange(lead, lead + n)
    before = relative_scores(faces, audio, rows, SHIFTS)
    after = relative_scores(changed_faces, changed_audio, rows, SHIFTS)
    np.testing.assert_array_equal(before[:30], after[:30])
    assert not np.allclose(before[30:], after[30:])


def test_a_forgotten_track_starts_again_like_a_new_one():
    rng = np.random.default_rng(4)
    audio = _unit(rng.normal(size=(60, D)))
    faces = _unit(rng.normal(size=(60, D)))
    cohort = OffSyncCohort(SHIFTS)
    for step in range(50):
        cohort.scores(step, audio[step], {7: faces[step]})
    cohort.forget(7)
    score = cohort.scores(50, audio[50], {7: faces[50]})[7]
    assert score == pytest.approx(faces[50] @ audio[50] - np.mean(audio[50 - np.array(SHIFTS)] @ faces[50]), abs=1e-6)


def test_the_cohort_is_configured_or_switched_off(tmp_path):
    assert load_config().decision.cohort() == range(5, 26)
    (tmp_path / "raw.yaml").write_text("decision:\n  cohort_shifts: null\n")
    assert load_config(tmp_path / "raw.yaml").decision.cohort() is None
    for bad in ([0, 5], [6, 5], [5], "5-25", [5.0, 25]):
        with pytest.raises(RtdiarError, match="decision.cohort_shifts"):
            dataclasses.replace(load_config().decision, cohort_shifts=bad)
