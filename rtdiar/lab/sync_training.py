"""Training rtdiar's sync head on LR-ASD's frozen front ends, and fitting its fusion with LR-ASD's logit.

Self-supervised, as the SyncNet experts are: every window of a clip's face embeddings must pick its
own sound window among the same clip's sound shifted by `min_shift` frames or more and the other
clips' sound in the batch, and every sound window its face (InfoNCE both ways). A batch is whole
clips: each tower's convolutions run once over a clip and every window is a view of them, so each
face window meets every shift of its clip at the cost of one.

The fusion is then a logistic regression on dev people (`fit_fusion`): per voiced frame, the
active-speaker logit and the cohort-relative sync score of a face with its own sound (talking) and of
other people's faces, talking on mute, with that sound. Its three numbers go into the head's file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from rtdiar.cohort import relative_scores
from rtdiar.config import PROJECT_ROOT, build_section, load_config
from rtdiar.errors import RtdiarError
from rtdiar.lab.dataset import DEFAULT_CACHE, find_clips
from rtdiar.lab.frontends import FrontendClip, prepare_features
from rtdiar.scorers.asd import EMBED_DIM
from rtdiar.scorers.registry import MODELS, resolve
from rtdiar.scorers.sync_head import SyncHead
from rtdiar.scorers.syncnet import build_model, load_weights, save_weights

DEFAULT_RECIPE = PROJECT_ROOT / "configs" / "train_sync_head.yaml"
R = TypeVar("R")
MAX_FRAMES_PER_SOUND = 250  # 10 s: a long dev clip does not outweigh the others in the fusion fit


@dataclass
class HeadRecipe:
    """configs/train_sync_head.yaml (`arch: sync_head` names it)."""

    arch: str
    frontends: str  # the registry name of the model whose front ends the head reads
    train: list[str]  # folders of in-sync clips
    dev: str  # dev/wild: the window AUC and the fusion fit
    out: str
    frames: int
    width: int
    epochs: int
    clips_per_batch: int
    min_shift: int  # shifts closer than this are neither positive nor negative
    learning_rate: float
    cohort_shifts: list[int]
    faces_per_sound: int  # mute talkers paired with each dev clip's sound for the fusion fit
    seed: int


def read_recipe(path: Path) -> dict:
    """A `rtdiar train` recipe's settings (one line when it cannot be read)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RtdiarError(f"cannot read the recipe {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RtdiarError(f"the recipe {path} is not a mapping of settings")
    return data


def build_recipe(cls: type[R], path: Path) -> R:
    """A recipe file as its dataclass (one line naming a missing setting)."""
    try:
        return build_section(cls, read_recipe(path), "")
    except KeyError as exc:
        raise RtdiarError(f"the recipe {path} lacks '{exc.args[0]}'") from None


def load_recipe(path: Path | None) -> HeadRecipe:
    return build_recipe(HeadRecipe, Path(path or DEFAULT_RECIPE))


def frontend_net(name: str) -> torch.nn.Module:
    net = build_model(MODELS[name].arch)
    load_weights(net, resolve(name))  # one line naming the download when it is not here
    return net.eval()


def clip_features(folders: list[str], recipe: HeadRecipe, net: torch.nn.Module) -> list[FrontendClip]:
    clips = find_clips([PROJECT_ROOT / folder for folder in folders])
    paths = prepare_features(clips, DEFAULT_CACHE, load_config(), net, recipe.frontends)
    return [FrontendClip.load(path) for path in paths]


