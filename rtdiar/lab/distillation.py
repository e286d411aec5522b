"""Training rtdiar's compact judgement (`rtdiar.scorers.distilled`) from scratch, with LR-ASD as its teacher.

Every `train/` clip's face with its own sound is taught LR-ASD's speaking logit there (a soft target:
LR-ASD, run offline over the whole clip, knows from thousands of AVA faces when a face talks); the
same faces laid on another clip's sound are taught "not the speaker" (talking on mute); and the sync
head on the student's front ends learns, as `sync_training` teaches it, which sound each face window
moves with. A batch is one trailing window of `window_frames` per clip, so every objective reads
what the live scorer reads. The head's fusion with the student's logit is then fitted on dev people,
as for `rtdiar-lrasd`. The teacher's logits and each clip's MFCCs are cached once, beside its front ends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rtdiar.audio import VoiceActivity
from rtdiar.config import PROJECT_ROOT, Config, load_config
from rtdiar.lab.dataset import DEFAULT_CACHE, PreparedClip, cache_path, find_clips, prepare_clips
from rtdiar.lab.frontends import MAX_CLIP_S, FrontendClip, clip_wave, embed_clip, features_path, prepare_features
from rtdiar.lab.sync_training import build_recipe, fit_on_dev, frontend_net, fusion_metadata, window_loss, writable
from rtdiar.scorers.active_speaker import AUDIO_CONTEXT_FRAMES
from rtdiar.scorers.distilled import DistilledASD
from rtdiar.scorers.fused import clip_mfcc
from rtdiar.scorers.syncnet import build_model, save_weights
from rtdiar.windows import MFCC_PER_FRAME

DEFAULT_RECIPE = PROJECT_ROOT / "configs" / "train_distilled.yaml"


@dataclass
class DistilRecipe:
    """configs/train_distilled.yaml (`arch: distilled` names it)."""

    arch: str
    teacher: str  # the registry name of the active-speaker model whose logits are the soft targets
    train: list[str]
    dev: str  # dev/wild: the fusion fit
    out: str
    window_frames: int  # each training window: the live back end's window
    clips_per_batch: int
    epochs: int  # one random window of every clip per epoch
    learning_rate: float
    mute_weight: float  # the "not the speaker" loss of faces on another clip's sound, beside the teacher's
    sync_weight: float  # the sync head's InfoNCE
    min_shift: int
    cohort_shifts: list[int]
    faces_per_sound: int
    seed: int


@dataclass
class TaughtClip:
    """A train clip's faces (the active-speaker crops), its MFCCs and the teacher's logit per face row."""

    crops: np.ndarray  # (T, 112, 112) uint8
    valid: np.ndarray  # (T,) bool
    first_frame: int  # face row k is sound frame first_frame + k
    mfcc: np.ndarray  # (4N, 13)
    teacher: np.ndarray  # (T,) float32, NaN where the row has no sound

    def starts(self, frames: int) -> np.ndarray:
        """Face rows where a window of `frames` valid faces with their sound begins."""
        whole = np.convolve(self.valid.astype(int), np.ones(frames, int), "valid") == frames
        rows = np.flatnonzero(whole)
        sound_frames = len(self.mfcc) // MFCC_PER_FRAME
        return rows[(self.first_frame + rows >= 0) & (self.first_frame + rows + frames <= sound_frames)]


def load_recipe(path: Path) -> DistilRecipe:
    return build_recipe(DistilRecipe, path)


def teacher_logits(net: torch.nn.Module, clip: FrontendClip) -> np.ndarray:
    """(T,) the teacher's speaking logit of each face row, run offline over the rows that have sound."""
    rows = clip.first_frame + np.arange(len(clip.faces))
    inside = (rows >= 0) & (rows < len(clip.sound))
    out = np.full(len(clip.faces), np.nan, np.float32)
    if inside.any():
        with torch.inference_mode():
            out[inside] = net.speaking_logits(torch.from_numpy(clip.sound[rows[inside]])[None],
                                              torch.from_numpy(clip.faces[inside])[None])[0].numpy()
    return out


def taught_clips(folders: list[str], recipe: DistilRecipe, config: Config) -> list[TaughtClip]:
    """The train clips with the teacher's logits and their MFCCs (each cached once as `.npz`)."""
    clips = find_clips([PROJECT_ROOT / folder for folder in folders])
    net = frontend_net(recipe.teacher)
    prepare_features(clips, DEFAULT_CACHE, config, net, recipe.teacher)
    taught = []
    for clip in tqdm(clips, desc="teacher", unit="clip"):
        frontends = features_path(clip, DEFAULT_CACHE, config, recipe.teacher)
        if not frontends.exists():
            continue
        cached = features_path(clip, DEFAULT_CACHE, config, recipe.teacher, "teacher")
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + ".tmp.npz")
            np.savez(tmp, mfcc=clip_mfcc(clip_wave(clip, config), config.audio.sample_rate),
                     teacher=teacher_logits(net, FrontendClip.load(frontends)))
            os.replace(tmp, cached)
        prepared = PreparedClip.load(cache_path(clip, DEFAULT_CACHE, config, asd=True))
        with np.load(cached) as data:
            taught.append(TaughtClip(prepared.crops, prepared.valid, prepared.first_frame, data["mfcc"], data["teacher"]))
    return taught


