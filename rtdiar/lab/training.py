"""`rtdiar train`: self-supervised training of the lip-sync expert on clips assumed in sync.

A step takes a few clips and cuts each into every 5-frame video window and every 0.2 s audio
window of a short segment. Each video window must pick its own audio among all audio windows of
the batch (InfoNCE), and each audio window its own video: the same clip's audio a few frames
away is the hard negative SyncNet trained on, and another clip's face at the same moment is the
two-faces-one-voice case the diarizer lives on. Audio within `ambiguous_shift` frames of the truth
is left out (a 40 ms shift is nearly the same sound). Validation is the window AUC on other
people (`data.validation`); the best validation step is what ships. With `optim.ema` it is a moving
average of the weights that is validated and shipped: the raw weights jump between validations, so
their best step is partly luck on the validation clips.

The shipped recipe is two runs: a first model, then a second trained only on the windows the
first finds in sync (`data.sync_filter`, SyncNet's data cleaning), shipped paired with the first
(`pair_with`): their averaged score generalises better than either (weights/MODEL_CARD.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from rtdiar.config import PROJECT_ROOT, Config, WindowConfig, build_section, merge_settings, read_yaml
from rtdiar.lab.dataset import DEFAULT_CACHE, PreparedClip, cache_path, find_clips, prepare_clips, prepare_coded
from rtdiar.errors import RtdiarError
from rtdiar.lab.evaluate import roc_auc
from rtdiar.scorers.inference import SyncScorer, load_scorer, pack_faces
from rtdiar.lips import MIRRORED
from rtdiar.scorers.syncnet import build_model, face_inputs, pair_models, save_weights, weights_arch
from rtdiar.offset import MelWindows, window_similarities

DEFAULT_TRAIN_CONFIG = PROJECT_ROOT / "configs" / "train.yaml"
MEL_UNITS_PER_DB = 0.08  # Wav2Lip's normalisation maps 100 dB onto 8 units


@dataclass
class DataRecipe:
    train: list
    folder_weights: dict
    validation: list
    sync_filter: str | None
    sync_tolerance: int


@dataclass
class BatchRecipe:
    clips: int
    windows_per_clip: int
    segment_frames: int
    ambiguous_shift: int
    cross_clip_negatives: bool


@dataclass
class OptimRecipe:
    lr: float
    weight_decay: float
    time_budget_min: float
    max_steps: int
    warmup_steps: int
    schedule: str
    init_logit_scale: float
    ema: float


@dataclass
class ValidationRecipe:
    every_steps: int
    windows_per_clip: int
    off_shifts: list
    patience: int
    keep: str


@dataclass
class AugmentRecipe:
    flip: float
    shift: float
    scale: float
    jitter: float
    blur: float
    noise: float
    colour: float
    jpeg: float
    jpeg_quality: list
    gain_db: list
    noise_floor: list
    codec: float
    codecs: list
    lips_rotation_deg: float
    lips_aspect: float
    lips_shift: float
    lips_jitter: float
    lips_noise: float


@dataclass
class TrainConfig:
    arch: str
    seed: int
    pair_with: str | None
    run_dir: str
    out: str
    cache_dir: str | None
    prepare_workers: int
    data: DataRecipe
    batch: BatchRecipe
    optim: OptimRecipe
    validation: ValidationRecipe
    augment: AugmentRecipe

    def path(self, value: str) -> Path:
        """Relative recipe paths are taken from the project root."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path


_SECTIONS = {"data": DataRecipe, "batch": BatchRecipe, "optim": OptimRecipe,
             "validation": ValidationRecipe, "augment": AugmentRecipe}


def load_train_config(path: str | Path | None = None) -> TrainConfig:
    """configs/train.yaml, overlaid with a partial file of the same shape (whose
    `data.folder_weights` names the user's own folders, so it replaces the default mapping)."""
    data = read_yaml(DEFAULT_TRAIN_CONFIG)
    if path is not None:
        data = merge_settings(data, read_yaml(Path(path)), "", free=frozenset({"data.folder_weights"}))
    sections = {name: build_section(cls, data[name], f"{name}.") for name, cls in _SECTIONS.items()}
    top = {f.name: data[f.name] for f in dataclasses.fields(TrainConfig) if f.name not in sections}
    return TrainConfig(**top, **sections)


