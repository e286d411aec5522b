"""The lip contour of a tracked face: MediaPipe's bundled FaceMesh on the track's box, eye-aligned.

A pixel crop carries the person (skin, beard, teeth, lighting) and a model trained on about a
hundred faces learns them; 42 points of the lips, chin and nose, rotated and scaled by the eye line,
carry only the mouth's shape. FaceMesh was trained by Google on far more faces than rtdiar has,
so the identity-free part of the problem comes pre-solved.
"""

from __future__ import annotations

import cv2
import numpy as np

from rtdiar.tracking import native_stderr_silenced

# FaceMesh indices: the outer lip contour (20), the inner one (20), the chin and the nose tip
OUTER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
LIP_POINTS = OUTER_LIP + INNER_LIP + (152, 1)
LIPS_SHAPE = (len(LIP_POINTS), 2)
EYE_CORNERS = (33, 263)  # the outer corners of the eyes, as seen: left, right
_HALF_MIRROR = {61: 291, 146: 375, 91: 321, 181: 405, 84: 314, 37: 267, 39: 269, 40: 270, 185: 409,
                78: 308, 95: 324, 88: 318, 178: 402, 87: 317, 82: 312, 81: 311, 80: 310, 191: 415}
_MIRROR = {**_HALF_MIRROR, **{b: a for a, b in _HALF_MIRROR.items()}}
# the point each point becomes in the mirror image (a horizontal flip also negates x)
MIRRORED = tuple(LIP_POINTS.index(_MIRROR.get(p, p)) for p in LIP_POINTS)
LIPS_VERSION = 1  # bump when the points change (which points, the ROI, the alignment): prepared clips hash it
ROI_PX = 256  # FaceMesh works on its own 192 px input; the track's box grown by ROI_GROWTH is cut to this
ROI_GROWTH = 1.7  # the detector's box is tight: FaceMesh wants the whole head with a margin


def face_roi(image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A square `ROI_PX` image around the box (grown by ROI_GROWTH), edges replicated beyond the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = ROI_GROWTH * max(x2 - x1, y2 - y1, 1.0)
    scale = ROI_PX / side
    to_roi = np.float32([[scale, 0, ROI_PX / 2 - (x1 + x2) / 2 * scale],
                         [0, scale, ROI_PX / 2 - (y1 + y2) / 2 * scale]])
    return cv2.warpAffine(image_bgr, to_roi, (ROI_PX, ROI_PX), borderMode=cv2.BORDER_REPLICATE)


def eye_aligned(mesh: np.ndarray) -> np.ndarray:
    """(468+, 2) mesh points -> the `LIP_POINTS` with the eye midpoint at the origin, the eye line on
    the x axis and the eye distance as unit: head position, roll and size are gone, the mouth's
    opening, width and jaw drop stay."""
    left, right = mesh[EYE_CORNERS[0]], mesh[EYE_CORNERS[1]]
    span = right - left
    distance = float(np.hypot(*span)) + 1e-6
    cos, sin = span / distance
    rotation = np.array([[cos, sin], [-sin, cos]], np.float32)
    return ((mesh[list(LIP_POINTS)] - (left + right) / 2) @ rotation.T / distance).astype(np.float32)


class LipLandmarker:
    """FaceMesh on one tracked face at a time (each box is its own image, so faces never mix up).

    Not thread-safe: one per processing thread, as the detector.
    """

    def __init__(self) -> None:
        with native_stderr_silenced():
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                         refine_landmarks=True, min_detection_confidence=0.3)
            self._mesh.process(np.zeros((ROI_PX, ROI_PX, 3), np.uint8))  # start-up chatter, silenced

    def points(self, image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """`LIPS_SHAPE` eye-aligned lip points of the face in `box`, or None when FaceMesh finds none."""
        found = self._mesh.process(cv2.cvtColor(face_roi(image_bgr, box), cv2.COLOR_BGR2RGB))
        if not found.multi_face_landmarks:
            return None
        mesh = np.array([(p.x, p.y) for p in found.multi_face_landmarks[0].landmark], np.float32) * ROI_PX
        return eye_aligned(mesh)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> LipLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill_gaps(lips: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(T, *LIPS_SHAPE) points with the frames FaceMesh missed taken from the nearest frame it found
    (a still mouth, not a jump to zero); all zeros when it found none."""
    have = np.flatnonzero(found)
    if len(have) == 0:
        return np.zeros_like(lips)
    nearest = have[np.abs(np.arange(len(lips))[:, None] - have[None, :]).argmin(axis=1)]
    return lips[nearest]
