"""The active-speaker prior and rtdiar's sync test in one score: who is talking *this* sound.

LR-ASD's speaking logit knows what talking looks like; rtdiar's sync head (`sync_head.py`) on the
same frozen front ends checks that the lips follow the sound heard, measured against off-sync
pairings of the same face and sound (`rtdiar.cohort`). The head's file weighs the two into one
logit (`SyncHead.fusion`, fitted on dev people), so a face talking on mute loses to the face whose
lips match the sound. Both share the face stream and the sound front end: the head adds two
small towers per frame, nothing more.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rtdiar.audio import MFCC_HOP_SAMPLES, MFCC_N_CEPSTRA, MfccBuffer
from rtdiar.cohort import OffSyncCohort
from rtdiar.config import Config
from rtdiar.scorers.active_speaker import ActiveSpeakerScorer
from rtdiar.scorers.base import FrameScores, TrackWindow
from rtdiar.scorers.asd import EMBED_DIM
from rtdiar.scorers.inference import TorchTowers
from rtdiar.scorers.onnx_backend import OnnxTowers
from rtdiar.scorers.sync_head import SyncHead
from rtdiar.windows import MEL_FPS, MFCC_PER_FRAME

CHUNK_FRAMES = 256  # a long track's faces go through the encoder this many at a time (memory), exactly


class FusedScorer(ActiveSpeakerScorer):
    """`Scorer` whose raw score per track is the fused speaking logit (> 0 reads as talking this sound)."""

    def __init__(self, model: nn.Module, head: SyncHead, device: torch.device, config: Config,
                 cohort_shifts: range, runtime: str = "torch") -> None:
        super().__init__(model, device, config, runtime)
        self.head = head.to(device).eval()
        windows = torch.zeros((2, head.frames, EMBED_DIM))
        self.towers = (OnnxTowers(self.head.face, self.head.sound, {"faces": windows}, windows, torch.get_num_threads())
                       if runtime == "onnx" else TorchTowers(self.head.face, self.head.sound, device))
        self.kept_frames = max(self.window_frames, head.frames)
        self.cohort = OffSyncCohort(cohort_shifts)
        self.clip_windows = FrontendWindows(self.model, self.head, cohort_shifts, config.audio.sample_rate)

    def forget(self, track_id: int) -> None:
        super().forget(track_id)
        self.cohort.forget(track_id)

    def score_frame(self, step: int, tracks: list[TrackWindow], audio: np.ndarray) -> FrameScores:
        features = self.features(step, tracks, audio)
        if not features:
            return FrameScores({})
        fused = self.head.fused_logit(*torch.tensor(list(features.values())).T)
        return FrameScores(dict(zip(features, fused.tolist())))

    def features(self, step: int, tracks: list[TrackWindow], audio: np.ndarray) -> dict[int, tuple[float, float]]:
        """Each scored track's speaking logit and relative sync score (0 until its cohort is in),
        of the frame `latency_frames` before `step`: what the fusion weighs."""
        self._embed_new_frames(step, tracks)
        sound = self._sound(step, audio)
        if len(sound) < self.head.frames:
            return {}
        logits = self._speaking_logits(tracks, sound)
        sync = self._sync_scores(step, sound, list(logits))
        return {tid: (logit, sync.get(tid, 0.0)) for tid, logit in logits.items()}

    def _sync_scores(self, step: int, sound: torch.Tensor, scored: list[int]) -> dict[int, float]:
        """Each of the `scored` tracks with `head.frames` face embeddings: its sync with the sound,
        relative to the off-sync cohort (no score until the cohort has past sound)."""
        frames = self.head.frames
        ids = [tid for tid in scored if len(self._faces[tid]) >= frames]
        heard = self.towers.audio(sound[None, -frames:].float().cpu().numpy())[0]
        faces = {}
        if ids:
            embedded = self.towers.faces(np.stack([np.stack(list(self._faces[tid])[-frames:]) for tid in ids]))
            faces = dict(zip(ids, embedded))
        return self.cohort.scores(step, heard, faces)


def clip_mfcc(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """(4N, 13) MFCCs of a whole clip, computed as the live stream computes them (`MfccBuffer`: the
    int16-scaled sound the active-speaker models were trained on), cut to whole frames."""
    features = MfccBuffer(len(wave) // MFCC_HOP_SAMPLES + 2, sample_rate)
    features.push(np.asarray(wave, np.float32))
    features.finish()
    rows = features.frames_ready // MFCC_PER_FRAME * MFCC_PER_FRAME
    return features.window(0, rows) if rows else np.zeros((0, MFCC_N_CEPSTRA), np.float32)


def face_embeddings(net: nn.Module, crops: np.ndarray) -> np.ndarray:
    """(T, 112, 112) grey faces -> (T, 128), as one pass over the whole track (what the live stream
    gives at its exact delay), in chunks that overlap by the encoder's reach."""
    reach = net.visual_encoder.receptive_frames
    out = np.zeros((len(crops), EMBED_DIM), np.float32)
    with torch.inference_mode():
        for start in range(0, len(crops), CHUNK_FRAMES):
            lo, hi = max(0, start - reach), min(len(crops), start + CHUNK_FRAMES + reach)
            chunk = net.visual_frontend(torch.from_numpy(crops[lo:hi])[None])[0].numpy()
            out[start:start + CHUNK_FRAMES] = chunk[start - lo:start - lo + CHUNK_FRAMES]
    return out


