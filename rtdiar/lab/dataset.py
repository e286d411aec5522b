"""Training and evaluation data: clips run through the engine's own detector, tracker, crop and mel.

A model only works live if it was trained on what the engine feeds it, so every clip goes through
`FileSource` (audio lined up on stream start times), `FaceDetector`, `IoUTracker` and
`crop_mouth_region` with the run-time config, and its crops are resampled to the 25 fps window grid
by the same nearest-timestamp rule as live windows (`nearest_frames`). The result of each clip is
cached as one `.npz` under a folder named by a hash of everything that shapes it, so a changed
setting never reuses stale crops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from rtdiar.audio import MEL_SILENCE, wav2lip_melspectrogram
from rtdiar.config import Config
from rtdiar.lips import LIPS_SHAPE, LIPS_VERSION, LipLandmarker, fill_gaps
from rtdiar.media import VIDEO_SUFFIXES, lossy_round_trip
from rtdiar.sources import FileSource
from rtdiar.tracking import FaceDetector, IoUTracker, ShotCuts, crop_asd_face, crop_mouth_region
from rtdiar.windows import MEL_FPS, mel_start_index, nearest_frames

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtdiar" / "prepared"
PREP_VERSION = 2  # bump when the preprocessing code changes what it writes (2: face_px)
CODED_BATCH = 40  # clips whose sound goes through a codec in one ffmpeg round trip
CODED_GAP_S = 0.5  # silence between them, so a codec's frames never straddle two clips


@dataclass
class PreparedClip:
    """One face track of a clip on the 25 fps grid, with the clip's whole mel.

    Grid frame k (crops[k]) is at time (first_frame + k) / fps on the source timeline, the same
    timeline as the mel (mel index of time t = round(t * 80)).
    """

    name: str
    crops: np.ndarray  # (T, 48, 96, 3) uint8 BGR mouths, or (T, 112, 112) uint8 grey faces (`asd` crops)
    valid: np.ndarray  # (T,) bool: a real crop lies within tolerance of the grid time
    first_frame: int
    mel: np.ndarray  # (80, M) float32, Wav2Lip's normalised log-mel
    fps: float = 25.0
    face_px: float = float("nan")  # median height of the tracked face box in the frames the detector saw
                                   # (NaN: not cut from a video)
    lips: np.ndarray | None = None  # (T, 42, 2) float32 eye-aligned lip points (`rtdiar.lips`), NaN in frames
                                    # FaceMesh missed or without a crop (None: not cut from a video)

    def window_starts(self, frames: int = 5, mel_frames: int = 16, max_shift: int = 0) -> np.ndarray:
        """Grid indices k where crops[k:k+frames] are all valid and audio shifted by up to
        ±`max_shift` frames lies inside the clip."""
        valid_run = np.convolve(self.valid.astype(int), np.ones(frames, int), "valid") == frames
        starts = np.flatnonzero(valid_run)
        fits = self.audio_inside(starts - max_shift, mel_frames) & self.audio_inside(starts + max_shift, mel_frames)
        return starts[fits]

    def mel_index(self, k: int | np.ndarray) -> int | np.ndarray:
        """First mel frame of the window whose first video frame is grid frame k (or an array of them)."""
        if np.ndim(k):
            return np.floor((self.first_frame + np.asarray(k)) / self.fps * MEL_FPS + 0.5).astype(int)
        return mel_start_index((self.first_frame + k) / self.fps)

    def audio_inside(self, k: np.ndarray, mel_frames: int = 16) -> np.ndarray:
        """Whether the audio windows starting at grid frames `k` lie wholly inside the clip's mel."""
        first = self.mel_index(np.atleast_1d(k))
        return (first >= 0) & (first + mel_frames <= self.mel.shape[1])

    def mel_windows(self, k: np.ndarray, mel_frames: int = 16, mel: np.ndarray | None = None) -> np.ndarray:
        """(len(k), 80, mel_frames) audio windows at grid frames `k`, of `mel` (default the clip's own,
        or a shifted copy on the same timeline), silence beyond its ends (as syncnet_python pads)."""
        mel = self.mel if mel is None else mel
        first = self.mel_index(np.asarray(k))
        before = max(0, -int(first.min()))
        after = max(0, int(first.max()) + mel_frames - mel.shape[1])
        padded = np.pad(mel, ((0, 0), (before, after)), constant_values=MEL_SILENCE)
        return np.ascontiguousarray(padded[:, (first + before)[:, None] + np.arange(mel_frames)].transpose(1, 0, 2))

    def mel_window(self, k: int, shift: int = 0, mel_frames: int = 16) -> np.ndarray:
        """(80, mel_frames) audio of the window at grid frame k, taken `shift` frames later (negative: earlier)."""
        start = self.mel_index(k + shift)
        return self.mel[:, start:start + mel_frames]

    def lips_found(self) -> np.ndarray:
        """(T,) bool: grid frames with lip points (none without `lips`)."""
        if self.lips is None:
            return np.zeros(len(self.crops), bool)
        return ~np.isnan(self.lips).any(axis=(1, 2))

    def lips_windows(self, starts: np.ndarray, frames: int = 5) -> np.ndarray:
        """(len(starts), frames, 42, 2) lip points of the windows, each frame FaceMesh missed taking its
        nearest neighbour's within the window, as the engine's `CropHistory.window_with_lips` does (zeros
        for a window without any)."""
        if self.lips is None:
            raise ValueError(f"{self.name} has no lip points: prepare it again")
        frame = np.asarray(starts, int)[:, None] + np.arange(frames)
        found = self.lips_found()[frame]
        windows = np.nan_to_num(self.lips)[frame].astype(np.float32)
        for i in np.flatnonzero(~found.all(axis=1)):  # only the few windows with a missed frame need filling
            windows[i] = fill_gaps(windows[i], found[i])
        return windows

    def tracked_share(self) -> float:
        """The share of the clip's 25 fps frames (its audio spans the whole clip) that have a real
        crop in this track: how much of the clip the detector and tracker kept the face for."""
        frames = round(self.mel.shape[1] / MEL_FPS * self.fps)
        return min(1.0, float(self.valid.sum()) / max(frames, 1))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        lips = {} if self.lips is None else {"lips": self.lips}
        np.savez(tmp, crops=self.crops, valid=self.valid, first_frame=self.first_frame, mel=self.mel,
                 fps=self.fps, name=self.name, face_px=self.face_px, **lips)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PreparedClip:
        with np.load(path) as data:
            return cls(name=str(data["name"]), crops=data["crops"], valid=data["valid"],
                       first_frame=int(data["first_frame"]), mel=data["mel"], fps=float(data["fps"]),
                       face_px=float(data["face_px"]), lips=data["lips"] if "lips" in data.files else None)


