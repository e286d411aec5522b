"""`rtdiar evaluate`: the figures a lip-sync model is judged by, on people it never saw (`dev/`).

1. Window AUC: each face window with its own audio (in sync) against the same face with the audio
   5, 10 or 15 frames earlier or later (off sync), over every window and over voiced ones; and
   the AUC a perfect detector could reach on the same pairings, for which silence is no evidence.
2. Clip offset: the clip's audio moved by -10, -5, 0, +5, +10 frames, found again by the offset
   tool's estimate within ±1 frame.
3. Two faces, one voice: face A's audio scored against A's face and another clip's face B at the
   same times, 1 s causal average, as the engine decides: is A ranked first?
4. The engine itself on `dev/multi`: the singer in hamilton, and false alarms in a crowd nobody
   in which speaks.

Figures 1 and 3 score windows as the engine does: relative to their off-sync pairings when
`decision.cohort_shifts` is set (`rtdiar.cohort`), and they are also given on the model's raw
cosine then. The offset search compares shifts of one window, so it reads the raw cosine.

Figures 1 to 3 use the prepared clips (the engine's own tracker crops and mel, cached); every face
window and every audio window is embedded once, and a pairing is a dot product. Everything is
deterministic: same clips, same windows, same order.

With a frame scale below 1, figures 1 to 3 are measured on the same clips with every frame shrunk
first: the same people further from the camera, so face size is the only thing that changes.
Figure 4 needs the engine on the file as recorded and is left out then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from rtdiar.lab import dataset
from rtdiar.audio import VoiceActivity
from rtdiar.cohort import relative_scores
from rtdiar.config import PROJECT_ROOT, Config
from rtdiar.lab.dataset import PreparedClip
from rtdiar.errors import RtdiarError
from rtdiar.scorers.inference import SyncScorer
from rtdiar.offset import ClipWindows, clip_windows, read_offset
from rtdiar.sources import FileSource
from rtdiar.types import FrameResult
from rtdiar.windows import MEL_FPS

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "dev"
OFF_SYNC_SHIFTS = (-15, -10, -5, 5, 10, 15)  # frames; what counts as off sync for the window AUC
APPLIED_SHIFTS = (-10, -5, 0, 5, 10)  # frames the audio is moved by for the offset figure (multiples of 5)
OFFSET_SEARCH = 15  # the offset tool's default ±search (offset.max_shift), fixed here so the figure is too
OFFSET_TOLERANCE = 1  # frames: an estimate this close to the applied shift is right
WINDOWS_PER_CLIP = 60  # the window AUC takes at most this many windows per clip, evenly spaced
SMOOTH_S = 1.0  # the two-faces figure's causal average, as the engine's default smoothing
TARGETS = {"window_auc": 0.95, "offset": 0.95, "two_faces": 0.95, "hamilton": 0.90}
WORST_SHOWN = 5

HAMILTON = "hamilton_two_faces_one_singer.mp4"
CROWD = "crowd_nobody_speaks.mp4"
# Frames [start, stop) of hamilton in which the performer is on screen, found by looking at the
# frames and at the cuts (frame-difference spikes at frames 20, 82 and 211 of the 29.97 fps file):
# 0-19 a wide shot of him singing, 20-81 a close-up profile of a pianist with the audience behind
# (only audience faces are detected), 82-210 him singing in a medium shot, 211 on the audience.
# In his shots he is the only face the detector finds, so he is the largest box; ids are not used,
# since every cut gives him a new one (and with `tracker.cut_threshold: 0` an audience face's id
# goes on to him at frame 82).
PERFORMER_FRAMES = ((0, 20), (82, 211))


@dataclass
class ClipEmbeddings:
    """One dev clip's face windows and audio windows, embedded once for every figure.

    Face window i starts at grid frame `starts[i]`; row `starts[i] - starts[0] + margin + s`
    of `audio[d]` is the audio window `s` frames later than it, with the clip's audio moved `d`
    frames later (silence beyond the clip, as the offset tool pads). The margin covers the offset
    search and, before it, the engine's cohort of past sound (`decision.cohort_shifts`).
    """

    name: str
    starts: np.ndarray  # (n,) grid frames of the valid face windows
    faces: np.ndarray  # (n, D) unit vectors
    audio: dict[int, np.ndarray]  # applied shift -> (n_rows, D) unit vectors
    voiced: np.ndarray  # (n,) bool: the window's own audio is speech (Silero VAD)
    inside: np.ndarray  # (n, len(OFF_SYNC_SHIFTS)) bool: the off-sync audio lies within the clip
    voiced_off: np.ndarray  # (n, len(OFF_SYNC_SHIFTS)) bool: the off-sync audio is speech
    face_px: float  # median height of the tracked face box, in the frames the detector saw
    tracked: float  # share of the clip's frames with a tracked face
    margin: int = OFFSET_SEARCH  # audio rows before the first window's own

    def similarities(self, applied_shift: int = 0) -> np.ndarray:
        """(n, 2 * OFFSET_SEARCH + 1): window i with the audio s = column - OFFSET_SEARCH frames later."""
        rows = self._rows(-OFFSET_SEARCH)
        audio = self.audio[applied_shift]
        return np.stack([np.einsum("nd,nd->n", self.faces, audio[rows + j])
                         for j in range(2 * OFFSET_SEARCH + 1)], axis=1)

    def scores(self, cohort: range | None, shift: int = 0, faces: np.ndarray | None = None) -> np.ndarray:
        """(n,) the engine's score of each window with the clip's sound `shift` frames later: relative
        to its off-sync pairings with a cohort, else the raw cosine. `faces` (n, D) puts other faces,
        in time order, on the same sound."""
        faces = self.faces if faces is None else faces
        if cohort is None:
            return np.einsum("nd,nd->n", faces, self.audio[0][self._rows(shift)])
        return relative_scores(faces, self.audio[0], self._rows(shift), cohort)

    def _rows(self, shift: int) -> np.ndarray:
        return self.starts - self.starts[0] + self.margin + shift


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Probability that a positive outscores a negative (ties count half): the Mann-Whitney U over
    both counts. None when either side is empty."""
    if len(positives) == 0 or len(negatives) == 0:
        return None
    ranks = rankdata(np.concatenate([positives, negatives]))
    n_pos = len(positives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negatives)))


