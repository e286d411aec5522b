"""The audio-video offset of a clip, the SyncNet way, and a copy of the clip with its audio moved into sync.

Every 5-frame face window k is compared with the audio window at grid frame k + s for every shift
s in [-max_shift, +max_shift] (25 fps window frames, whatever the source frame rate). A window's
confidence is how far its best shift stands above its median (the similarity analogue of SyncNet's
median - minimum distance), and the clip curve is the confidence-weighted mean of the windows'
curves: a silent window has a flat curve, so it barely counts, where a plain average would let many
silent windows outvote the few that carry speech.

Sign: a positive offset means the audio LAGS the video (the sound of a lip movement comes that many
frames later); the fix moves the audio content earlier by that much.

A clip without speech, or with lips the model cannot read, still has a highest point on its curve,
and moving its sound by it would do harm. So a reading is called unreliable when its confidence is
below `offset.min_confidence`, or when it lies on the edge of the search: there the curve may still
be rising, and in a short clip the silence padded beyond it can make the edge look best.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rtdiar.audio import MEL_SILENCE
from rtdiar.config import Config, WindowConfig
from rtdiar.lab.dataset import PreparedClip, track_clip
from rtdiar.errors import RtdiarError
from rtdiar.scorers.inference import SyncScorer
from rtdiar.lips import LipLandmarker
from rtdiar.media import MediaInfo, probe, require_tool
from rtdiar.sources import FileSource
from rtdiar.tracking import FaceDetector
from rtdiar.windows import MEL_FPS

SIGN_CONVENTION = "positive: audio lags video (the sound comes later than the lips); the fix moves the audio earlier"


@dataclass
class OffsetResult:
    """A clip's offset, in 25 fps window frames and in milliseconds, and how sure the model is."""

    file: str
    offset_frames: int
    offset_ms: float
    confidence: float
    max_shift: int
    windows: int  # face windows that voted
    curve: list[float]  # the clip's similarity per shift, -max_shift .. +max_shift
    min_confidence: float  # below it the reading is not to be trusted

    @property
    def doubt(self) -> str | None:
        """Why the reading is not to be trusted, or None when it is."""
        if abs(self.offset_frames) >= self.max_shift:
            return f"on the edge of the ±{self.max_shift} search, the peak may lie beyond it"
        if self.confidence < self.min_confidence:
            return (f"confidence below {self.min_confidence:g}, no clear lip-sync peak (little speech, or lips the "
                    "model cannot read)")
        return None

    @property
    def reliable(self) -> bool:
        return self.doubt is None

    def to_json(self) -> dict:
        return {"file": self.file, "offset_frames": self.offset_frames, "offset_ms": self.offset_ms,
                "confidence": round(self.confidence, 4), "reliable": self.reliable, "doubt": self.doubt,
                "min_confidence": self.min_confidence, "sign": SIGN_CONVENTION, "max_shift": self.max_shift,
                "windows": self.windows, "curve": [round(value, 4) for value in self.curve]}

    def describe(self) -> str:
        frames = abs(self.offset_frames)
        if frames == 0:
            verdict = "audio and video in sync"
        else:
            way = "lags" if self.offset_frames > 0 else "leads"
            verdict = f"audio {way} video by {frames} frame{'s' * (frames != 1)} ({abs(self.offset_ms):.0f} ms)"
        line = f"{self.file}: {verdict}, confidence {self.confidence:.2f} ({self.windows} windows)"
        return line if self.reliable else f"{line}; unreliable: {self.doubt}"


def estimate_offset(sims: np.ndarray) -> tuple[int, float, np.ndarray]:
    """(offset_frames, confidence, clip curve) from `sims` (windows, 2 * max_shift + 1): sims[k, i] is
    window k's similarity with the audio shifted by i - max_shift frames.

    Ties go to the shift nearest 0: a clip with no evidence either way is called in sync.
    """
    if sims.ndim != 2 or sims.shape[1] % 2 == 0 or len(sims) == 0:
        raise ValueError(f"sims must be (windows, 2 * max_shift + 1) with at least one window, got {sims.shape}")
    max_shift = sims.shape[1] // 2
    weights = sims.max(axis=1) - np.median(sims, axis=1)
    curve = np.average(sims, axis=0, weights=weights) if weights.sum() > 0 else sims.mean(axis=0)
    shifts = np.arange(-max_shift, max_shift + 1)
    best = np.flatnonzero(curve == curve.max())
    offset = int(shifts[best[np.argmin(np.abs(shifts[best]))]])
    return offset, float(curve.max() - np.median(curve)), curve


