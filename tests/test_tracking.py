"""Face detection on a real frame, IoU tracking on scripted boxes, and the mouth crop."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from rtdiar.config import DetectorConfig, TrackerConfig, load_config
from conftest import DEV_WILD
from rtdiar.tracking import FaceDetector, IoUTracker, ShotCuts, crop_mouth_region, expand_box, iou_matrix


@pytest.fixture
def tracker_cfg(config) -> TrackerConfig:
    return dataclasses.replace(config.tracker, iou_threshold=0.3, min_hits=3, max_misses=5, box_smoothing=0.5)


def _step(tracker: IoUTracker, *boxes) -> list[int]:
    """One frame with these boxes; the ids the tracker shows."""
    arr = np.array(boxes, float).reshape(-1, 4)
    return [track.id for track in tracker.update(arr, np.full(len(arr), 0.9))]


FACE = (100.0, 100.0, 200.0, 200.0)
OTHER = (400.0, 100.0, 500.0, 200.0)


# --- detector ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_frame(dev_clip) -> np.ndarray:
    capture = cv2.VideoCapture(str(dev_clip))
    ok, image = capture.read()
    capture.release()
    assert ok, f"cannot read {dev_clip}"
    return image


@pytest.fixture(scope="module")
def detector_cfg() -> DetectorConfig:
    return load_config().detector


def test_detector_finds_the_one_face_of_a_real_frame(first_frame, detector_cfg):
    height, width = first_frame.shape[:2]
    with FaceDetector(detector_cfg) as detector:
        boxes, scores = detector.detect(first_frame)
    assert boxes.shape == (1, 4) and scores.shape == (1,)
    x1, y1, x2, y2 = boxes[0]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert x1 < width / 2 < x2 and y1 < height / 2 < y2
    assert (x2 - x1) * (y2 - y1) > 0.1 * width * height  # a face filling much of the frame, not a speck
    assert scores[0] >= detector_cfg.min_confidence


def test_detector_boxes_are_in_source_pixels_when_downscaled(first_frame, detector_cfg):
    """A frame 4x larger than max_side_px is shrunk for detection; the box still scales with the frame."""
    big = cv2.resize(first_frame, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    assert max(big.shape[:2]) > detector_cfg.max_side_px
    with FaceDetector(detector_cfg) as detector:
        small_boxes, _ = detector.detect(first_frame)
        big_boxes, _ = detector.detect(big)
    assert big_boxes.shape == (1, 4)
    face_side = small_boxes[0, 2] - small_boxes[0, 0]
    np.testing.assert_allclose(big_boxes[0] / 4, small_boxes[0], atol=0.05 * face_side)


def test_detector_finds_nothing_on_a_black_frame(detector_cfg):
    with FaceDetector(detector_cfg) as detector:
        boxes, scores = detector.detect(np.zeros((480, 640, 3), np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


# --- IoU ----------------------------------------------------------------------------------------

def test_iou_of_known_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 20, 10]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], float)
    expected = np.array([[50 / 150, 1.0, 0.0, 25 / 100],
                         [100 / 200, 100 / 200, 0.0, 25 / 200]])
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


# --- tracker ------------------------------------------------------------------------------------

def test_a_track_is_shown_only_after_min_hits(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    shown = [_step(tracker, FACE) for _ in range(tracker_cfg.min_hits + 2)]
    assert shown[:tracker_cfg.min_hits - 1] == [[]] * (tracker_cfg.min_hits - 1)
    assert shown[tracker_cfg.min_hits - 1:] == [[1]] * 3


def test_a_tentative_track_that_misses_once_is_dropped(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    for _ in range(tracker_cfg.min_hits - 1):
        assert _step(tracker, FACE) == []
    assert _step(tracker) == []
    # the count starts again: min_hits fresh hits are needed
    shown = [_step(tracker, FACE) for _ in range(tracker_cfg.min_hits)]
    assert shown[-2] == [] and shown[-1] == [1]


def test_a_spurious_single_frame_detection_never_becomes_a_track(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    shown = [_step(tracker, FACE) for _ in range(4)]
    shown.append(_step(tracker, FACE, OTHER))
    shown += [_step(tracker, FACE) for _ in range(10)]
    assert {i for ids in shown for i in ids} == {1}
    # ids are given at confirmation, so the next real face is 2, not 3
    shown = [_step(tracker, FACE, OTHER) for _ in range(tracker_cfg.min_hits)]
    assert shown[-1] == [1, 2]


def test_a_face_missing_up_to_max_misses_keeps_its_id_then_gets_a_new_one(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    for _ in range(tracker_cfg.min_hits):
        _step(tracker, FACE)
    for _ in range(tracker_cfg.max_misses):
        assert _step(tracker) == []  # hidden while missing
        assert tracker.ended_ids() == []
    assert _step(tracker, FACE) == [1]

    for _ in range(tracker_cfg.max_misses):
        _step(tracker)
    _step(tracker)  # one miss too many
    assert tracker.ended_ids() == [1]
    assert _step(tracker) == [] and tracker.ended_ids() == []
    shown = [_step(tracker, FACE) for _ in range(tracker_cfg.min_hits)]
    assert shown[-1] == [2]


def test_ids_are_never_reused(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    seen: list[int] = []
    for _ in range(4):  # the face comes and goes for good each time
        for _ in range(tracker_cfg.min_hits + 2):
            ids = _step(tracker, FACE)
        seen += ids
        for _ in range(tracker_cfg.max_misses + 1):
            _step(tracker)
    assert seen == [1, 2, 3, 4]


def test_empty_frames_are_fine(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    assert tracker.update(np.zeros((0, 4)), np.zeros(0)) == []
    assert tracker.update([], []) == []
    assert tracker.ended_ids() == []


def test_two_faces_crossing_paths_keep_their_ids(tracker_cfg):
    """Face A walks right, face B walks left, half a face lower, so they overlap as they pass."""
    tracker = IoUTracker(tracker_cfg)
    step_px = 8.0
    first_ids, overlapped = None, False
    for n in range(60):
        a = np.array([n * step_px, 100.0, n * step_px + 100.0, 200.0])
        b = np.array([480.0 - n * step_px, 150.0, 580.0 - n * step_px, 250.0])
        overlapped |= iou_matrix(a, b)[0, 0] > 0.2
        tracks = tracker.update(np.stack([b, a]), np.array([0.9, 0.9]))
        if n < tracker_cfg.min_hits - 1:
            continue
        assert len(tracks) == 2
        ious = iou_matrix(np.stack([t.box for t in tracks]), np.stack([a, b]))
        ids = {"A" if iou_a > iou_b else "B": t.id for t, (iou_a, iou_b) in zip(tracks, ious)}
        first_ids = first_ids or ids
        assert ids == first_ids, f"frame {n}"
    assert overlapped and a[0] > b[0]  # they really met and passed each other
    assert sorted(first_ids.values()) == [1, 2]


def test_box_smoothing_moves_by_the_configured_fraction(tracker_cfg):
    cfg = dataclasses.replace(tracker_cfg, box_smoothing=0.25)
    tracker = IoUTracker(cfg)
    for _ in range(cfg.min_hits):
        tracks = tracker.update(np.array([FACE]), np.array([0.9]))
    (track,) = tracks
    np.testing.assert_allclose(track.box, FACE)
    moved = np.array(FACE) + [20.0, 10.0, 20.0, 10.0]
    (track,) = tracker.update(moved[None], np.array([0.9]))
    np.testing.assert_allclose(track.box, np.array(FACE) + 0.25 * (moved - np.array(FACE)))


def test_a_shot_cut_ends_every_track_and_the_face_in_the_same_place_is_a_new_one(tracker_cfg):
    tracker = IoUTracker(tracker_cfg)
    for _ in range(tracker_cfg.min_hits):
        _step(tracker, FACE, OTHER)
    assert _step(tracker, FACE, OTHER) == [1, 2]
    arr = np.array([FACE, OTHER])
    assert tracker.update(arr, np.full(2, 0.9), cut=True) == []  # new shot: new tentative tracks
    assert tracker.ended_ids() == [1, 2]
    shown = [_step(tracker, FACE, OTHER) for _ in range(tracker_cfg.min_hits - 1)]
    assert shown[-1] == [3, 4] and tracker.ended_ids() == []


def _frames(path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = [capture.read()[1] for _ in range(count)]
    capture.release()
    return frames


def test_shot_cuts_fire_between_clips_not_within_one(shared_dir, config):
    """Consecutive frames of a talking head (a moving face) are one shot; the next clip is a cut."""
    one = _frames(DEV_WILD / "pcavs_00067.mp4", 50)
    other = _frames(DEV_WILD / "pcavs_00098.mp4", 5)
    cuts = ShotCuts(config.tracker.cut_threshold)
    seen = [cuts.is_cut(frame) for frame in one + other]
    assert seen == [False] * 50 + [True] + [False] * 4
    never = ShotCuts(0.0)
    assert not any(never.is_cut(frame) for frame in one + other)



def test_a_whip_pan_is_one_cut_not_one_per_frame(shared_dir, config):
    """80 px a frame across a 640 px stage: the change stays high while the camera moves, so only
    its first frame stands out from the frames before it."""
    (still,) = _frames(shared_dir / "data" / "dev" / "multi" / "hamilton_two_faces_one_singer.mp4", 1)
    cuts = ShotCuts(config.tracker.cut_threshold)
    panned = [np.roll(still, 80 * max(0, k - 3), axis=1) for k in range(12)]
    assert [cuts.is_cut(frame) for frame in panned] == [False] * 4 + [True] + [False] * 7

# --- crop ---------------------------------------------------------------------------------------

@pytest.fixture
def noise_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)


def test_expand_box_pads_by_fractions_and_clips(tracker_cfg):
    cfg = dataclasses.replace(tracker_cfg, pad_top=0.0, pad_bottom=0.1, pad_left=0.05, pad_right=0.2)
    np.testing.assert_allclose(expand_box(np.array([100, 50, 200, 250]), cfg, (360, 640, 3)),
                               [95, 50, 220, 270])
    np.testing.assert_allclose(expand_box(np.array([560, 200, 640, 350]), cfg, (360, 640, 3)),
                               [556, 200, 640, 360])


def test_crop_is_the_lower_half_of_the_expanded_box(tracker_cfg, noise_image):
    cfg = dataclasses.replace(tracker_cfg, pad_top=0.0, pad_bottom=0.1, pad_left=0.0, pad_right=0.0)
    crop = crop_mouth_region(noise_image, np.array([100.0, 40.0, 300.0, 240.0]), cfg)
    assert crop.shape == (48, 96, 3) and crop.dtype == np.uint8
    manual = cv2.resize(noise_image[40:260, 100:300], (96, 96), interpolation=cv2.INTER_AREA)[48:]
    np.testing.assert_array_equal(crop, manual)


def test_crop_keeps_only_the_mouth_half(tracker_cfg):
    """Top half of the face dark, bottom half bright: the crop is bright."""
    cfg = dataclasses.replace(tracker_cfg, pad_top=0.0, pad_bottom=0.0, pad_left=0.0, pad_right=0.0)
    image = np.zeros((200, 200, 3), np.uint8)
    image[100:160, 40:160] = 200
    crop = crop_mouth_region(image, np.array([40.0, 40.0, 160.0, 160.0]), cfg)
    assert crop.min() == 200


def test_a_small_face_is_enlarged_and_a_box_leaving_the_image_is_clipped(tracker_cfg, noise_image):
    cfg = dataclasses.replace(tracker_cfg, pad_top=0.0, pad_bottom=0.5, pad_left=0.0, pad_right=0.0)
    crop = crop_mouth_region(noise_image, np.array([600.0, 300.0, 640.0, 340.0]), cfg)
    manual = cv2.resize(noise_image[300:360, 600:640], (96, 96), interpolation=cv2.INTER_LINEAR)[48:]
    np.testing.assert_array_equal(crop, manual)