def speech_windows(clip: PreparedClip, starts: np.ndarray, wave: np.ndarray, config: Config,
                   mel_frames: int) -> np.ndarray:
    """Whether the audio windows at grid frames `starts` (any shape) are speech, by the engine's VAD
    rule (the clip's audio, sample 0 at t = 0); the VAD runs over the clip once."""
    sample_rate = config.audio.sample_rate
    vad = VoiceActivity(sample_rate, history_s=len(wave) / sample_rate + 1.0)
    vad.push(wave)
    start_s = (clip.first_frame + np.ravel(starts)) / clip.fps
    probs = [vad.speech_prob(t, t + mel_frames / MEL_FPS) for t in start_s]
    speech = [p is not None and p >= config.decision.vad_threshold for p in probs]
    return np.array(speech, dtype=bool).reshape(np.shape(starts))


def embed_clip(clip: PreparedClip, wave: np.ndarray, windows: ClipWindows, config: Config) -> ClipEmbeddings | None:
    """Every valid face window of the clip and every audio window its figures pair it with; None
    when the face is never tracked on a whole window."""
    starts = windows.starts(clip)
    if len(starts) == 0:
        return None
    faces = windows.faces(clip, starts)
    cohort = windows.cohort
    margin = OFFSET_SEARCH + (cohort[-1] if cohort else 0)
    grid = np.arange(starts[0] - margin, starts[-1] + OFFSET_SEARCH + 1)
    audio = {shift: windows.sounds(clip, wave, grid, shift) for shift in APPLIED_SHIFTS}
    paired = starts[:, None] + np.array((0, *OFF_SYNC_SHIFTS))  # each window's own audio, then its off-sync audio
    speech = speech_windows(clip, paired, wave, config, windows.mel_frames)
    return ClipEmbeddings(clip.name, starts, faces, audio, speech[:, 0], clip.audio_inside(paired[:, 1:], windows.mel_frames),
                          speech[:, 1:], clip.face_px, clip.tracked_share(), margin)