class ClipWindows(Protocol):
    """How the offline commands embed a prepared clip's face windows and its sound's windows: by the
    scorer's own cut (SyncNet windows of crops and mel, or the sync head on front-end embeddings)."""

    asd_crops: bool  # the clip is prepared with the active-speaker models' faces, not mouths
    needs_lips: bool
    mel_frames: int  # a sound window's length, in 80 Hz mel frames
    cohort: range | None  # the off-sync pairings its scores are measured against (`rtdiar.cohort`)

    def starts(self, clip: PreparedClip) -> np.ndarray:
        """Sorted grid frames where a whole face window starts."""

    def faces(self, clip: PreparedClip, starts: np.ndarray) -> np.ndarray:
        """(len(starts), D) unit embeddings of the face windows starting there."""

    def sounds(self, clip: PreparedClip, wave: np.ndarray, grid: np.ndarray, shift: int) -> np.ndarray:
        """(len(grid), D) unit embeddings of the sound windows starting at grid frames `grid`, the clip's
        sound moved `shift` frames later (silence where it moved away and beyond the clip)."""


class MelWindows:
    """`ClipWindows` of a lip-sync expert: 5-frame crop windows and Wav2Lip mel windows."""

    asd_crops = False

    def __init__(self, scorer: SyncScorer, window: WindowConfig, cohort: range | None = None) -> None:
        self.scorer, self.window, self.cohort = scorer, window, cohort
        self.needs_lips, self.mel_frames = scorer.needs_lips, window.mel_frames

    def starts(self, clip: PreparedClip) -> np.ndarray:
        return clip.window_starts(self.window.frames, self.window.mel_frames)

    def faces(self, clip: PreparedClip, starts: np.ndarray) -> np.ndarray:
        return clip_face_embeddings(clip, starts, self.scorer, self.window.frames)

    def sounds(self, clip: PreparedClip, wave: np.ndarray, grid: np.ndarray, shift: int) -> np.ndarray:
        mel = shift_mel(clip.mel, shift, clip.fps) if shift else clip.mel
        return self.scorer.audio_embeddings(clip.mel_windows(grid, self.window.mel_frames, mel))


def clip_windows(scorer, config: Config) -> ClipWindows:
    """The scorer's own `ClipWindows` where it has one (`clip_windows`), else a lip-sync expert's."""
    own = getattr(scorer, "clip_windows", None)
    return own if own is not None else MelWindows(scorer, config.window, config.decision.cohort())


def shift_mel(mel: np.ndarray, shift_frames: int, fps: float = 25.0) -> np.ndarray:
    """The mel of the same sound moved `shift_frames` video frames later (earlier when negative),
    same length, silence where the sound moved away; what a file whose audio samples were delayed
    (or cut) by that much would give. 5 frames at 25 fps are exactly 16 mel frames."""
    mel_shift = shift_frames * MEL_FPS / fps
    if mel_shift != round(mel_shift):
        raise ValueError(f"a shift of {shift_frames} frames is not a whole number of mel frames")
    mel_shift = int(round(mel_shift))
    length = mel.shape[1]
    kept = max(0, length - abs(mel_shift))  # mel frames of sound still inside the clip
    moved = np.full_like(mel, MEL_SILENCE)
    if mel_shift >= 0:
        moved[:, length - kept:] = mel[:, :kept]
    else:
        moved[:, :kept] = mel[:, length - kept:]
    return moved


def window_similarities(clip: PreparedClip, windows: ClipWindows, max_shift: int, wave: np.ndarray) -> np.ndarray:
    """(windows, 2 * max_shift + 1) cosine of every valid face window with the audio at every shift
    (no rows when the face is never tracked on a whole window).

    Audio outside the clip is silence (as syncnet_python pads), so a clip shorter than the search
    range (LRW's 29 frames) still gets a full curve per window.
    """
    starts = windows.starts(clip)
    if len(starts) == 0:
        return np.zeros((0, 2 * max_shift + 1), np.float32)
    faces = windows.faces(clip, starts)
    grid = np.arange(starts[0] - max_shift, starts[-1] + max_shift + 1)  # every audio window a shift needs
    audio = windows.sounds(clip, wave, grid, 0)
    # column i pairs window k with audio window k + i - max_shift, i.e. row k - starts[0] + i of `audio`
    return np.stack([np.einsum("kd,kd->k", faces, audio[starts - starts[0] + i])
                     for i in range(2 * max_shift + 1)], axis=1)


