"""Where a SyncNet window lies in time: its 5 video frames, its 16 mel frames, its last audio sample.

A window ends at the current frame time `t_end` and spans 5 frames at 25 fps whatever the source
rate (SyncNet was trained on 25 fps video), i.e. 0.2 s that match 16 mel frames at 80 Hz.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from rtdiar.config import WindowConfig
from rtdiar.lips import fill_gaps

MEL_FPS = 80.0  # Wav2Lip mel: hop 200 samples at 16 kHz
MEL_WINDOW_S = 0.05  # 800-sample STFT window; frame m is centred on m / MEL_FPS
MFCC_PER_FRAME = 4  # LR-ASD / Light-ASD: 100 Hz MFCCs, rows 4i..4i+3 go with 25 fps video frame i
MFCC_HOP_S, MFCC_WINDOW_S = 0.010, 0.025


def window_times(t_end: float, frames: int = 5, fps: float = 25.0) -> np.ndarray:
    """The target times of the window's frames, oldest first, the last one being `t_end`."""
    return t_end - (frames - 1 - np.arange(frames)) / fps


def mel_start_index(t_start_s: float, mel_fps: float = MEL_FPS) -> int:
    """The mel frame centred nearest to `t_start_s` (may be negative before the audio starts)."""
    return int(np.floor(t_start_s * mel_fps + 0.5))  # halves round up, not to even


def audio_end_sample(t_end: float, cfg_window: WindowConfig, sample_rate: int) -> int:
    """The sample (exclusive) the window ending at `t_end` needs: its last mel frame's STFT window end.

    Processing waits until the audio has reached it before scoring the window.
    """
    t_start_s = float(window_times(t_end, cfg_window.frames, cfg_window.fps)[0])
    last_mel = mel_start_index(t_start_s) + cfg_window.mel_frames - 1
    return int(round((last_mel / MEL_FPS + MEL_WINDOW_S / 2) * sample_rate))


def mfcc_end_sample(t_end: float, fps: float = 25.0, sample_rate: int = 16000) -> int:
    """The sample (exclusive) that completes the last MFCC row of the video frame at `t_end`."""
    last_row = (int(round(t_end * fps)) + 1) * MFCC_PER_FRAME - 1
    return int(round((last_row * MFCC_HOP_S + MFCC_WINDOW_S) * sample_rate))


class CropHistory:
    """One track's recent mouth crops (and lip points, when the model reads them) with their frame
    times, to resample windows at 25 fps.

    Keeps `keep_s` of crops: a window spans only 0.16 s, the rest lets a lagging scorer still
    find its frames.
    """

    def __init__(self, keep_s: float = 1.5) -> None:
        self.keep_s = keep_s
        self._items: deque[tuple[float, np.ndarray, np.ndarray | None]] = deque()

    def add(self, t: float, crop: np.ndarray, lips: np.ndarray | None = None) -> None:
        """Append the crop of the frame at time `t` (seconds, non-decreasing), with its lip points if found."""
        self._items.append((t, crop, lips))
        while self._items[0][0] < t - self.keep_s:
            self._items.popleft()

    def window(self, t_end: float, frames: int = 5, fps: float = 25.0,
               tolerance_s: float | None = None) -> np.ndarray | None:
        """`(frames, H, W, 3)` crops nearest to each target time, or None if any is not within
        tolerance (see `nearest_frames`)."""
        nearest = self._nearest(t_end, frames, fps, tolerance_s)
        return None if nearest is None else np.stack([self._items[i][1] for i in nearest])

    def window_with_lips(self, t_end: float, frames: int = 5, fps: float = 25.0,
                         tolerance_s: float | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """`window`'s crops and the same frames' `(frames, 42, 2)` lip points, from one lookup; a frame
        FaceMesh missed takes its nearest neighbour's points. Either is None where there is none: no
        window, or no frame of it with points."""
        nearest = self._nearest(t_end, frames, fps, tolerance_s)
        if nearest is None:
            return None, None
        crops = np.stack([self._items[i][1] for i in nearest])
        points = [self._items[i][2] for i in nearest]
        found = np.array([p is not None for p in points])
        if not found.any():
            return crops, None
        blank = np.zeros_like(points[int(np.argmax(found))])
        return crops, fill_gaps(np.stack([blank if p is None else p for p in points]), found)

    def _nearest(self, t_end: float, frames: int, fps: float, tolerance_s: float | None) -> np.ndarray | None:
        if not self._items:
            return None
        times = np.array([t for t, _, _ in self._items])
        nearest = nearest_frames(times, window_times(t_end, frames, fps), fps, tolerance_s)
        return None if np.any(nearest < 0) else nearest


def nearest_frames(times: np.ndarray, targets: np.ndarray, fps: float = 25.0,
                   tolerance_s: float | None = None) -> np.ndarray:
    """Index of the frame time nearest each target time, or -1 where none lies within tolerance.

    The default tolerance is half the median spacing of `times`, so it follows a 30, 29.97 or
    variable-rate source and frames dropped under load, and a missing frame is a gap; but never
    less than half a target frame (finer than the `fps` grid needs) nor more than a whole one (a
    window of mostly repeated crops is no evidence of motion); plus 1 ms for timestamp rounding.
    Training data is resampled to 25 fps with this same rule, so it matches live windows.
    """
    if tolerance_s is None:
        spacing_s = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
        tolerance_s = min(0.5 * max(spacing_s, 1.0 / fps), 1.0 / fps) + 1e-3
    position = np.clip(np.searchsorted(times, targets), 1, max(len(times) - 1, 1))
    before = np.clip(position - 1, 0, len(times) - 1)
    after = np.clip(position, 0, len(times) - 1)
    nearest = np.where(np.abs(times[before] - targets) <= np.abs(times[after] - targets), before, after)
    return np.where(np.abs(times[nearest] - targets) <= tolerance_s, nearest, -1)