class ClipBank:
    """Every prepared training clip in memory, sampled into contrastive batches.

    `starts`, when given, are the video windows each clip may use (by default all of them); the
    audio always covers the whole segment. `coded`, when given, holds each clip's mel through lossy
    codecs (`prepare_coded`): a `coded_share` of the clips in a batch sound through one of them.
    With `lips`, batches carry the windows' lip points too, and only windows with points on all
    their frames are used.
    """

    def __init__(self, clips: list[PreparedClip], weights: np.ndarray, recipe: BatchRecipe,
                 starts: list[np.ndarray] | None = None, coded: list[np.ndarray] | None = None,
                 coded_share: float = 0.0, lips: bool = False) -> None:
        self.recipe = recipe
        self.lips = lips
        if starts is None:
            starts = [c.window_starts() for c in clips]  # once: they do not change between batches
        if lips:
            starts = [s[_lips_complete(c)[s]] for c, s in zip(clips, starts)]
        kept = np.array([len(s) >= 2 for s in starts])
        if not kept.any():
            raise RtdiarError("no training clip holds two 5-frame windows with a tracked face")
        self.clips = [c for c, keep in zip(clips, kept) if keep]
        self.starts = [s for s, keep in zip(starts, kept) if keep]
        self.coded = None if coded is None else [c for c, keep in zip(coded, kept) if keep]
        self.coded_share = coded_share
        self.weights = np.asarray(weights, np.float64)[kept]
        self.weights /= self.weights.sum()

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch: video windows (V, 5, 48, 96, 3) (with `lips`, their (V, 5, 42, 2) lip points too) and
        audio windows (A, 80, 16), each with its clip and position."""
        faces, lips, mels, video_key, audio_key = [], [], [], [], []
        count = min(self.recipe.clips, len(self.clips))
        for slot, index in enumerate(rng.choice(len(self.clips), count, replace=False, p=self.weights)):
            clip = self._sounding(index, rng)
            first, last = self._segment(clip, rng)
            positions = np.arange(first, last + 1)
            positions = positions[clip.audio_inside(positions)]
            starts = self.starts[index]  # their audio lies inside the clip too
            starts = starts[(starts >= first) & (starts <= last)]
            chosen = rng.choice(starts, min(len(starts), self.recipe.windows_per_clip), replace=False)
            faces += [clip.crops[k:k + 5] for k in chosen]
            if self.lips:
                lips += [clip.lips[k:k + 5] for k in chosen]
            video_key += [(slot, k) for k in chosen]
            mels.append(clip.mel_windows(positions))
            audio_key += [(slot, p) for p in positions]
        batch = {"faces": np.stack(faces), "mels": np.concatenate(mels),
                 "video_key": np.array(video_key), "audio_key": np.array(audio_key)}
        return {**batch, "lips": np.stack(lips)} if self.lips else batch

    def _sounding(self, index: int, rng: np.random.Generator) -> PreparedClip:
        """The clip, now and then with its sound through a codec. Without coded mels it draws no random
        numbers, so a recipe without them replays exactly."""
        clip = self.clips[index]
        if self.coded is None or rng.random() >= self.coded_share:
            return clip
        variants = self.coded[index]
        return dataclasses.replace(clip, mel=variants[rng.integers(len(variants))].astype(np.float32))

    def _segment(self, clip: PreparedClip, rng: np.random.Generator) -> tuple[int, int]:
        """First and last window start of a random segment of `segment_frames` grid frames."""
        span = self.recipe.segment_frames - 5
        last_start = len(clip.crops) - 5
        first = int(rng.integers(0, max(last_start - span, 0) + 1))
        return first, min(first + span, last_start)


def _lips_complete(clip: PreparedClip, frames: int = 5) -> np.ndarray:
    """(T,) bool: window starts whose `frames` frames all have lip points."""
    if clip.lips is None:
        raise RtdiarError(f"{clip.name} has no lip points: prepare it again")
    complete = np.convolve(clip.lips_found().astype(int), np.ones(frames, int), "valid") == frames
    return np.pad(complete, (0, frames - 1))


def contrastive_loss(face_emb: torch.Tensor, audio_emb: torch.Tensor, video_key: torch.Tensor,
                     audio_key: torch.Tensor, logit_scale: torch.Tensor, ambiguous_shift: int,
                     cross_clip: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE: video -> its audio among the candidates, and audio -> its video.

    Without `cross_clip` the candidates are the same clip's only (as SyncNet and Wav2Lip sample
    negatives): another clip's audio can be told apart by *whose voice* it is, a shortcut that
    teaches face-voice identity instead of lip sync and does not carry over to new people.
    """
    same_clip = video_key[:, None, 0] == audio_key[None, :, 0]
    shift = audio_key[None, :, 1] - video_key[:, None, 1]
    positive = same_clip & (shift == 0)
    excluded = same_clip & (shift.abs() <= ambiguous_shift) & (shift != 0)
    if not cross_clip:
        excluded |= ~same_clip
    logits = (logit_scale.exp() * face_emb @ audio_emb.T).masked_fill(excluded, float("-inf"))
    video_loss = F.cross_entropy(logits, positive.float().argmax(dim=1))
    has_video = positive.any(dim=0)
    audio_loss = F.cross_entropy(logits.T[has_video], positive.T[has_video].float().argmax(dim=1))
    return 0.5 * (video_loss + audio_loss)