def sound_embeddings(net: nn.Module, mfcc: np.ndarray) -> np.ndarray:
    """(4N, 13) MFCCs -> (N, 128)."""
    with torch.inference_mode():
        return net.audio_frontend(torch.from_numpy(mfcc)[None])[0].numpy()


class FrontendWindows:
    """`rtdiar.offset.ClipWindows` of the sync head: a prepared clip's faces (the active-speaker
    crops) and its sound through the frozen front ends, then the head's towers, window by window."""

    asd_crops, needs_lips = True, False

    def __init__(self, net: nn.Module, head: SyncHead, cohort: range, sample_rate: int) -> None:
        self.net, self.head, self.cohort, self.sample_rate = net, head, cohort, sample_rate
        self.frames = head.frames
        self.mel_frames = round(head.frames * MEL_FPS / 25)

    def starts(self, clip) -> np.ndarray:
        return clip.window_starts(self.frames, self.mel_frames)

    def faces(self, clip, starts: np.ndarray) -> np.ndarray:
        embedded = torch.from_numpy(face_embeddings(self.net, clip.crops))
        return self._towers(self.head.face, embedded, starts)

    def sounds(self, clip, wave: np.ndarray, grid: np.ndarray, shift: int) -> np.ndarray:
        per_frame = self.sample_rate // 25
        pad = max(0, -(clip.first_frame + int(grid.min())))  # frames of silence before time 0
        needed = max(clip.first_frame + int(grid.max()) + self.frames + 1, len(wave) // per_frame + 1)
        moved = np.zeros((pad + needed) * per_frame, np.float32)  # the sound `shift` frames later, after `pad`
        begin, source = (pad + max(0, shift)) * per_frame, wave[max(0, -shift) * per_frame:]
        kept = source[:len(moved) - begin]
        moved[begin:begin + len(kept)] = kept
        sound = torch.from_numpy(sound_embeddings(self.net, clip_mfcc(moved, self.sample_rate)))
        return self._towers(self.head.sound, sound, clip.first_frame + grid + pad)

    def _towers(self, tower: nn.Module, embedded: torch.Tensor, starts: np.ndarray) -> np.ndarray:
        index = torch.as_tensor(starts)[:, None] + torch.arange(self.frames)
        with torch.inference_mode():
            return torch.cat([tower(embedded[index[i:i + 1024]]) for i in range(0, len(index), 1024)]).numpy()
