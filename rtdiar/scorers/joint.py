"""Two fused judgements on different front ends, weighed into one speaking logit.

`rtdiar-lrasd`'s sync head reads LR-ASD's front ends; `rtdiar-distilled`'s reads front ends it
learnt itself, from other targets. Their sync scores err on different windows (correlation 0.45 on
dev in-sync windows), so together they tell in sync from off sync better than either. One logistic
regression over the members' speaking logits and relative sync scores (those its recipe reads: the
shipped file, LR-ASD's logit and both sync scores), fitted on the members' dev pairings
(`rtdiar.lab.joint`), is the file's one tensor; the members' own files give everything else.

Each member streams as it does alone (`FusedScorer.features`). A member that judges a frame sooner
(the distilled network has no look-ahead; LR-ASD's face encoder waits 9 frames) has its features
held back until the slowest member's describe the same frame, as the fit paired them.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np
import torch

from rtdiar.scorers.base import FrameScores, TrackWindow
from rtdiar.scorers.fused import FusedScorer
from rtdiar.scorers.sync_head import MEMBERS, JointFusion


class JointScorer:
    """`Scorer` whose raw score per track is the joint fused logit."""

    family = "asd"

    def __init__(self, fusion: JointFusion, members: list[FusedScorer]) -> None:
        if len(members) != MEMBERS:
            raise ValueError(f"a joint judgement reads {MEMBERS} members, got {len(members)}")
        self.fusion, self.members = fusion.eval(), members
        self.runtime = members[0].runtime
        slowest = max(members, key=lambda member: member.needs.latency_frames)
        self.needs = dataclasses.replace(slowest.needs, audio_frames=max(m.needs.audio_frames for m in members))
        self._lags = [slowest.needs.latency_frames - m.needs.latency_frames for m in members]
        self._held: list[dict[int, deque]] = [{} for _ in members]  # per member, per track: (step, features)
        self.clip_windows = JointWindows(members, fusion)

    def forget(self, track_id: int) -> None:
        for member, held in zip(self.members, self._held):
            member.forget(track_id)
            held.pop(track_id, None)

    def score_frame(self, step: int, tracks: list[TrackWindow], audio: np.ndarray) -> FrameScores:
        parts = [self._held_back(held, step, member.features(step, tracks, audio), lag)
                 for member, held, lag in zip(self.members, self._held, self._lags)]
        ids = [tid for tid in parts[0] if all(tid in part for part in parts[1:])]
        if not ids:
            return FrameScores({})
        features = torch.tensor([[value for part in parts for value in part[tid]] for tid in ids])
        return FrameScores(dict(zip(ids, self.fusion.fused_logit(features).tolist())))

    @staticmethod
    def _held_back(held: dict[int, deque], step: int, features: dict[int, tuple[float, float]],
                   lag: int) -> dict[int, tuple[float, float]]:
        """Each track's features of step - `lag` (those computed then), keeping the newest `lag` steps'."""
        if not lag:
            return features
        out = {}
        for tid, value in features.items():
            kept = held.setdefault(tid, deque(maxlen=lag + 1))
            if kept and kept[-1][0] == step:
                kept.pop()  # the same step again (a 30 fps source): its newest features stand
            kept.append((step, value))
            due = [past for at, past in kept if at <= step - lag]  # skipped steps (a 20 fps source): the one before
            if due:
                out[tid] = due[-1]
        return out


class JointWindows:
    """`rtdiar.offset.ClipWindows` of the joint sync evidence: each member's window embeddings
    scaled by the square root of its sync weight and laid end to end, so that one dot product (and
    its relative score) is the weighted sum of the members' (the weights are not negative)."""

    asd_crops, needs_lips = True, False

    def __init__(self, members: list[FusedScorer], fusion: JointFusion) -> None:
        self.parts = [member.clip_windows for member in members]
        first = self.parts[0]
        if any((part.frames, part.cohort) != (first.frames, first.cohort) for part in self.parts):
            raise ValueError("the members must read windows of one length against one cohort")
        self.frames, self.mel_frames, self.cohort = first.frames, first.mel_frames, first.cohort
        self.scales = [float(max(w, 0.0)) ** 0.5 for w in fusion.weights[1:-1:2].tolist()]

    def starts(self, clip) -> np.ndarray:
        return self.parts[0].starts(clip)

    def faces(self, clip, starts: np.ndarray) -> np.ndarray:
        return np.concatenate([s * part.faces(clip, starts) for s, part in zip(self.scales, self.parts)], axis=1)

    def sounds(self, clip, wave: np.ndarray, grid: np.ndarray, shift: int) -> np.ndarray:
        return np.concatenate([s * part.sounds(clip, wave, grid, shift) for s, part in zip(self.scales, self.parts)],
                              axis=1)
