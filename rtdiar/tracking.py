"""Faces per frame: MediaPipe detection, IoU tracking with stable ids, and the mouth crop the model sees."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from rtdiar.config import DetectorConfig, TrackerConfig


class FaceDetector:
    """MediaPipe's bundled face detector; boxes come back in source pixels, clipped to the image.

    Frames are shrunk to `cfg.max_side_px` first: MediaPipe resizes to its own small input
    (128 or 192 px) anyway, so a full-HD frame only costs conversion time.
    Not thread-safe: one detector per processing thread.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        with native_stderr_silenced():  # TFLite and absl print start-up chatter no user needs
            import mediapipe as mp

            self._detector = mp.solutions.face_detection.FaceDetection(
                model_selection=cfg.model_selection, min_detection_confidence=cfg.min_confidence)
            self._detector.process(np.zeros((64, 64, 3), np.uint8))  # the chatter comes with the first run

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes `(N, 4)` float x1, y1, x2, y2 in `image_bgr` pixels and their scores `(N,)`."""
        height, width = image_bgr.shape[:2]
        scale = self.cfg.max_side_px / max(height, width)
        small = image_bgr
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        result = self._detector.process(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        boxes, scores = [], []
        for detection in result.detections or []:
            rel = detection.location_data.relative_bounding_box
            # relative coordinates do not depend on the downscale, so they map straight to the source
            x1 = min(max(rel.xmin * width, 0.0), width)
            y1 = min(max(rel.ymin * height, 0.0), height)
            x2 = min(max((rel.xmin + rel.width) * width, 0.0), width)
            y2 = min(max((rel.ymin + rel.height) * height, 0.0), height)
            if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:  # drop boxes that clipping squashed to nothing
                boxes.append((x1, y1, x2, y2))
                scores.append(detection.score[0])
        return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment: C++ libraries write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ShotCuts:
    """Hard cuts between shots in edited video (TV, film, a recorded talk), frame by frame.

    The measure is PySceneDetect's content value: the mean absolute change of hue, saturation and
    value from the previous frame, here on a 64 x 36 thumbnail. A cut needs the value to reach
    `threshold` and to be `RATIO` times the largest of the last `HISTORY` frames (a causal take on
    PySceneDetect's adaptive detector): a cut is a lone spike, while a fast pan, a zoom or a flash
    keeps the value high over several frames and is a cut at most once. Causal: a frame is judged on
    the frames before it only.
    """

    THUMB = (64, 36)
    RATIO = 3.0
    HISTORY = 5

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold  # 0: never a cut
        self._previous: np.ndarray | None = None
        self._values: deque[float] = deque(maxlen=self.HISTORY)

    def is_cut(self, image_bgr: np.ndarray) -> bool:
        """Whether `image_bgr` opens a new shot (never the first frame)."""
        if self.threshold <= 0:
            return False
        small = cv2.resize(image_bgr, self.THUMB, interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV).astype(np.int16)
        previous, self._previous = self._previous, hsv
        if previous is None:
            return False
        value = float(np.abs(hsv - previous).mean())
        recent = max(self._values, default=0.0)
        self._values.append(value)
        return value >= self.threshold and value >= self.RATIO * recent


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `boxes_a` (N, 4) with every box in `boxes_b` (M, 4)."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)[None, :, :]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class Track:
    """One face followed over frames. `id` is 0 until the track is confirmed."""

    id: int
    box: np.ndarray  # (4,) x1, y1, x2, y2, exponentially smoothed
    score: float  # detector confidence of the last matched detection
    hits: int = 1  # consecutive frames matched
    misses: int = 0  # consecutive frames unmatched
    age: int = 1  # frames since birth
    confirmed: bool = False


class IoUTracker:
    """Hungarian matching of detections to tracks on IoU, SORT-style without a motion model.

    A new detection starts a tentative track; it is confirmed after `min_hits` consecutive hits
    and only then gets an id (so ids are dense: 1, 2, 3 ... for the faces a user sees, never
    reused); a tentative track that misses once is dropped, so a one-frame false detection never
    shows. A confirmed track survives up to `max_misses` consecutive misses (hidden meanwhile, but
    matched against its last smoothed box, so a face that blinks out keeps its id) and ends on the
    next miss.
    """

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._tracks: list[Track] = []
        self._next_id = 1
        self._ended: list[int] = []

    def update(self, boxes: np.ndarray, scores: np.ndarray, cut: bool = False) -> list[Track]:
        """Feed one frame's detections; returns the confirmed tracks matched in it, by id.

        `cut`: the frame opens a new shot (`ShotCuts`). Every track ends there, because a box in
        the same place after a cut is another face more often than the same one.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        self._ended = []
        if cut:
            self._ended = [track.id for track in self._tracks if track.confirmed]
            self._tracks = []
        matches, unmatched_tracks, unmatched_boxes = self._match(boxes)
        for t, d in matches:
            self._hit(self._tracks[t], boxes[d], float(scores[d]))
        survivors = [self._tracks[t] for t, _ in matches]
        for t in unmatched_tracks:
            track = self._tracks[t]
            if not track.confirmed:
                continue  # a tentative track that misses once is dropped
            track.age += 1
            track.hits = 0
            track.misses += 1
            if track.misses > self.cfg.max_misses:
                self._ended.append(track.id)
            else:
                survivors.append(track)
        for d in unmatched_boxes:
            track = Track(id=0, box=boxes[d].copy(), score=float(scores[d]))
            self._confirm_if_ready(track)
            survivors.append(track)
        self._tracks = survivors
        return sorted((tr for tr in survivors if tr.confirmed and tr.misses == 0), key=lambda tr: tr.id)

    def ended_ids(self) -> list[int]:
        """Ids of the confirmed tracks that ended in the last `update`."""
        return list(self._ended)

    def _match(self, boxes: np.ndarray) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """(track, detection) pairs with IoU >= threshold, then the unmatched tracks and detections."""
        matches: list[tuple[int, int]] = []
        if self._tracks and len(boxes):
            iou = iou_matrix(np.stack([tr.box for tr in self._tracks]), boxes)
            rows, cols = linear_sum_assignment(1.0 - iou)
            matches = [(r, c) for r, c in zip(rows, cols) if iou[r, c] >= self.cfg.iou_threshold]
        matched_t = {t for t, _ in matches}
        matched_d = {d for _, d in matches}
        return (matches, [t for t in range(len(self._tracks)) if t not in matched_t],
                [d for d in range(len(boxes)) if d not in matched_d])

    def _hit(self, track: Track, box: np.ndarray, score: float) -> None:
        a = self.cfg.box_smoothing
        track.box = a * box + (1.0 - a) * track.box  # a new array: callers may hold the old one
        track.score = score
        track.age += 1
        track.hits += 1
        track.misses = 0
        self._confirm_if_ready(track)

    def _confirm_if_ready(self, track: Track) -> None:
        if not track.confirmed and track.hits >= self.cfg.min_hits:
            track.confirmed = True
            track.id = self._next_id
            self._next_id += 1


def expand_box(box: np.ndarray, cfg: TrackerConfig, image_shape: tuple[int, ...]) -> np.ndarray:
    """The detector box grown by the cfg pads (fractions of its width/height), clipped to the image.

    Wav2Lip pads the chin because detectors cut it off. A box that would leave the image is clipped
    rather than padded with black, so the crop holds only real pixels (slightly off-centre at edges).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = x2 - x1, y2 - y1
    img_h, img_w = image_shape[:2]
    return np.array([
        min(max(x1 - cfg.pad_left * width, 0.0), img_w),
        min(max(y1 - cfg.pad_top * height, 0.0), img_h),
        min(max(x2 + cfg.pad_right * width, 0.0), img_w),
        min(max(y2 + cfg.pad_bottom * height, 0.0), img_h),
    ])


def crop_mouth_region(image_bgr: np.ndarray, box: np.ndarray, cfg: TrackerConfig,
                      size_px: int = 96) -> np.ndarray:
    """The lower half (size/2 x size) of the expanded face box resized to size x size, BGR uint8.

    This is the input SyncNet was trained on: the mouth region without the eyes.
    """
    img_h, img_w = image_bgr.shape[:2]
    x1, y1, x2, y2 = expand_box(box, cfg, image_bgr.shape)
    # whole pixels, at least one: a box squashed against an edge still yields a crop
    left = min(math.floor(x1), img_w - 1)
    top = min(math.floor(y1), img_h - 1)
    right = max(math.ceil(x2), left + 1)
    bottom = max(math.ceil(y2), top + 1)
    face = image_bgr[top:bottom, left:right]
    shrinking = face.shape[0] * face.shape[1] > size_px * size_px
    resized = cv2.resize(face, (size_px, size_px),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized[size_px // 2:])


ASD_PAD_GREY = 110  # LR-ASD / Light-ASD pad the frame with this grey where the crop leaves it
ASD_RESIZE_PX = 224
ASD_FACE_PX = 112


def crop_asd_face(image_bgr: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """The (112, 112) uint8 grey face LR-ASD and Light-ASD were trained on.

    Their S3FD boxes are looser than MediaPipe's, so `box` (x1, y1, x2, y2) is first scaled by `scale`
    about its centre. Then their crop: centre (x, y), half-size s = max(w, h) / 2, rows y - s .. y + 1.8 s
    and columns x - 1.4 s .. x + 1.4 s (40 % context, more below the face than above), grey 110 outside
    the frame, resized to 224 x 224 (cv2's default bilinear), made grey, and the centre 112 x 112 kept.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    x, y = (x1 + x2) / 2, (y1 + y2) / 2
    s = scale * max(x2 - x1, y2 - y1) / 2
    # whole pixels as their int() of padded, hence positive, coordinates: floor; at least one pixel
    top, left = math.floor(y - s), math.floor(x - 1.4 * s)
    bottom, right = max(math.floor(y + 1.8 * s), top + 1), max(math.floor(x + 1.4 * s), left + 1)
    img_h, img_w = image_bgr.shape[:2]
    inside = image_bgr[max(top, 0):max(min(bottom, img_h), 0), max(left, 0):max(min(right, img_w), 0)]
    if inside.size == 0:  # the crop lies wholly outside the frame: all padding
        return np.full((ASD_FACE_PX, ASD_FACE_PX), ASD_PAD_GREY, np.uint8)
    face = cv2.copyMakeBorder(inside, max(-top, 0), max(bottom - img_h, 0), max(-left, 0), max(right - img_w, 0),
                              cv2.BORDER_CONSTANT, value=(ASD_PAD_GREY,) * 3)
    grey = cv2.cvtColor(cv2.resize(face, (ASD_RESIZE_PX, ASD_RESIZE_PX)), cv2.COLOR_BGR2GRAY)
    margin = (ASD_RESIZE_PX - ASD_FACE_PX) // 2
    return np.ascontiguousarray(grey[margin:margin + ASD_FACE_PX, margin:margin + ASD_FACE_PX])