def compress_faces(crops: np.ndarray, recipe: AugmentRecipe, generator: torch.Generator) -> np.ndarray:
    """(N, 5, H, W, 3) uint8 crops -> the same, a share of the windows JPEG-coded frame by frame at a
    random quality: web and phone video carry block artefacts that change from frame to frame,
    which a motion input would otherwise take for lip movement. Off (`jpeg: 0`), it draws no random
    numbers, so a recipe without it replays exactly."""
    if recipe.jpeg <= 0:
        return crops
    chosen = (torch.rand(len(crops), generator=generator) < recipe.jpeg).numpy()
    low, high = recipe.jpeg_quality
    qualities = (low + (high - low) * torch.rand(len(crops), generator=generator)).int().tolist()
    out = crops.copy()
    for i in np.flatnonzero(chosen):
        for f, frame in enumerate(crops[i]):
            _, code = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, qualities[i]])
            out[i, f] = cv2.imdecode(code, cv2.IMREAD_COLOR)
    return out


def augment_faces(faces: torch.Tensor, recipe: AugmentRecipe, generator: torch.Generator) -> torch.Tensor:
    """(N, 15, H, W) packed crops -> the same, flipped, moved, zoomed, jittered per frame, blurred,
    colour-cast, noised.

    Per-frame jitter mimics the tracker's box wobble, which a motion input would otherwise mistake
    for lip movement.
    """
    n, channels, height, width = faces.shape
    frames = channels // 3
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731 - local shorthand
    flip = rand(n) < recipe.flip
    faces = torch.where(flip[:, None, None, None], faces.flip(-1), faces)
    scale = 1.0 + (2 * rand(n, 1) - 1) * recipe.scale
    shift = (2 * rand(n, 1, 2) - 1) * recipe.shift * 2  # affine_grid units span 2 per image
    jitter = (2 * rand(n, frames, 2) - 1) * recipe.jitter * 2
    theta = torch.zeros(n, frames, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = 1.0 / scale
    theta[..., :, 2] = shift + jitter
    per_frame = faces.reshape(n * frames, 3, height, width)
    grid = F.affine_grid(theta.reshape(n * frames, 2, 3), list(per_frame.shape), align_corners=False)
    faces = F.grid_sample(per_frame, grid, padding_mode="border", align_corners=False).reshape(n, channels, height, width)
    blurred = _gaussian_blur(faces, sigma=0.5 + float(rand(1)) * 0.8)
    faces = torch.where((rand(n) < recipe.blur)[:, None, None, None], blurred, faces)
    if recipe.colour > 0:  # off, it draws nothing, so a recipe without it replays exactly
        gain = 1.0 + (2 * rand(n, 1, 3, 1, 1) - 1) * recipe.colour  # white balance, per colour channel
        gain = gain * (1.0 + (2 * rand(n, 1, 1, 1, 1) - 1) * recipe.colour)  # exposure
        faces = (faces.reshape(n, frames, 3, height, width) * gain).reshape(n, channels, height, width)
    noise = torch.randn(faces.shape, generator=generator) * rand(n, 1, 1, 1) * recipe.noise
    return (faces + noise).clamp(0.0, 1.0)


def augment_lips(lips: torch.Tensor, recipe: AugmentRecipe, generator: torch.Generator) -> torch.Tensor:
    """(N, 5, P, 2) eye-aligned lip points -> the same, mirrored, turned, zoomed, stretched, moved,
    jittered per frame and noised: what a different face, a tilted head, the eye-line estimate and
    FaceMesh's own wobble would change."""
    n = lips.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731 - local shorthand
    mirrored = lips[:, :, list(MIRRORED)] * lips.new_tensor([-1.0, 1.0])
    lips = torch.where((rand(n) < recipe.flip)[:, None, None, None], mirrored, lips)
    angle = (2 * rand(n) - 1) * math.radians(recipe.lips_rotation_deg)
    scale = 1.0 + (2 * rand(n) - 1) * recipe.scale
    aspect = 1.0 + (2 * rand(n) - 1) * recipe.lips_aspect
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.stack([torch.stack([cos * aspect, -sin * aspect], 1), torch.stack([sin, cos], 1)], 1)
    shift = (2 * rand(n, 1, 1, 2) - 1) * recipe.lips_shift
    jitter = recipe.lips_jitter * torch.randn(n, lips.shape[1], 1, 2, generator=generator)
    noise = recipe.lips_noise * torch.randn(lips.shape, generator=generator)
    return torch.einsum("nij,ntpj->ntpi", matrix * scale[:, None, None], lips) + shift + jitter + noise


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    taps = torch.arange(-2, 3, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.reshape(1, 1, 1, 5).repeat(channels, 1, 1, 1)
    vertical = kernel.reshape(1, 1, 5, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(images, (2, 2, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, 2, 2), mode="replicate"), vertical, groups=channels)


def augment_mels(mels: torch.Tensor, recipe: AugmentRecipe, generator: torch.Generator) -> torch.Tensor:
    """(N, 1, 80, 16) mel -> the same at a random gain over a random, uneven noise floor."""
    n = mels.shape[0]
    low, high = recipe.gain_db
    gain = (low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)) * MEL_UNITS_PER_DB
    low, high = recipe.noise_floor
    level = low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)
    floor = level + 0.3 * torch.randn(mels.shape, generator=generator)
    return torch.maximum(mels + gain, floor).clamp(-4.0, 4.0)