def on_sound_rows(clip: FrontendClip, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The face embeddings laid on the sound's rows (zeros where no face) and which windows of
    `frames` are whole; None when fewer than two are."""
    faces, found = np.zeros_like(clip.sound), np.zeros(len(clip.sound), bool)
    rows = clip.first_frame + np.arange(len(clip.faces))
    inside = (rows >= 0) & (rows < len(clip.sound))
    faces[rows[inside]], found[rows[inside]] = clip.faces[inside], clip.valid[inside]
    whole = np.convolve(found.astype(int), np.ones(frames, int), "valid") == frames
    return (faces, whole) if whole.sum() >= 2 else None


def batch_loss(head: SyncHead, group: list[tuple[np.ndarray, np.ndarray, np.ndarray]], min_shift: int) -> torch.Tensor:
    """InfoNCE both ways over every whole window of the batch's clips (see the module's docstring)."""
    frames, length = head.frames, max(len(sound) for _, _, sound in group)
    faces, sounds = np.zeros((2, len(group), length, EMBED_DIM), np.float32)
    face_ok, sound_ok = np.zeros((2, len(group), length - frames + 1), bool)
    for i, (face, whole, sound) in enumerate(group):
        faces[i, :len(face)], sounds[i, :len(sound)] = face, sound
        face_ok[i, :len(whole)], sound_ok[i, :len(sound) - frames + 1] = whole, True
    return window_loss(head, torch.from_numpy(faces), torch.from_numpy(sounds), face_ok, sound_ok, min_shift)


def window_loss(head: SyncHead, faces: torch.Tensor, sounds: torch.Tensor, face_ok: np.ndarray, sound_ok: np.ndarray,
                min_shift: int) -> torch.Tensor:
    """InfoNCE both ways between the towers' windows of (B, L, 128) face and sound embeddings, level
    in time: each face window's own sound window against its clip's other shifts (>= `min_shift`
    frames) and the other clips' windows; `face_ok`, `sound_ok` (B, L - frames + 1) the windows that count."""
    face_emb = head.face.sequence(faces)[torch.from_numpy(face_ok)]
    sound_emb = head.sound.sequence(sounds)[torch.from_numpy(sound_ok)]
    face_clip, face_pos = np.nonzero(face_ok)
    sound_clip, sound_pos = np.nonzero(sound_ok)
    same = face_clip[:, None] == sound_clip[None, :]
    gap = np.abs(face_pos[:, None] - sound_pos[None, :])
    target = same & (gap == 0)
    logits = (face_emb @ sound_emb.T * head.logit_scale.exp().clamp(max=100)).masked_fill(
        torch.from_numpy(same & (gap > 0) & (gap < min_shift)), -1e4)
    heard = target.any(axis=0)
    return (F.cross_entropy(logits, torch.from_numpy(target.argmax(axis=1)))
            + F.cross_entropy(logits[:, torch.from_numpy(heard)].T, torch.from_numpy(target[:, heard].argmax(axis=0))))


def train_head(recipe: HeadRecipe, clips: list[FrontendClip]) -> SyncHead:
    """The head from scratch on the clips' front-end embeddings, whole clips a batch, one-cycle schedule."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    data = [(*laid, clip.sound) for clip in clips if (laid := on_sound_rows(clip, recipe.frames))]
    head = SyncHead(recipe.frames, recipe.width)
    batches = len(data) // recipe.clips_per_batch
    optimiser = torch.optim.AdamW(head.parameters(), recipe.learning_rate / 2, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, total_steps=recipe.epochs * batches)
    started = time.monotonic()
    for epoch in range(recipe.epochs):
        order, total = rng.permutation(len(data)), 0.0
        for b in range(batches):
            loss = batch_loss(head, [data[i] for i in order[b * recipe.clips_per_batch:(b + 1) * recipe.clips_per_batch]],
                              recipe.min_shift)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{recipe.epochs}: loss {total / max(batches, 1):.3f} "
              f"({time.monotonic() - started:.0f} s)", flush=True)
    return head.eval()


@dataclass
class Pairing:
    """A dev clip's sound with one face over the same frames: its own (the speaker) or another
    clip's (a face talking on mute). `features` (n, 2): active-speaker logit, relative sync score
    (a joint judgement's: each member's, side by side)."""

    sound: int
    face: int
    features: np.ndarray
    voiced: np.ndarray


def longest_run(valid: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of the longest run of True."""
    best, start = (0, 0), None
    for k, ok in enumerate(np.append(valid, False)):
        if ok and start is None:
            start = k
        elif not ok and start is not None:
            best, start = max(best, (start, k), key=lambda run: run[1] - run[0]), None
    return best