def find_clips(entries: Sequence[str | Path]) -> list[Path]:
    """Every video file named or under the folders named, sorted so a seed always sees the same order."""
    found: list[Path] = []
    for entry in map(Path, entries):
        found += [entry] if entry.is_file() else list(entry.rglob("*"))
    return sorted(p for p in found if p.suffix.lower() in VIDEO_SUFFIXES)


def prep_digest(config: Config, scale: float = 1.0, lips: bool = False, asd: bool = False) -> str:
    """A short hash of every setting that shapes a prepared clip (`scale`: see `track_clip`; `lips`:
    clips with lip points are cached apart, so a model that does not read them never waits for FaceMesh;
    `asd`: the active-speaker models' face crops instead of mouths)."""
    shaping = {"version": PREP_VERSION, "detector": dataclasses.asdict(config.detector),
               "tracker": dataclasses.asdict(config.tracker), "window": dataclasses.asdict(config.window),
               "sample_rate": config.audio.sample_rate, "frame_scale": scale, **({"lips": LIPS_VERSION} if lips else {}),
               **({"asd_box_scale": config.asd.box_scale} if asd else {})}
    return hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]


def cache_path(clip: Path, cache_dir: Path, config: Config, scale: float = 1.0, lips: bool = False,
               asd: bool = False) -> Path:
    """Where a clip's prepared track lives: named by its folder and stem, under the settings hash."""
    return cache_dir / prep_digest(config, scale, lips, asd) / clip.parent.name / f"{clip.stem}.npz"


def track_clip(clip: Path, config: Config, detector: FaceDetector, scale: float = 1.0,
               landmarker: LipLandmarker | None = None, asd: bool = False) -> PreparedClip | None:
    """The clip's longest face track on the 25 fps grid, or None when no face was tracked; with a
    `landmarker`, its lip points too; with `asd`, grey faces as LR-ASD / Light-ASD read them
    (`crop_asd_face`) instead of mouths.

    `scale` < 1 shrinks every frame first (INTER_AREA, as a lower-resolution camera would see it):
    how the same people would look further from the camera, for measuring small faces.
    """
    source = FileSource(clip, None, "fast", config.video, config.audio)
    tracker = IoUTracker(config.tracker)
    cuts = ShotCuts(config.tracker.cut_threshold)
    tracks: dict[int, list[tuple[float, np.ndarray, float, np.ndarray | None]]] = defaultdict(list)
    for frame in source.read_frames(threading.Event()):
        image = frame.image if scale == 1.0 else cv2.resize(frame.image, None, fx=scale, fy=scale,
                                                             interpolation=cv2.INTER_AREA)
        for track in tracker.update(*detector.detect(image), cuts.is_cut(image)):
            crop = crop_asd_face(image, track.box, config.asd.box_scale) if asd else \
                crop_mouth_region(image, track.box, config.tracker, config.window.crop_px)
            points = landmarker.points(image, track.box) if landmarker else None
            tracks[track.id].append((frame.t, crop, float(track.box[3] - track.box[1]), points))
    if not tracks:
        return None
    items = max(tracks.values(), key=len)
    times = np.array([t for t, _, _, _ in items])
    fps = config.window.fps
    grid = np.arange(int(np.ceil(times[0] * fps - 1e-6)), int(np.floor(times[-1] * fps + 1e-6)) + 1)
    if len(grid) == 0:
        return None
    nearest = nearest_frames(times, grid / fps, fps)
    blank = np.zeros_like(items[0][1])
    crops = np.stack([items[i][1] if i >= 0 else blank for i in nearest])
    no_lips = np.full(LIPS_SHAPE, np.nan, np.float32)
    lips = np.stack([items[i][3] if i >= 0 and items[i][3] is not None else no_lips for i in nearest]) \
        if landmarker else None
    mel = wav2lip_melspectrogram(source.aligned_audio(), config.audio.sample_rate)
    face_px = float(np.median([height for _, _, height, _ in items]))
    return PreparedClip(name=f"{clip.parent.name}/{clip.stem}", crops=crops, valid=nearest >= 0,
                        first_frame=int(grid[0]), mel=mel, fps=fps, face_px=face_px, lips=lips)