class WindowAUC:
    """In-sync vs off-sync window AUC on a fixed set of validation windows (other people)."""

    def __init__(self, clips: list[PreparedClip], recipe: ValidationRecipe) -> None:
        faces, lips, mels, pairs = [], [], [], []
        with_lips = all(clip.lips is not None for clip in clips)
        for clip in clips:
            starts = clip.window_starts()
            chosen = starts[np.linspace(0, len(starts) - 1, min(len(starts), recipe.windows_per_clip)).astype(int)]
            if with_lips and len(chosen):
                lips.append(clip.lips_windows(chosen))
            for k in chosen:
                face = len(faces)
                faces.append(clip.crops[k:k + 5])
                for shift in [0, *recipe.off_shifts]:
                    if clip.audio_inside(k + shift)[0]:
                        pairs.append((face, len(mels), shift == 0))
                        mels.append(clip.mel_window(k, shift))
        if not pairs:
            raise RtdiarError("no validation window found: check data.validation")
        self.faces = torch.from_numpy(np.stack(faces))
        self.lips = torch.from_numpy(np.concatenate(lips)) if with_lips else None
        self.mels = torch.from_numpy(np.stack(mels)).unsqueeze(1)
        self.pairs = np.array(pairs)

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> float:
        model.eval()
        face_emb = torch.cat([model.embed_faces(*self._face_inputs(model, slice(i, i + 256)))
                              for i in range(0, len(self.faces), 256)])
        audio_emb = torch.cat([model.embed_audio(self.mels[i:i + 1024]) for i in range(0, len(self.mels), 1024)])
        model.train()
        scores = (face_emb[self.pairs[:, 0]] * audio_emb[self.pairs[:, 1]]).sum(1).numpy()
        in_sync = self.pairs[:, 2].astype(bool)
        return roc_auc(scores[in_sync], scores[~in_sync])

    def _face_inputs(self, model: nn.Module, part: slice) -> list[torch.Tensor]:
        if "lips" in face_inputs(model) and self.lips is None:
            raise RtdiarError("the validation clips have no lip points: prepare them again")
        return [pack_faces(self.faces[part]) if name == "crops" else self.lips[part] for name in face_inputs(model)]