def first_scored(head: SyncHead, cohort: range, window: int) -> int:
    """The first row of a track with a full live score: the back end's window, and the cohort's
    past sound with the head's whole window behind each of it."""
    return max(window - 1, cohort.stop - 1 + head.frames - 1)


def pairing_features(net: torch.nn.Module, head: SyncHead, face: np.ndarray, sound: np.ndarray,
                     cohort: range, window: int) -> np.ndarray:
    """(n, 2) per frame from `first_scored` on, as the live scorer computes them on a track that
    starts at row 0: the active-speaker logit over the last `window` frames and the head's sync
    score relative to its cohort. `face` and `sound` (N, 128) are the front ends' rows, level."""
    first, frames = first_scored(head, cohort, window), head.frames
    faces, heard = torch.from_numpy(face), torch.from_numpy(sound)

    def windows(table: torch.Tensor, ends: np.ndarray, length: int) -> torch.Tensor:
        return table[torch.as_tensor(ends)[:, None] + torch.arange(-length + 1, 1)]

    scored, embedded = np.arange(first, len(face)), np.arange(frames - 1, len(face))
    with torch.inference_mode():
        logits = net.speaking_logits(windows(heard, scored, window), windows(faces, scored, window))[:, -1].numpy()
        face_emb = head.face(windows(faces, embedded, frames)).numpy()
        lead = cohort.stop  # zero rows before the track, so every row has its cohort rows (read only before `first`)
        sound_emb = np.zeros((lead + len(sound), face_emb.shape[1]), np.float32)
        sound_emb[lead + embedded] = head.sound(windows(heard, embedded, frames)).numpy()
    sync = relative_scores(face_emb, sound_emb, lead + embedded, cohort)[first - frames + 1:]
    return np.stack([logits, sync], axis=1)


def dev_pairings(net: torch.nn.Module, head: SyncHead, clips: list[FrontendClip], recipe: HeadRecipe,
                 window: int) -> list[Pairing]:
    """Each dev clip's sound with its own face and with `faces_per_sound` others' laid on it, over
    its longest face run (at most `MAX_FRAMES_PER_SOUND` scored frames)."""
    cohort = range(recipe.cohort_shifts[0], recipe.cohort_shifts[1] + 1)
    first = first_scored(head, cohort, window)
    rng = np.random.default_rng(recipe.seed)
    runs = [longest_run(clip.valid) for clip in clips]
    pairings = []
    for j, speaker in enumerate(clips):
        start = max(runs[j][0], -speaker.first_frame)
        stop = min(runs[j][1], len(speaker.sound) - speaker.first_frame, start + first + MAX_FRAMES_PER_SOUND)
        if stop - start - first < 25:
            continue
        rows = slice(speaker.first_frame + start, speaker.first_frame + stop)
        others = rng.choice([i for i in range(len(clips)) if i != j], recipe.faces_per_sound, replace=False)
        for i in [j, *others]:
            face = clips[i].faces[start:stop] if i == j else clips[i].faces[runs[i][0]:runs[i][1]][:stop - start]
            if len(face) - first >= 25:
                sound = speaker.sound[rows][:len(face)]
                voiced = speaker.speech[rows][first:len(face)] > 0.5
                features = pairing_features(net, head, face, sound, cohort, window)
                pairings.append(Pairing(j, int(i), features, voiced))
    return pairings