def window_auc_figure(clips: list[ClipEmbeddings], cohort: range | None = None) -> dict:
    """In sync vs off sync, over at most WINDOWS_PER_CLIP evenly spaced windows per clip.

    `ceiling`: the AUC of a perfect detector on the same pairings. A face with silence looks the same
    in sync or not, so it ranks every pairing with speech right and can only guess between an in-sync
    and an off-sync pairing whose sounds are both silent. It takes the recordings as in sync, so it is
    generous where they are not."""
    positives, negatives, voiced_pos, voiced_neg, heard_pos, heard_neg, per_clip = [], [], [], [], [], [], {}
    for clip in clips:
        count = len(clip.starts)
        pick = np.unique(np.linspace(0, count - 1, min(count, WINDOWS_PER_CLIP)).round().astype(int))
        pos = clip.scores(cohort)[pick]
        off = np.stack([clip.scores(cohort, shift)[pick] for shift in OFF_SYNC_SHIFTS], axis=1)
        inside, voiced = clip.inside[pick], clip.voiced[pick]
        positives.append(pos)
        negatives.append(off[inside])
        voiced_pos.append(pos[voiced])
        voiced_neg.append(off[inside & voiced[:, None]])
        heard_pos.append(voiced)
        heard_neg.append(clip.voiced_off[pick][inside])
        per_clip[clip.name] = roc_auc(pos, off[inside])
    heard_pos, heard_neg = np.concatenate(heard_pos), np.concatenate(heard_neg)
    return {"all": roc_auc(np.concatenate(positives), np.concatenate(negatives)),
            "voiced": roc_auc(np.concatenate(voiced_pos), np.concatenate(voiced_neg)),
            "ceiling": roc_auc(np.where(heard_pos, 1.0, 0.5), np.where(heard_neg, 0.0, 0.5)),
            "positives": int(sum(map(len, positives))), "negatives": int(sum(map(len, negatives))),
            "voiced_positives": int(sum(map(len, voiced_pos))), "per_clip": per_clip}


def offset_figure(clips: list[ClipEmbeddings], config: Config) -> dict:
    """The offset tool's reading for every clip and applied shift; right within OFFSET_TOLERANCE.

    Also each applied shift measured from the clip's own reading at 0 ("relative"): a clip whose
    recording is itself out of sync misses every absolute case, yet a tool that follows the shift
    gets all its relative ones right. And how often the readings the tool calls unreliable
    (`offset.min_confidence`, the edge of the search) are right, against the others.
    """
    readings = {clip.name: [read_offset(clip.name, clip.similarities(shift), config) for shift in APPLIED_SHIFTS]
                for clip in clips}
    per_clip = {name: [reading.offset_frames for reading in found] for name, found in readings.items()}
    right = np.array([abs(found - shift) <= OFFSET_TOLERANCE
                      for estimates in per_clip.values() for found, shift in zip(estimates, APPLIED_SHIFTS)])
    trusted = np.array([reading.reliable for found in readings.values() for reading in found])
    zero = APPLIED_SHIFTS.index(0)
    followed = [abs(found - estimates[zero] - shift) <= OFFSET_TOLERANCE
                for estimates in per_clip.values() for found, shift in zip(estimates, APPLIED_SHIFTS) if shift]
    return {"accuracy": float(right.mean()), "cases": len(right),
            "relative_accuracy": float(np.mean(followed)), "relative_cases": len(followed),
            "reliable_cases": int(trusted.sum()),
            "reliable_accuracy": float(right[trusted].mean()) if trusted.any() else None,
            "unreliable_right": int(right[~trusted].sum()),
            "applied_shifts": list(APPLIED_SHIFTS), "max_shift": OFFSET_SEARCH, "tolerance": OFFSET_TOLERANCE,
            "per_clip": per_clip}