def in_sync_starts(clips: list[PreparedClip], scorer: SyncScorer, tolerance: int,
                   window: WindowConfig) -> list[np.ndarray]:
    """Each clip's window starts whose audio a first model finds best within `tolerance` frames of 0.

    SyncNet's data cleaning: a window the first model places elsewhere is out of sync, silent, or
    without a visible mouth, and as a positive it only teaches noise. The search spans
    ±(2 * tolerance + 5) frames, so a window that carries no evidence (a flat curve) lands inside
    only by chance.
    """
    max_shift = 2 * tolerance + window.frames
    windows = MelWindows(scorer, window)
    kept = []
    for clip in tqdm(clips, desc="sync filter", unit="clip"):
        sims = window_similarities(clip, windows, max_shift, None)
        best = sims.argmax(axis=1) - max_shift if len(sims) else np.zeros(0, int)
        kept.append(clip.window_starts(window.frames, window.mel_frames)[np.abs(best) <= tolerance])
    return kept


def first_model(key: str, weights: Path) -> Path:
    """The earlier model a recipe key names, checked before any training time is spent."""
    if not weights.is_file():
        raise RtdiarError(f"{key}: no weights at {weights}; train that first model before this run "
                          "(for the shipped recipe: rtdiar train --train-config configs/train_first.yaml)")
    return weights


def filter_scorer(weights: Path, config: Config) -> SyncScorer:
    """The first model, on the CPU (its runtime as configured): it only scores the training windows once."""
    path = first_model("data.sync_filter", weights)
    model = dataclasses.replace(config.model, arch="auto", weights=str(path), device="cpu")
    return load_scorer(dataclasses.replace(config, model=model))


def check_choices(recipe: TrainConfig) -> None:
    """Refuse, before the run, a `validation.keep` it cannot honour (best needs validation clips to choose
    the step by), an `optim.ema` decay outside [0, 1) and a coded-audio share without codecs."""
    if not 0.0 <= recipe.optim.ema < 1.0:
        raise RtdiarError(f"optim.ema must be in [0, 1) (0: off), not {recipe.optim.ema}")
    if recipe.validation.keep not in ("best", "last"):
        raise RtdiarError(f"unknown validation.keep '{recipe.validation.keep}' (best or last)")
    if recipe.validation.keep == "best" and not recipe.data.validation:
        raise RtdiarError("validation.keep: best needs data.validation clips; with none, set keep: last (fixed steps)")
    if not 0.0 <= recipe.augment.codec <= 1.0 or (recipe.augment.codec > 0 and not recipe.augment.codecs):
        raise RtdiarError(f"augment.codec must be in [0, 1] with augment.codecs listed, not {recipe.augment.codec}")


