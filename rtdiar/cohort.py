"""Sync scores measured against off-sync pairings of the same face and the same sound.

A raw score mixes how well a face's lips follow the sound with how the model happens to rate that
face and that sound whatever they are paired with (a face with an open mouth, loud music). Both
biases show up in pairings known to be off sync, so each window's score is given relative to them,
as a cohort normalisation does in speaker verification:

    score = raw(face now, sound now) - ½ · (mean_k raw(face now, sound k frames ago)
                                            + mean_k raw(the same face k frames ago, sound now)),

k in `shifts`. Every pairing looks back only (causal). A new track's first windows have no past
face yet: their score subtracts the first mean alone, so a face is scored from its first window
on, as without the cohort. Embeddings are unit vectors, so a raw score is a dot product and the
cohort costs no model call: the engine keeps the last embeddings (`OffSyncCohort`), the evaluation
scores whole clips at once (`relative_scores`).
"""

from __future__ import annotations

import numpy as np


class _Recent:
    """The last `length` steps' vectors in a ring: a step's slot is `step % length`."""

    def __init__(self, length: int, dim: int) -> None:
        self.vectors = np.zeros((length, dim), np.float32)
        self.steps = np.full(length, np.iinfo(np.int64).min, np.int64)  # no step: every slot empty

    def put(self, step: int, vector: np.ndarray) -> None:
        slot = step % len(self.steps)
        self.vectors[slot], self.steps[slot] = vector, step

    def at(self, steps: np.ndarray) -> np.ndarray:
        """(m, dim): the vectors of those of `steps` still held."""
        slots = steps % len(self.steps)
        return self.vectors[slots[self.steps[slots] == steps]]


class OffSyncCohort:
    """Streaming `relative_scores`: the last embeddings of the sound and of every face track, by step.

    A step is a frame on the 25 fps window grid; steps a dropped frame skipped are simply missing
    from the cohort, which averages what it has.
    """

    def __init__(self, shifts: range) -> None:
        self.shifts = shifts
        self._back = np.arange(shifts.start, shifts.stop)
        self._audio: _Recent | None = None
        self._faces: dict[int, _Recent] = {}

    def scores(self, step: int, audio: np.ndarray, faces: dict[int, np.ndarray]) -> dict[int, float]:
        """The sound window of `step` and each track's face embedding at it (none, on a frame with no
        face window: the sound is still kept) -> each track's relative score. The embeddings are kept
        while a later window can pair with them. With no past sound at all (the stream's first
        windows) there is no score."""
        if self._audio is None:
            self._audio = _Recent(self.shifts.stop, len(audio))
        past_audio = self._audio.at(step - self._back)
        self._audio.put(step, audio)
        out = {}
        for track_id, face in faces.items():
            history = self._faces.setdefault(track_id, _Recent(self.shifts.stop, len(face)))
            past_faces = history.at(step - self._back)
            history.put(step, face)
            if len(past_audio):
                cohort = (past_audio @ face).mean()
                if len(past_faces):
                    cohort = 0.5 * (cohort + (past_faces @ audio).mean())
                out[track_id] = float(face @ audio - cohort)
        return out

    def forget(self, track_id: int) -> None:
        """Drop an ended track's embeddings."""
        self._faces.pop(track_id, None)


def relative_scores(faces: np.ndarray, audio: np.ndarray, rows: np.ndarray, shifts: range) -> np.ndarray:
    """(n, D) face windows in time order, paired with `audio[rows[i]]` ((m, D), one row a grid
    frame) -> (n,) relative scores. `rows[i] - shifts[-1]` must not be negative."""
    if np.any(rows - shifts.stop + 1 < 0):
        raise ValueError("the audio rows need the sound of every shift before them")
    paired = audio[rows]
    raw = np.einsum("nd,nd->n", faces, paired)
    past_audio = np.mean([np.einsum("nd,nd->n", faces, audio[rows - k]) for k in shifts], axis=0)
    past_faces, counts = np.zeros(len(faces)), np.zeros(len(faces))
    for k in shifts[:max(0, len(faces) - shifts.start)]:  # window i - k's face with window i's sound, where it exists
        past_faces[k:] += np.einsum("nd,nd->n", faces[:len(faces) - k], paired[k:])
        counts[k:] += 1
    has_faces = counts > 0
    cohort = past_audio.copy()  # the first windows: the past sound alone
    cohort[has_faces] = 0.5 * (past_audio[has_faces] + past_faces[has_faces] / counts[has_faces])
    return raw - cohort