def smoothed_pair_scores(a: ClipEmbeddings, b: ClipEmbeddings, smooth_windows: int,
                         cohort: range | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A's audio scored with A's face and with B's face (B looped when shorter, as one track), window
    by window as the engine scores them, each averaged over the last `smooth_windows` scored windows
    as the engine does; kept at every time A's audio is voiced and that much history exists.

    A clip's valid windows are taken as consecutive (a lost frame is rare and only joins two runs).
    """
    if len(a.starts) < smooth_windows:
        return np.zeros(0), np.zeros(0)
    kernel = np.ones(smooth_windows) / smooth_windows
    other_faces = b.faces[np.arange(len(a.starts)) % len(b.starts)]
    own = np.convolve(a.scores(cohort), kernel, "valid")
    other = np.convolve(a.scores(cohort, faces=other_faces), kernel, "valid")
    voiced = a.voiced[smooth_windows - 1:]
    return own[voiced], other[voiced]


def equal_error_threshold(speaking: np.ndarray, silent: np.ndarray) -> tuple[float, float]:
    """The smoothed score that misses as many speaking faces as it accepts silent ones, and that rate:
    the natural `decision.threshold` for a model, whose score scale is its own."""
    candidates = np.unique(np.concatenate([speaking, silent]))
    miss = np.searchsorted(np.sort(speaking), candidates) / len(speaking)
    accept = 1.0 - np.searchsorted(np.sort(silent), candidates) / len(silent)
    best = int(np.argmin(np.abs(miss - accept)))
    return float(candidates[best]), float((miss[best] + accept[best]) / 2)


def two_faces_figure(clips: list[ClipEmbeddings], smooth_windows: int, cohort: range | None = None) -> dict:
    """Over every ordered pair (A, B) of different clips (`smoothed_pair_scores`): the fraction of
    all voiced decision times, and of the pairs, where A's face is first (pairs with no voiced
    decision time left out)."""
    scores = {(a.name, b.name): smoothed_pair_scores(a, b, smooth_windows, cohort)
              for a in tqdm(clips, desc="two faces", unit="clip") for b in clips if b is not a}
    scores = {pair: pair_scores for pair, pair_scores in scores.items() if len(pair_scores[0])}
    outcomes = {pair: own > other for pair, (own, other) in scores.items()}
    threshold, error = (equal_error_threshold(np.concatenate([own for own, _ in scores.values()]),
                                              np.concatenate([other for _, other in scores.values()]))
                        if scores else (None, None))
    per_clip = {}
    for clip in clips:
        own = [first for (a, _), first in outcomes.items() if a == clip.name]
        per_clip[clip.name] = float(np.concatenate(own).mean()) if own else None
    everything = np.concatenate(list(outcomes.values())) if outcomes else np.zeros(0, dtype=bool)
    return {"accuracy": float(everything.mean()) if len(everything) else None, "time_points": len(everything),
            "pairs": len(outcomes),
            "pairs_won": float(np.mean([first.mean() > 0.5 for first in outcomes.values()])) if outcomes else None,
            "smooth_windows": smooth_windows, "per_clip": per_clip,
            "equal_error_threshold": threshold, "equal_error_rate": error}


def run_engine(path: Path, config: Config, scorer: SyncScorer) -> list[FrameResult]:
    """Every frame's result of the real engine on a file, fast (no frame dropped); images let go."""
    from rtdiar.engine import Diarizer

    source = FileSource(path, None, "fast", config.video, config.audio)
    info = source.video_info
    total = int(info.duration_s * source.fps) if info.duration_s else None
    results = []
    try:
        for result in tqdm(Diarizer(config, scorer).run(source), desc=path.name, unit="frame", total=total):
            result.image = None
            results.append(result)
    finally:
        source.close()
    return results


def _box_area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def hamilton_figure(results: list[FrameResult]) -> dict:
    """On voiced frames with the performer on screen: is he the chosen speaker, is his smoothed
    score the highest; on voiced frames without him: is anybody (the audience) chosen?"""
    def on_screen(frame: int) -> bool:
        return any(start <= frame < stop for start, stop in PERFORMER_FRAMES)

    chosen = top = shown = audience = hidden = 0
    for result in (r for r in results if r.speech):
        if not on_screen(result.frame):
            hidden += 1
            audience += result.speaker is not None
            continue
        shown += 1
        if not result.faces:
            continue
        performer = max(result.faces, key=lambda face: _box_area(face.box))
        chosen += result.speaker == performer.id
        scores = [face.score for face in result.faces if face.score is not None]
        top += performer.score is not None and performer.score == max(scores)
    return {"voiced_frames_performer_shown": shown,
            "performer_chosen": chosen / shown if shown else None,
            "performer_top_score": top / shown if shown else None,
            "voiced_frames_performer_hidden": hidden,
            "audience_chosen": audience / hidden if hidden else None}


def crowd_figure(results: list[FrameResult]) -> dict:
    """Nobody speaks: every frame with a chosen speaker is a false alarm."""
    frames = len(results)
    return {"frames": frames,
            "speaker_chosen": sum(r.speaker is not None for r in results) / frames if frames else None,
            "speech_heard": sum(r.speech for r in results) / frames if frames else None}