def _prepare_one(clip: Path, out: Path, config: Config, detector: FaceDetector, landmarker: LipLandmarker | None,
                 scale: float, asd: bool) -> None:
    prepared = track_clip(clip, config, detector, scale, landmarker, asd)
    if prepared is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".noface").touch()  # remembered, so the clip is not tried again
    else:
        prepared.save(out)


def _prepare_batch(jobs: list[tuple[Path, Path]], config: Config, scale: float, lips: bool, asd: bool) -> int:
    """Prepare clips with one detector (and landmarker) for a worker process's whole share, or everything in-process."""
    with FaceDetector(config.detector) as detector, \
            LipLandmarker() if lips else contextlib.nullcontext() as landmarker:
        for clip, out in jobs:
            _prepare_one(clip, out, config, detector, landmarker, scale, asd)
    return len(jobs)


def prepare_clips(clips: Sequence[Path], cache_dir: Path, config: Config, workers: int = 2,
                  scale: float = 1.0, lips: bool = False, asd: bool = False) -> list[Path]:
    """Prepare the clips not cached yet (in `workers` processes), with their lip points if asked (or
    the active-speaker models' faces, `asd`); the cached paths of those with a face."""
    targets = [(clip, cache_path(clip, cache_dir, config, scale, lips, asd)) for clip in clips]
    todo = [(clip, out) for clip, out in targets if not out.exists() and not out.with_suffix(".noface").exists()]
    _in_workers(_prepare_batch, [todo[i:i + 8] for i in range(0, len(todo), 8)], workers, "preparing clips",
                config, scale, lips, asd)
    return [out for _, out in targets if out.exists()]


def coded_cache_path(clip: Path, cache_dir: Path, config: Config, codecs: Sequence[str]) -> Path:
    """Where a clip's coded mels live: beside its prepared track, under a digest of the codecs."""
    digest = hashlib.sha1(json.dumps(list(codecs)).encode()).hexdigest()[:10]
    return cache_dir / prep_digest(config) / f"coded-{digest}" / clip.parent.name / f"{clip.stem}.npy"


def prepare_coded(clips: Sequence[Path], cache_dir: Path, config: Config, codecs: Sequence[str],
                  workers: int = 2) -> list[Path]:
    """Each clip's mel after its sound went through each lossy codec (ffmpeg output options), made once
    and cached: `(len(codecs), 80, M)` float16, M the length of the clip's prepared mel."""
    targets = [coded_cache_path(clip, cache_dir, config, codecs) for clip in clips]
    todo = [(clip, out) for clip, out in zip(clips, targets) if not out.exists()]
    chunks = [todo[i:i + CODED_BATCH] for i in range(0, len(todo), CODED_BATCH)]
    _in_workers(_code_batch, chunks, workers, "coding audio", config, list(codecs))
    return targets


def _code_batch(jobs: list[tuple[Path, Path]], config: Config, codecs: list[str]) -> int:
    """Code a batch of clips' sound: joined by short silences, it goes through each codec in one ffmpeg
    round trip (two processes per codec for the whole batch, not per clip), then is cut up again."""
    rate = config.audio.sample_rate
    waves = [FileSource(clip, None, "fast", config.video, config.audio).aligned_audio() for clip, _ in jobs]
    gap = np.zeros(int(CODED_GAP_S * rate), np.float32)
    coded = [lossy_round_trip(np.concatenate([part for wave in waves for part in (wave, gap)]), options, rate)
             for options in codecs]
    start = 0
    for (_, out), wave in zip(jobs, waves):
        mels = np.stack([wav2lip_melspectrogram(sound[start:start + len(wave)], rate) for sound in coded])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, mels.astype(np.float16))
        os.replace(tmp, out)
        start += len(wave) + len(gap)
    return len(jobs)


def _in_workers(batch_fn, chunks: list[list], workers: int, desc: str, *args) -> None:
    """Run `batch_fn(chunk, *args)` (which returns how many items it did) over the chunks, with a bar.

    Workers are spawned, not forked: a fork of a process that already ran torch or MediaPipe
    threads can abort.
    """
    with tqdm(total=sum(map(len, chunks)), desc=desc, unit="clip", disable=not chunks) as bar:
        if workers <= 1:
            for chunk in chunks:
                bar.update(batch_fn(chunk, *args))
        elif chunks:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for done in pool.map(batch_fn, chunks, *([arg] * len(chunks) for arg in args)):
                    bar.update(done)