def clip_face_embeddings(clip: PreparedClip, starts: np.ndarray, scorer: SyncScorer, frames: int) -> np.ndarray:
    """(len(starts), D) embeddings of the clip's face windows starting at the sorted grid frames
    `starts`, with their lip points when the scorer reads them."""
    # a strided view: the face windows are copied batch by batch inside the scorer, never all at once
    span = np.moveaxis(sliding_window_view(clip.crops, frames, axis=0), -1, 1)[starts[0]:starts[-1] + 1]
    lips = clip.lips_windows(np.arange(starts[0], starts[-1] + 1), frames) if scorer.needs_lips else None
    return scorer.face_embeddings(span, lips)[starts - starts[0]]


def analyse_clip(path: Path, config: Config, scorer: SyncScorer, max_shift: int) -> OffsetResult:
    """The offset of the clip's longest face track against its sound track."""
    if max_shift < 1:
        raise RtdiarError("max_shift must be at least 1 frame")
    if not probe(path).has_audio:
        raise RtdiarError(f"{path} has no audio stream: there is no sound to line up with the lips")
    windows = clip_windows(scorer, config)
    with FaceDetector(config.detector) as detector, \
            LipLandmarker() if windows.needs_lips else contextlib.nullcontext() as landmarker:
        clip = track_clip(Path(path), config, detector, landmarker=landmarker, asd=windows.asd_crops)
    if clip is None:
        raise RtdiarError(f"{path}: no face found, so no lips to line the sound up with")
    wave = FileSource(Path(path), None, "fast", config.video, config.audio).aligned_audio() if windows.asd_crops else None
    sims = window_similarities(clip, windows, max_shift, wave)
    if len(sims) == 0:
        raise RtdiarError(f"{path}: the face is tracked on too few frames in a row: too short to measure an offset")
    return read_offset(Path(path).name, sims, config)


def read_offset(name: str, sims: np.ndarray, config: Config) -> OffsetResult:
    """The reading of a clip's window similarities (see `estimate_offset`), judged by `config.offset`."""
    offset_frames, confidence, curve = estimate_offset(sims)
    return OffsetResult(file=name, offset_frames=offset_frames, offset_ms=offset_frames * 1000.0 / config.window.fps,
                        confidence=confidence, max_shift=sims.shape[1] // 2, windows=len(sims),
                        curve=[float(v) for v in curve], min_confidence=config.offset.min_confidence)


def shift_filter(offset_s: float, info: MediaInfo) -> str:
    """ffmpeg audio filter that moves the sound content earlier by `offset_s` (later when negative).

    The samples move, not the timestamps: rtdiar (like most players) lines audio up with video on
    the streams' start times, which would undo a timestamp-only shift. The cut is counted in samples
    from the start of the audio stream (input timestamps are not to be trusted: AAC priming, and
    adelay restarts them at 0), using the start times as rtdiar reads them; the new audio stream then
    starts with the video stream. `apad` (with `-shortest`) keeps the sound as long as the video.
    """
    position_s = offset_s + info.video_start_s - info.audio_start_s  # in the audio stream, due at the first frame
    if position_s > 0:
        move = f"atrim=start={position_s:.6f},"
    elif position_s < 0:
        move = f"adelay=delays={-position_s * 1000:.3f}:all=1,"
    else:
        move = ""
    # ffmpeg's output timeline starts at the input's earliest stream, where the copied video keeps its place
    video_start_s = info.video_start_s - min(info.video_start_s, info.audio_start_s)
    return f"asetpts=N/SR/TB,{move}asetpts=PTS-STARTPTS+{video_start_s:.6f}/TB,apad"


def write_fixed(path: Path, offset_s: float, out: Path) -> None:
    """A copy of `path` whose audio is moved earlier by `offset_s` (the measured lag): the video
    stream copied untouched, the audio re-encoded (AAC). Written beside `out` and renamed into
    place, so a failure leaves nothing under the user's name."""
    out = Path(out)
    cmd = [require_tool("ffmpeg"), "-nostdin", "-y", "-v", "error", "-i", str(path), "-map", "0:v:0", "-map", "0:a:0",
           "-c:v", "copy", "-af", shift_filter(offset_s, probe(path)), "-c:a", "aac", "-shortest"]
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".partial{out.suffix}", dir=out.parent)
    os.close(fd)
    temp = Path(name)
    try:
        proc = subprocess.run([*cmd, str(temp)], capture_output=True, text=True)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise RtdiarError(f"ffmpeg could not write {out}: {reason}")
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