def load_dev_clips(clip_paths: list[Path], cache_dir: Path, config: Config, windows: ClipWindows,
                   scale: float = 1.0) -> tuple[list[ClipEmbeddings], list[str]]:
    """The clips prepared (cached) and embedded; the names of those with no usable face track."""
    kind = {"lips": windows.needs_lips, "asd": windows.asd_crops}
    dataset.prepare_clips(clip_paths, cache_dir, config, scale=scale, **kind)
    embedded, skipped = [], []
    for path in tqdm(clip_paths, desc="embedding dev clips", unit="clip"):
        npz = dataset.cache_path(path, cache_dir, config, scale, **kind)
        clip = PreparedClip.load(npz) if npz.exists() else None
        wave = FileSource(path, None, "fast", config.video, config.audio).aligned_audio() if clip else None
        result = embed_clip(clip, wave, windows, config) if clip else None
        if result is None:
            skipped.append(path.name)
        else:
            embedded.append(result)
    return embedded, skipped


def evaluate_model(config: Config, scorer: SyncScorer, data_dir: Path | None = None,
                   cache_dir: Path | None = None, clips: list[Path] | None = None, scale: float = 1.0) -> dict:
    """Every figure of the model on the dev set, as a JSON-ready dict (see `format_report`); the
    single-face figures on `clips` instead of dev/wild when given (a k-fold fold's held-out clips),
    and on frames shrunk by `scale` when it is below 1 (small faces; no engine figures then)."""
    if not 0.0 < scale <= 1.0:
        raise RtdiarError(f"frame scale must be in (0, 1], got {scale:g}")
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA
    cache_dir = Path(cache_dir) if cache_dir is not None else dataset.DEFAULT_CACHE
    wild = data_dir / "wild"
    if clips is None and not wild.is_dir():
        raise RtdiarError(f"no dev data: {wild} is not a folder (pass --data DIR, a folder holding wild/ and multi/)")
    clip_paths = dataset.find_clips([wild]) if clips is None else clips
    if not clip_paths:
        raise RtdiarError(f"no video files in {wild if clips is None else 'the held-out clips'}")
    windows = clip_windows(scorer, config)
    embedded, skipped = load_dev_clips(clip_paths, cache_dir, config, windows, scale)
    if not embedded:
        raise RtdiarError(f"no face tracked in any of the {len(clip_paths)} clips")
    source = str(data_dir) if clips is None else os.path.commonpath([path.parent for path in clip_paths])
    cohort, smooth_windows = windows.cohort, int(round(SMOOTH_S * config.window.fps))
    figures = {"arch": config.model.named_arch() or getattr(scorer.model, "arch", type(scorer.model).__name__),
               "data": source,
               "clips": len(embedded), "clips_without_face": skipped, "frame_scale": scale,
               "face": {"median_px": float(np.median([clip.face_px for clip in embedded])),
                        "tracked": float(np.mean([clip.tracked for clip in embedded])),
                        "per_clip": {clip.name: {"px": clip.face_px, "tracked": clip.tracked} for clip in embedded}},
               "cohort_shifts": [cohort[0], cohort[-1]] if cohort else None,
               "window_auc": window_auc_figure(embedded, cohort), "offset": offset_figure(embedded, config),
               "two_faces": two_faces_figure(embedded, smooth_windows, cohort)}
    if cohort is not None:  # what the cohort adds: the same figures on the model's raw cosine
        figures["raw"] = {"window_auc": window_auc_figure(embedded),
                          "two_faces": two_faces_figure(embedded, smooth_windows)}
    for key, name, figure in (("hamilton", HAMILTON, hamilton_figure), ("crowd", CROWD, crowd_figure)):
        path = data_dir / "multi" / name
        figures[key] = figure(run_engine(path, config, scorer)) if path.exists() and scale == 1.0 else None
    return figures