def fit_fusion(pairings: list[Pairing]) -> np.ndarray:
    """(3,) weights of the logit, the sync score and a bias: a logistic regression of "this face
    is the one talking" on the voiced frames, each side weighted equally."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([p.features[p.voiced] for p in pairings])
    speaking = np.concatenate([np.full(p.voiced.sum(), p.face == p.sound) for p in pairings])
    fit = LogisticRegression(class_weight="balanced").fit(features, speaking)
    return np.array([*fit.coef_[0], fit.intercept_[0]], np.float32)


def right_person(pairings: list[Pairing], fusion: np.ndarray) -> float:
    """Share of voiced frames on which the speaker's fused score beats every face talking on mute."""
    by_sound: dict[int, list[Pairing]] = {}
    for p in pairings:
        by_sound.setdefault(p.sound, []).append(p)
    right = total = 0
    for sound, group in by_sound.items():
        n = min(len(p.features) for p in group)
        scores = np.stack([p.features[:n] @ fusion[:-1] + fusion[-1] for p in group])
        own = np.array([p.face == sound for p in group])
        voiced = group[int(np.argmax(own))].voiced[:n]
        right += int((own[scores.argmax(axis=0)] & voiced).sum())
        total += int(voiced.sum())
    return right / max(total, 1)


def fused_cv(pairings: list[Pairing], folds: int = 5) -> float:
    """Right person with the fusion fitted on the other folds' sounds (by person)."""
    sounds = sorted({p.sound for p in pairings})
    fold_of = {sound: k % folds for k, sound in enumerate(sounds)}
    fused = []
    for k in range(folds):
        fusion = fit_fusion([p for p in pairings if fold_of[p.sound] != k])
        fused.append(right_person([p for p in pairings if fold_of[p.sound] == k], fusion))
    return float(np.mean(fused))


def cross_validated(pairings: list[Pairing], folds: int = 5) -> dict[str, float]:
    """Right person with the fusion cross-validated by person (`fused_cv`), beside the
    active-speaker logit alone and the sync score alone."""
    return {"fused": fused_cv(pairings, folds),
            "asd_only": right_person(pairings, np.array([1.0, 0.0, 0.0])),
            "sync_only": right_person(pairings, np.array([0.0, 1.0, 0.0]))}


def train_sync_head(recipe: HeadRecipe, out: Path | None = None, overwrite: bool = False) -> dict:
    """The whole recipe: front ends of the train and dev clips (cached), the head, the fusion fitted
    on dev people, the file (atomic; an existing one only with `overwrite`). Returns the figures."""
    out = writable(out or PROJECT_ROOT / recipe.out, overwrite)
    net = frontend_net(recipe.frontends)
    head = train_head(recipe, clip_features(recipe.train, recipe, net))
    figures = fit_on_dev(recipe, head, net, clip_features([recipe.dev], recipe, net))
    save_weights(head, out, "sync_head", {"frontends": recipe.frontends, "frames": str(recipe.frames),
                                          **fusion_metadata(recipe, figures)})
    print(f"wrote {out}")
    return figures


def fusion_metadata(recipe: HeadRecipe, figures: dict) -> dict[str, str]:
    """What a fused model's file says of its fusion: the cohort it is measured against (read live)
    and its cross-validated mute-test figure."""
    low, high = recipe.cohort_shifts
    return {"cohort_shifts": f"{low},{high}", "right_person_cv": f"{figures['fused']:.4f}"}


def writable(out: Path, overwrite: bool) -> Path:
    """The recipe's output file, refused up front when it exists and `overwrite` was not asked."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise RtdiarError(f"{out} exists: pass --overwrite to replace it")
    return out


def fit_on_dev(recipe: HeadRecipe, head: SyncHead, net: torch.nn.Module, dev: list[FrontendClip]) -> dict:
    """Fit the head's fusion with `net`'s speaking logit on the dev people's front ends, and report
    it cross-validated by person."""
    window = load_config().asd.window_frames
    pairings = dev_pairings(net, head, dev, recipe, window)
    figures = cross_validated(pairings)
    head.fusion.copy_(torch.from_numpy(fit_fusion(pairings)))
    print(f"right person on dev voiced frames, one speaker against {recipe.faces_per_sound} faces talking on mute "
          f"(5 folds by person): fused {figures['fused']:.1%}, speaking logit alone {figures['asd_only']:.1%}, "
          f"sync alone {figures['sync_only']:.1%}; fusion {head.fusion.tolist()}")
    return figures
