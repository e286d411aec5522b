"""Lip points: FaceMesh on a tracked face, eye-aligned, mirrored for training, filled over gaps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtdiar.lips import LIP_POINTS, LIPS_SHAPE, MIRRORED, LipLandmarker, eye_aligned, fill_gaps
from rtdiar.sources import FileSource
from rtdiar.tracking import FaceDetector
from rtdiar.windows import CropHistory


@pytest.fixture(scope="module")
def face_frame(dev_clip) -> np.ndarray:
    from rtdiar.config import load_config

    config = load_config()
    import threading

    frames = FileSource(dev_clip, None, "fast", config.video, config.audio).read_frames(threading.Event())
    return next(f for i, f in enumerate(frames) if i == 10).image


def _box(image: np.ndarray) -> np.ndarray:
    from rtdiar.config import load_config

    with FaceDetector(load_config().detector) as detector:
        boxes, _ = detector.detect(image)
    return boxes[0]


def test_points_do_not_depend_on_where_the_head_is_or_how_it_is_tilted():
    rng = np.random.default_rng(0)
    mesh = rng.uniform(0, 200, size=(478, 2)).astype(np.float32)
    angle, scale, move = np.radians(20), 1.7, np.array([40.0, -25.0])
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (mesh @ turn.T * scale + move).astype(np.float32)
    np.testing.assert_allclose(eye_aligned(moved), eye_aligned(mesh), atol=1e-4)
    aligned = eye_aligned(mesh)
    assert aligned.shape == LIPS_SHAPE and aligned.dtype == np.float32


def test_a_mirrored_face_gives_the_mirrored_points(face_frame):
    box = _box(face_frame)
    width = face_frame.shape[1]
    flipped_box = np.array([width - box[2], box[1], width - box[0], box[3]])
    with LipLandmarker() as landmarker:
        points = landmarker.points(face_frame, box)
        flipped = landmarker.points(np.ascontiguousarray(face_frame[:, ::-1]), flipped_box)
    assert points is not None and flipped is not None
    mirrored = points[list(MIRRORED)] * np.array([-1.0, 1.0], np.float32)
    # what training's flip does to the points is what FaceMesh sees in a flipped camera, to about two
    # hundredths of the eye distance on average (FaceMesh's own wobble); closer than the unflipped
    # points, though a face is nearly symmetric (0.02 against 0.04 here, 0.17 without the permutation)
    error = np.abs(flipped - mirrored).mean()
    assert error < 0.03 and error < np.abs(flipped - points).mean()
    assert sorted(MIRRORED) == list(range(len(LIP_POINTS)))


def test_no_face_in_the_box_gives_no_points(face_frame):
    with LipLandmarker() as landmarker:
        assert landmarker.points(np.zeros_like(face_frame), _box(face_frame)) is None
        assert landmarker.points(cv2.GaussianBlur(face_frame, (0, 0), 1.0), _box(face_frame)) is not None


def test_frames_without_points_take_the_nearest_frame_with_them():
    lips = np.arange(5, dtype=np.float32)[:, None, None] * np.ones(LIPS_SHAPE, np.float32)
    found = np.array([False, True, False, False, True])
    filled = fill_gaps(lips, found)
    assert [float(frame[0, 0]) for frame in filled] == [1, 1, 1, 4, 4]  # a tie takes the earlier frame
    assert not fill_gaps(lips, np.zeros(5, bool)).any()


def test_a_history_window_fills_missed_frames_and_needs_one_with_points():
    history = CropHistory()
    crop = np.zeros((48, 96, 3), np.uint8)
    for k in range(5):
        history.add(k / 25.0, crop, None if k in (0, 3) else np.full(LIPS_SHAPE, k, np.float32))
    window = history.window_with_lips(4 / 25.0)[1]
    assert window.shape == (5, *LIPS_SHAPE) and [float(f[0, 0]) for f in window] == [1, 1, 2, 2, 4]
    blind = CropHistory()
    for k in range(5):
        blind.add(k / 25.0, crop)
    assert blind.window(4 / 25.0) is not None and blind.window_with_lips(4 / 25.0)[1] is None