# the ensemble arch `pair_with` ships, by (the earlier model's arch, the run's arch)
PAIRS = {("compact", "compact"): "compact_pair", ("compact", "lips"): "compact_lips"}


def pair_arch(recipe: TrainConfig) -> str:
    """The ensemble a `pair_with` recipe ships: refuse a pairing there is none for before the run, not after it."""
    first = first_model("pair_with", recipe.path(recipe.pair_with))
    members = (weights_arch(first) or "not an rtdiar file", recipe.arch)
    if members not in PAIRS:
        known = "; ".join(f"{a} + {b}" for a, b in PAIRS)
        raise RtdiarError(f"pair_with pairs {known}, not {str(first)}'s '{members[0]}' with the run's '{members[1]}'")
    return PAIRS[members]


def recipe_clips(entries: list[str], recipe: TrainConfig) -> list[Path]:
    """The video files a recipe list names, directly or by folder."""
    return find_clips([recipe.path(entry) for entry in entries])


def load_clips(entries: list[str], recipe: TrainConfig, config: Config,
               leave_out: frozenset[Path] = frozenset()) -> tuple[list[PreparedClip], list[Path]]:
    """Prepare (or reuse) and load every clip the entries name, less those left out; also each one's video file."""
    clips = [clip for clip in recipe_clips(entries, recipe) if clip.resolve() not in leave_out]
    if not clips:
        raise RtdiarError(f"no video files in {', '.join(entries)}" + (" outside data.validation" if leave_out else ""))
    cache, lips = recipe_cache(recipe), reads_lips(recipe)
    prepare_clips(clips, cache, config, recipe.prepare_workers, lips=lips)
    found = [(clip, path) for clip in clips if (path := cache_path(clip, cache, config, lips=lips)).exists()]  # with a face
    loaded = [PreparedClip.load(path) for _, path in tqdm(found, desc="loading clips", unit="clip")]
    return loaded, [clip for clip, _ in found]


def reads_lips(recipe: TrainConfig) -> bool:
    """Whether the run's model reads lip points: then its clips are prepared with them (FaceMesh).
    The throwaway model is built on a forked random stream, so asking never changes the run's weights."""
    with torch.random.fork_rng():
        return "lips" in face_inputs(build_model(recipe.arch))


def recipe_cache(recipe: TrainConfig) -> Path:
    """Where the recipe's prepared clips (and their coded mels) are cached."""
    return recipe.path(recipe.cache_dir) if recipe.cache_dir else DEFAULT_CACHE


def coded_mels(videos: list[Path], recipe: TrainConfig, config: Config) -> list[np.ndarray] | None:
    """Every clip's mel through each of `augment.codecs` (made once, cached), when `augment.codec` asks for them."""
    if recipe.augment.codec <= 0:
        return None
    paths = prepare_coded(videos, recipe_cache(recipe), config, recipe.augment.codecs, recipe.prepare_workers)
    return [np.load(path) for path in tqdm(paths, desc="loading coded audio", unit="clip")]


def training_bank(recipe: TrainConfig, config: Config) -> ClipBank:
    """The training clips, less any validation clip (so k-fold folds can name all of a folder), weighted by
    folder, with only the windows the first model keeps (if one is set)."""
    held_out = frozenset(clip.resolve() for clip in recipe_clips(recipe.data.validation, recipe))
    clips, videos = load_clips(recipe.data.train, recipe, config, held_out)
    weights = np.array([recipe.data.folder_weights.get(video.parent.name, 1.0) for video in videos])
    coded = coded_mels(videos, recipe, config)
    lips = reads_lips(recipe)
    if not recipe.data.sync_filter:
        return ClipBank(clips, weights, recipe.batch, coded=coded, coded_share=recipe.augment.codec, lips=lips)
    scorer = filter_scorer(recipe.path(recipe.data.sync_filter), config)
    starts = in_sync_starts(clips, scorer, recipe.data.sync_tolerance, config.window)
    total = sum(len(c.window_starts()) for c in clips)
    print(f"rtdiar: the first model keeps {sum(map(len, starts))} of {total} training windows")
    return ClipBank(clips, weights, recipe.batch, starts, coded, recipe.augment.codec, lips)