def sample_batch(clips: list[TaughtClip], frames: int, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random window per clip: faces (B, frames, 112, 112), MFCCs (B, 4 (frames + context), 13) with
    `AUDIO_CONTEXT_FRAMES` of past sound (zeros before the clip, as the stream starts), teacher (B, frames)."""
    context = AUDIO_CONTEXT_FRAMES
    faces = np.zeros((len(clips), frames, *clips[0].crops.shape[1:]), np.uint8)
    mfcc = np.zeros((len(clips), (frames + context) * MFCC_PER_FRAME, clips[0].mfcc.shape[1]), np.float32)
    teacher = np.zeros((len(clips), frames), np.float32)
    for i, clip in enumerate(clips):
        row = int(rng.choice(clip.starts(frames)))
        faces[i] = clip.crops[row:row + frames, :, ::-1] if rng.random() < 0.5 else clip.crops[row:row + frames]
        first = (clip.first_frame + row - context) * MFCC_PER_FRAME
        kept = clip.mfcc[max(first, 0):(clip.first_frame + row + frames) * MFCC_PER_FRAME]
        mfcc[i, len(mfcc[i]) - len(kept):] = kept
        teacher[i] = clip.teacher[row:row + frames]
    return torch.from_numpy(faces), torch.from_numpy(mfcc), torch.from_numpy(teacher)


def batch_loss(student: DistilledASD, faces: torch.Tensor, mfcc: torch.Tensor, teacher: torch.Tensor,
               recipe: DistilRecipe) -> tuple[torch.Tensor, dict[str, float]]:
    """The teacher's soft targets on each face with its own sound, "not the speaker" on the faces
    moved one clip along (another clip's sound), and the sync head's InfoNCE on the front ends."""
    visual = student.visual_frontend(faces.float())
    audio = student.audio_frontend(mfcc)[:, AUDIO_CONTEXT_FRAMES:]
    own = student.speaking_logits(audio, visual)
    mute = student.speaking_logits(audio, visual.roll(1, dims=0))
    taught = F.binary_cross_entropy_with_logits(own, torch.sigmoid(teacher))
    muted = F.binary_cross_entropy_with_logits(mute, torch.zeros_like(mute))
    windows = np.ones((len(faces), recipe.window_frames - student.head.frames + 1), bool)
    sync = window_loss(student.head, visual, audio, windows, windows, recipe.min_shift)
    parts = {"teacher": taught.item(), "mute": muted.item(), "sync": sync.item()}
    return taught + recipe.mute_weight * muted + recipe.sync_weight * sync, parts


def train_student(recipe: DistilRecipe, clips: list[TaughtClip]) -> DistilledASD:
    """The student from scratch: `epochs` passes of one random window per clip, one-cycle schedule."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    clips = [clip for clip in clips if len(clip.starts(recipe.window_frames))]
    student = build_model(recipe.arch)
    batches = len(clips) // recipe.clips_per_batch
    optimiser = torch.optim.AdamW(student.parameters(), recipe.learning_rate / 2, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, total_steps=recipe.epochs * batches)
    started = time.monotonic()
    for epoch in range(recipe.epochs):
        order, totals = rng.permutation(len(clips)), {}
        for b in range(batches):
            group = [clips[i] for i in order[b * recipe.clips_per_batch:(b + 1) * recipe.clips_per_batch]]
            loss, parts = batch_loss(student, *sample_batch(group, recipe.window_frames, rng), recipe)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            totals = {k: totals.get(k, 0.0) + v / batches for k, v in parts.items()}
        print(f"epoch {epoch + 1}/{recipe.epochs}: " + ", ".join(f"{k} {v:.3f}" for k, v in totals.items())
              + f" ({time.monotonic() - started:.0f} s)", flush=True)
    return student.eval()


def dev_frontends(folder: str, config: Config, student: DistilledASD) -> list[FrontendClip]:
    """The dev clips through the student's front ends (in memory: they change with every training)."""
    clips = find_clips([PROJECT_ROOT / folder])
    prepare_clips(clips, DEFAULT_CACHE, config, asd=True)
    vad = VoiceActivity(config.audio.sample_rate, history_s=MAX_CLIP_S)
    return [embedded for clip in clips if (embedded := embed_clip(clip, DEFAULT_CACHE, config, student, vad))]


def train_distilled(recipe: DistilRecipe, out: Path | None = None, overwrite: bool = False) -> dict:
    """The whole recipe: the teacher's targets (cached), the student, its fusion fitted on dev
    people, the file (atomic; an existing one only with `overwrite`). Returns the dev figures."""
    out = writable(out or PROJECT_ROOT / recipe.out, overwrite)
    config = load_config()
    student = train_student(recipe, taught_clips(recipe.train, recipe, config))
    with torch.no_grad():
        figures = fit_on_dev(recipe, student.head, student, dev_frontends(recipe.dev, config, student))
    save_weights(student, out, recipe.arch, {"teacher": recipe.teacher, **fusion_metadata(recipe, figures)})
    print(f"wrote {out}")
    return figures
