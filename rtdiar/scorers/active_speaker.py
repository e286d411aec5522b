"""LR-ASD and Light-ASD on a live stream: is each tracked face talking, frame by frame, causally.

Both networks read a whole face track at once: per-frame face and sound embeddings (their
front ends), then a temporal back end (a forward and a backward GRU) over the sequence. Live, each
frame's face embedding is computed once, when `asd.delay_frames` later frames have arrived
(`VisualStream`; by default all the frames the model sees ahead, so exactly as offline), and the back end re-runs at each scored frame over the last
`asd.window_frames` frames of every track, all tracks in one batch; the score is the newest
embedded frame's (or `asd.lookahead_frames` before it). So a score describes the frame
`delay_frames + lookahead_frames` before the newest one (`latency_frames`): the engine holds each
frame's result back that long, so a decision and the frame it is about go out together.
"""

from __future__ import annotations

import functools
from collections import deque

import numpy as np
import torch
from torch import nn

from rtdiar.config import Config
from rtdiar.scorers.asd import EMBED_DIM
from rtdiar.scorers.asd_stream import VisualStream
from rtdiar.scorers.base import FrameScores, ScorerNeeds, TrackWindow
from rtdiar.scorers.onnx_backend import OnnxStreamingNet
from rtdiar.scorers.sound_stream import SoundStream
from rtdiar.tracking import ASD_FACE_PX, crop_asd_face
from rtdiar.windows import MFCC_PER_FRAME

# The sound front ends read at most 6 frames each side (Light-ASD 5; rtdiar-distilled 6 back, none ahead): the
# window's sound starts this much earlier, and `SoundStream` keeps an embedding with this many real frames each side
AUDIO_CONTEXT_FRAMES = 8


class ActiveSpeakerScorer:
    """`Scorer` for the active-speaker models: a raw score per track is the model's speaking logit
    (> 0 reads as talking), with no sync embeddings for the off-sync cohort.

    `runtime` onnx runs the network in ONNX Runtime (`OnnxStreamingNet`), all but a face encoder that
    reads several frames (LR-ASD's, Light-ASD's), which streams in torch; `self.model` stays the torch
    network either way (the offline passes use it)."""

    family = "asd"

    def __init__(self, model: nn.Module, device: torch.device, config: Config, runtime: str = "torch") -> None:
        acfg = config.asd
        if device.type == "cpu":
            torch.set_num_threads(acfg.threads)
        self.model = model.to(device).eval()
        self.device = device
        self.runtime = runtime
        self.net = (OnnxStreamingNet(self.model, ASD_FACE_PX, torch.get_num_threads()) if runtime == "onnx"
                    else self.model)
        reach = model.visual_encoder.receptive_frames
        self.visual = VisualStream(self.net, reach if acfg.delay_frames is None else acfg.delay_frames, device)
        self.sound = SoundStream(self.net.audio_frontend, AUDIO_CONTEXT_FRAMES, device)
        self.window_frames, self.delay, self.lookahead = acfg.window_frames, self.visual.delay, acfg.lookahead_frames
        self.needs = ScorerNeeds(crop=functools.partial(crop_asd_face, scale=acfg.box_scale),
                                 frames=config.model.stride_frames, audio="mfcc",
                                 audio_frames=acfg.window_frames + self.delay + AUDIO_CONTEXT_FRAMES,
                                 latency_frames=self.delay + self.lookahead)
        self.kept_frames = self.window_frames  # face embeddings kept per track
        self._faces: dict[int, deque[np.ndarray]] = {}  # per track, its last face embeddings, newest last
        self._last_step: dict[int, int] = {}

    def forget(self, track_id: int) -> None:
        self.visual.forget(track_id)
        self._faces.pop(track_id, None)
        self._last_step.pop(track_id, None)

    def score_frame(self, step: int, tracks: list[TrackWindow], audio: np.ndarray) -> FrameScores:
        """`audio`: the MFCC rows of the frames up to `step` (4 a frame); each track's crops end at `step`."""
        self._embed_new_frames(step, tracks)
        if not any(self._faces.get(track.id) for track in tracks):
            return FrameScores({})
        return FrameScores(self._speaking_logits(tracks, self._sound(step, audio)))

    def _sound(self, step: int, audio: np.ndarray) -> torch.Tensor:
        """(frames, 128) sound embeddings up to the newest embedded face frame, inclusive, newest last:
        the last `kept_frames` of them (`SoundStream`: each computed once, as on the whole window)."""
        audio_frames = len(audio) // MFCC_PER_FRAME
        if audio_frames <= self.delay:
            return torch.zeros((0, EMBED_DIM), device=self.device)
        mfcc = np.ascontiguousarray(audio[:audio_frames * MFCC_PER_FRAME], np.float32)
        return self.sound.embed(step, mfcc, audio_frames - self.delay, self.kept_frames)

    def _speaking_logits(self, tracks: list[TrackWindow], sound: torch.Tensor) -> dict[int, float]:
        """Each track's speaking logit: the back end over its last face embeddings and the same frames' sound."""
        spans: dict[int, list[int]] = {}  # back-end length -> tracks: equal lengths run as one batch
        for track in tracks:
            faces = self._faces.get(track.id)
            length = min(len(faces), len(sound), self.window_frames) if faces else 0
            if length > 0:
                spans.setdefault(length, []).append(track.id)
        raw = {}
        with torch.inference_mode():
            for length, ids in spans.items():
                a = sound[None, len(sound) - length:].expand(len(ids), -1, -1)
                v = torch.from_numpy(np.stack([np.stack(list(self._faces[tid])[-length:]) for tid in ids])).to(self.device)
                logits = self.net.speaking_logits(a, v)[:, length - 1 - min(self.lookahead, length - 1)]
                raw.update(zip(ids, logits.float().cpu().tolist()))
        return raw

    def _embed_new_frames(self, step: int, tracks: list[TrackWindow]) -> None:
        """Push each track's frames newer than its last pushed step through the face front end, all
        tracks in one batch per round; a short gap repeats the frame after it, a long one restarts the track."""
        fresh: dict[int, list[np.ndarray]] = {}
        for track in tracks:
            first = step - len(track.crops) + 1
            last = self._last_step.get(track.id)
            if last is not None and first - last > self.window_frames:
                self.forget(track.id)
                last = None
            gap = [] if last is None else [track.crops[0]] * max(0, first - last - 1)
            new = [crop for offset, crop in enumerate(track.crops) if last is None or first + offset > last]
            if new:
                fresh[track.id] = gap + new
                self._last_step[track.id] = step
        for round_ in range(max((len(crops) for crops in fresh.values()), default=0)):
            batch = {tid: crops[round_] for tid, crops in fresh.items() if round_ < len(crops)}
            for tid, embedding in self.visual.push(batch).items():
                self._faces.setdefault(tid, deque(maxlen=self.kept_frames)).append(embedding)