def train_model(recipe: TrainConfig, config: Config, out: Path | None = None,
                resume: bool = False, overwrite: bool = False) -> Path:
    """Train, validating on unseen people; write the best (or the last) weights to `out` (default recipe.out)."""
    out = Path(out) if out is not None else recipe.path(recipe.out)
    if out.exists() and not overwrite:
        raise RtdiarError(f"{out} exists; pass --overwrite to replace it, or --out PATH")
    run_dir = recipe.path(recipe.run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RtdiarError(f"run folder {run_dir} is not empty: pass --resume to continue it, or set run_dir")
    check_choices(recipe)
    ensemble = pair_arch(recipe) if recipe.pair_with else None
    run_dir.mkdir(parents=True, exist_ok=True)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    bank = training_bank(recipe, config)
    validate = WindowAUC(load_clips(recipe.data.validation, recipe, config)[0], recipe.validation) \
        if recipe.data.validation else None
    trainer = _Trainer(recipe, run_dir)
    if resume:
        trainer.restore()
    kept = trainer.fit(bank, validate)
    if validate is not None:
        print(f"rtdiar: best validation AUC {trainer.best_auc:.3f} at step {trainer.best_step}")
    if ensemble:
        write_pair(recipe.path(recipe.pair_with), kept, out, validate, ensemble)
    else:
        shutil.copyfile(kept, out)
    print(f"rtdiar: weights in {out}")
    return out


def write_pair(first: Path, second: Path, out: Path, validate: WindowAUC | None, arch: str) -> None:
    """Ship the run's model paired with an earlier one (`pair_with`) as the ensemble `arch`, with the
    pair's own AUC when there is validation."""
    pair = pair_models(first, second, arch)
    metadata, note = {"members": f"{first.name}, {second.name}"}, ""
    if validate is not None:
        auc = validate(pair)
        metadata["validation_auc"], note = f"{auc:.4f}", f": validation AUC {auc:.3f}"
    save_weights(pair, out, arch, metadata)
    print(f"rtdiar: paired with {first}{note}")


def learning_rate(optim: OptimRecipe, step: int) -> float:
    """Linear warm-up, then constant or a cosine decay to zero at `max_steps`."""
    warm = min(1.0, (step + 1) / optim.warmup_steps)
    if optim.schedule == "cosine":
        return optim.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(step / optim.max_steps, 1.0)))
    if optim.schedule == "constant":
        return optim.lr * warm
    raise RtdiarError(f"unknown optim.schedule '{optim.schedule}' (constant or cosine)")