def _value(value: float | None, percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def _row(label: str, value: float | None, percent: bool, target: float | None = None) -> str:
    goal, verdict = "", ""
    if target is not None:
        goal = f">= {100 * target:.0f} %" if percent else f">= {target:.2f}"
        verdict = "n/a" if value is None else ("ok" if value >= target else "short")
    return f"  {label:<50} {_value(value, percent):>9}  {goal:>9}  {verdict}"


def _worst(per_clip: dict[str, float | None], percent: bool) -> str:
    ranked = sorted((v, name) for name, v in per_clip.items() if v is not None)[:WORST_SHOWN]
    return ", ".join(f"{name} {_value(v, percent)}" for v, name in ranked) or "n/a"


def _offset_misses(offset: dict) -> str:
    """The clips with the most wrong estimates, as `name missed/cases`."""
    missed = {name: sum(abs(found - applied) > offset["tolerance"]
                        for applied, found in zip(offset["applied_shifts"], estimates))
              for name, estimates in offset["per_clip"].items()}
    worst = sorted(((-count, name) for name, count in missed.items() if count))[:WORST_SHOWN]
    return ", ".join(f"{name} {-count}/{len(offset['applied_shifts'])}" for count, name in worst) or "none"


def _raw_rows(figures: dict, figure: str, key: str, percent: bool) -> list[str]:
    """The figure on the model's raw cosine, when the scores were measured against a cohort."""
    raw = figures.get("raw")
    return [_row("  the model's raw cosine, without the cohort", raw[figure][key], percent)] if raw else []


def format_report(figures: dict) -> str:
    """A compact table: each figure, its target from the issue, and the clips where it fails."""
    auc, offset, two = figures["window_auc"], figures["offset"], figures["two_faces"]
    shrunk = (f", every frame shrunk to {figures['frame_scale']:g}x (no engine figures: they need the file as "
              "recorded)") if figures["frame_scale"] != 1.0 else ""
    cohort = figures.get("cohort_shifts")
    scored = (f"scores relative to off-sync pairings {cohort[0]}-{cohort[1]} frames back (rtdiar.cohort)"
              if cohort else "raw cosine scores")
    lines = [f"rtdiar evaluate: model {figures['arch']}, {figures['clips']} dev clips from {figures['data']}{shrunk}",
             f"  {scored}",
             f"  {'figure':<50} {'value':>9}  {'target':>9}",
             f"  {'tracked face height, median of the clips (px)':<50} {figures['face']['median_px']:>9.0f}",
             _row("frames with a tracked face, mean of the clips", figures["face"]["tracked"], True),
             _row("window AUC, in sync vs |shift| 5-15 frames", auc["all"], False, TARGETS["window_auc"]),
             _row(f"  voiced windows only ({auc['voiced_positives']} of {auc['positives']})", auc["voiced"], False),
             _row("  a perfect detector, silent pairings a coin toss", auc["ceiling"], False),
             *_raw_rows(figures, "window_auc", "all", False),
             _row(f"clip offset within ±{offset['tolerance']} ({offset['cases']} clip x shift)",
                  offset["accuracy"], True, TARGETS["offset"]),
             _row(f"  the shift, from the clip's own reading at 0 ({offset['relative_cases']})",
                  offset["relative_accuracy"], True),
             _row(f"  reliable readings ({offset['reliable_cases']}; others right: {offset['unreliable_right']} of "
                  f"{offset['cases'] - offset['reliable_cases']})", offset["reliable_accuracy"], True),
             _row(f"two faces one voice: A first ({two['time_points']} times)", two["accuracy"], True,
                  TARGETS["two_faces"]),
             _row(f"  pairs where A is first most of the time ({two['pairs']})", two["pairs_won"], True),
             *_raw_rows(figures, "two_faces", "accuracy", True),
             _row("  equal-error smoothed score (speaking vs other face)", two["equal_error_threshold"], False),
             _row("  equal-error rate at it", two["equal_error_rate"], True)]
    hamilton, crowd = figures.get("hamilton"), figures.get("crowd")
    if hamilton is not None:
        lines += [_row(f"hamilton: performer chosen ({hamilton['voiced_frames_performer_shown']} voiced frames)",
                       hamilton["performer_chosen"], True, TARGETS["hamilton"]),
                  _row("  performer's smoothed score the highest", hamilton["performer_top_score"], True),
                  _row(f"  audience chosen, performer off screen ({hamilton['voiced_frames_performer_hidden']})",
                       hamilton["audience_chosen"], True)]
    if crowd is not None:
        lines.append(_row(f"crowd, nobody speaks: frames with a speaker ({crowd['frames']})",
                          crowd["speaker_chosen"], True))
    lines += ["worst clips",
              f"  window AUC: {_worst(auc['per_clip'], False)}",
              f"  as the voice in two faces: {_worst(two['per_clip'], True)}",
              f"  clip offset misses: {_offset_misses(offset)}"]
    if figures["clips_without_face"]:
        lines.append(f"  no face tracked (left out): {', '.join(figures['clips_without_face'])}")
    return "\n".join(lines)
