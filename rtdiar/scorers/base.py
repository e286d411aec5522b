"""The one interface between the engine and a model: what a scorer needs per frame, what it returns.

The engine tracks faces, crops them the way the scorer asks, keeps the sound features it asks for,
and hands each scored frame over as `TrackWindow`s and one sound window. It never learns which
network runs: the SyncNet experts, Wav2Lip's file, the training-free baseline and the active-speaker
models (LR-ASD, Light-ASD) all answer `score_frame` with a raw score per track.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

FAMILIES = ("sync", "asd")  # sync: a lip-sync expert (cosine scale); asd: an active-speaker model (logit scale)
AUDIO_FEATURES = ("mel", "mfcc")  # Wav2Lip's 80-band mel at 80 Hz; 13 MFCCs at 100 Hz


@dataclass(frozen=True)
class ScorerNeeds:
    """What a scorer asks the engine to extract per tracked face and per frame.

    `crop(image_bgr, box) -> array` is how its face crop is cut (the engine calls it on every tracked
    face of every frame); `frames` crops per track reach `score_frame`, at 25 fps by timestamp,
    ending at the current frame; `audio` names the sound features and `audio_frames` how many 25 fps
    frames of them end at the current frame. A scorer whose judgement of a frame needs later frames
    states it in `latency_frames`: the engine holds each frame's result back until its score is in.
    """

    crop: Callable[[np.ndarray, np.ndarray], np.ndarray]
    frames: int
    audio: str
    audio_frames: int
    lips: bool = False
    latency_frames: int = 0  # a score computed at a frame describes the frame this many 25 fps frames earlier


@dataclass
class TrackWindow:
    """One track's inputs at a scored frame: its crops in time order (and lip points when asked)."""

    id: int
    crops: np.ndarray
    lips: np.ndarray | None = None


@dataclass
class FrameScores:
    """A scorer's answer for one frame: a raw score per track, and, where the model has them, the
    unit embeddings the off-sync cohort measures each score against (`rtdiar.cohort`)."""

    raw: dict[int, float]
    faces: dict[int, np.ndarray] = field(default_factory=dict)
    audio: np.ndarray | None = None


class Scorer(Protocol):
    """What the engine calls. `step` is the frame's index on the 25 fps grid."""

    needs: ScorerNeeds
    family: str

    def score_frame(self, step: int, tracks: list[TrackWindow], audio: np.ndarray) -> FrameScores: ...

    def forget(self, track_id: int) -> None: ...