class _Trainer:
    """The optimisation loop with its state, so a checkpoint can resume it exactly."""

    def __init__(self, recipe: TrainConfig, run_dir: Path) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.model = build_model(recipe.arch)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(recipe.optim.init_logit_scale)))
        self.optimizer = torch.optim.AdamW([*self.model.parameters(), self.logit_scale],
                                           lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
        self.rng = np.random.default_rng(recipe.seed)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.optim.ema), use_buffers=True) \
            if recipe.optim.ema > 0 else None
        self.step = 0
        self.elapsed_s = 0.0
        self.best_auc = -1.0
        self.best_step = 0
        self.stale = 0

    @property
    def shipped(self) -> nn.Module:
        """The weights that are validated and shipped: their moving average when `optim.ema` is on."""
        return self.model if self.ema is None else self.ema.module

    def fit(self, bank: ClipBank, validate: WindowAUC | None) -> Path:
        """Train until `_done`; return the weights that ship: the best validated step, or the last one."""
        every, early_stop = self.recipe.validation.every_steps, self.recipe.validation.keep == "best"
        bar = tqdm(total=self.recipe.optim.max_steps, initial=self.step, desc="training", unit="step")
        started, first_step, loss = time.monotonic() - self.elapsed_s, self.step, float("nan")
        while not self._done(early_stop):
            loss = self._step(bank.sample(self.rng))
            self.step += 1
            self.elapsed_s = time.monotonic() - started
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", **({"auc": f"{self.best_auc:.3f}"} if validate else {}))
            if self.step % every == 0:
                self._log_step(validate, loss)
        bar.close()
        if self.step > first_step and self.step % every:
            self._log_step(validate, loss)
        if early_stop:
            return self.run_dir / "best.safetensors"
        last = self.run_dir / "last.safetensors"
        save_weights(self.shipped, last, self.recipe.arch, {"step": str(self.step), "seed": str(self.recipe.seed)})
        return last

    def _done(self, early_stop: bool) -> bool:
        """At max_steps, at the time budget, or (when the best step ships) after `patience` stale validations."""
        optim = self.recipe.optim
        stalled = early_stop and self.stale >= self.recipe.validation.patience
        return self.step >= optim.max_steps or self.elapsed_s >= optim.time_budget_min * 60.0 or stalled

    def _step(self, batch: dict[str, np.ndarray]) -> float:
        lr = learning_rate(self.recipe.optim, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        faces = [self._augmented(name, batch) for name in face_inputs(self.model)]
        mels = augment_mels(torch.from_numpy(batch["mels"]).unsqueeze(1), self.recipe.augment, self.generator)
        audio_emb, face_emb = self.model(mels, *faces)
        loss = contrastive_loss(face_emb, audio_emb, torch.from_numpy(batch["video_key"]),
                                torch.from_numpy(batch["audio_key"]), self.logit_scale, self.recipe.batch.ambiguous_shift,
                                self.recipe.batch.cross_clip_negatives)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.item()

    def _augmented(self, name: str, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """The batch's face input `name` (crops or lips), augmented, as the model reads it."""
        if name == "lips":
            return augment_lips(torch.from_numpy(batch["lips"]), self.recipe.augment, self.generator)
        crops = compress_faces(batch["faces"], self.recipe.augment, self.generator)
        return augment_faces(pack_faces(torch.from_numpy(crops)), self.recipe.augment, self.generator)

    def _log_step(self, validate: WindowAUC | None, loss: float) -> None:
        """Log the step (with its validation AUC when there are validation clips) and checkpoint it."""
        scale = float(self.logit_scale.detach().exp())
        record = {"step": self.step, "elapsed_min": round(self.elapsed_s / 60, 2), "loss": round(loss, 4),
                  "logit_scale": round(scale, 2)}
        if validate is not None:
            auc = validate(self.shipped)
            improved = auc > self.best_auc
            if improved:
                self.best_auc, self.best_step, self.stale = auc, self.step, 0
                save_weights(self.shipped, self.run_dir / "best.safetensors", self.recipe.arch,
                             {"step": str(self.step), "validation_auc": f"{auc:.4f}", "seed": str(self.recipe.seed)})
            else:
                self.stale += 1
            record |= {"validation_auc": round(auc, 4), "best": improved}
        with open(self.run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        tqdm.write(json.dumps(record))
        self._checkpoint()

    def _checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "logit_scale": self.logit_scale.detach(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "elapsed_s": self.elapsed_s,
                 "best_auc": self.best_auc, "best_step": self.best_step, "stale": self.stale,
                 "numpy_rng": json.dumps(self.rng.bit_generator.state), "torch_rng": self.generator.get_state()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        partial = self.run_dir / "last.pt.partial"
        torch.save(state, partial)
        partial.replace(self.run_dir / "last.pt")

    def restore(self) -> None:
        """Continue from `last.pt` (weights_only: a checkpoint never runs code)."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            raise RtdiarError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            self.logit_scale.copy_(state["logit_scale"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.elapsed_s = state["step"], state["elapsed_s"]
        self.best_auc, self.best_step, self.stale = state["best_auc"], state["best_step"], state["stale"]
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.generator.set_state(state["torch_rng"])
