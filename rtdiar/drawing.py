"""Draw one `FrameResult` onto its frame: shared by the annotated video and the live window.

Every face gets a box and a `face <id> <score>` label in its track colour (the colour of its
curve in the plots); the speaking face is drawn thicker, in green, with a filled "speaking" tag.
A header bar says the time and the decided speaker. Sizes scale with the image so labels stay
readable from a 320 px preview to a 4K camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rtdiar.types import FaceResult, FrameResult

SPEAKING_BGR = (0, 255, 0)
# Tableau 10 without its green (green means "speaking"), as BGR; cycled by track id.
_PALETTE_BGR = (
    (180, 119, 31),   # blue
    (14, 127, 255),   # orange
    (40, 39, 214),    # red
    (189, 103, 148),  # purple
    (207, 190, 23),   # cyan
    (194, 119, 227),  # pink
    (75, 86, 140),    # brown
    (34, 189, 188),   # olive
    (127, 127, 127),  # grey
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A stable BGR colour per track id; neighbouring ids get different colours, none is green."""
    return _PALETTE_BGR[(track_id - 1) % len(_PALETTE_BGR)]


def track_colour_rgb(track_id: int) -> tuple[int, int, int]:
    """`track_colour` as RGB 0-255, for matplotlib and pyqtgraph."""
    blue, green, red = track_colour(track_id)
    return red, green, blue


@dataclass(frozen=True)
class _Style:
    """Line and font sizes for one image size."""

    line_px: int
    speaking_px: int
    font_scale: float
    text_px: int
    pad_px: int

    @classmethod
    def for_shape(cls, shape: tuple[int, ...]) -> _Style:
        short_px = min(shape[:2])
        line_px = max(1, round(short_px / 360))
        font_scale = max(0.35, short_px / 1000)
        return cls(line_px, 2 * line_px + 1, font_scale, max(1, round(font_scale * 1.6)), max(2, line_px * 2))


def annotate(image_bgr: np.ndarray, result: FrameResult) -> np.ndarray:
    """A copy of `image_bgr` with every face of `result` drawn on it; the input is left untouched."""
    canvas = np.ascontiguousarray(image_bgr).copy()
    style = _Style.for_shape(canvas.shape)
    # the speaker last, so its box is on top where faces overlap
    for face in sorted(result.faces, key=lambda f: f.speaking):
        _draw_face(canvas, face, style)
    speaker = "none" if result.speaker is None else f"face{result.speaker}"
    _draw_tag(canvas, f"t={result.t:.2f}s  speaker: {speaker}", (0, 0), (32, 32, 32), style, below=True)
    return canvas


def _draw_face(canvas: np.ndarray, face: FaceResult, style: _Style) -> None:
    height, width = canvas.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    # clip, so boxes partly outside the image still show their visible edges
    x1, x2 = np.clip([x1, x2], 0, width - 1)
    y1, y2 = np.clip([y1, y2], 0, height - 1)
    if x2 <= x1 or y2 <= y1:
        return
    colour = SPEAKING_BGR if face.speaking else track_colour(face.id)
    cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colour,
                  style.speaking_px if face.speaking else style.line_px)
    score = "--" if face.score is None else f"{face.score:.2f}"
    _draw_tag(canvas, f"face {face.id} {score}", (int(x1), int(y1)), colour, style, below=False)
    if face.speaking:
        _draw_tag(canvas, "speaking", (int(x1), int(y2)), SPEAKING_BGR, style, below=True)


def _draw_tag(canvas: np.ndarray, text: str, anchor: tuple[int, int], fill: tuple[int, int, int],
              style: _Style, below: bool) -> None:
    """A filled label whose corner sits at `anchor`: above it, or below it; kept inside the image."""
    height, width = canvas.shape[:2]
    blue, green, red = fill
    ink = (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 110 else (255, 255, 255)  # readable on the fill
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, style.font_scale, style.text_px)
    tag_w, tag_h = text_w + 2 * style.pad_px, text_h + baseline + 2 * style.pad_px
    left = min(max(anchor[0], 0), max(width - tag_w, 0))
    top = anchor[1] if below else anchor[1] - tag_h
    if top < 0 or top + tag_h > height:  # no room on that side: flip to the other one
        top = anchor[1] - tag_h if below else anchor[1]
    top = min(max(top, 0), max(height - tag_h, 0))
    cv2.rectangle(canvas, (left, top), (left + tag_w, top + tag_h), fill, cv2.FILLED)
    cv2.putText(canvas, text, (left + style.pad_px, top + style.pad_px + text_h), _FONT, style.font_scale, ink,
                style.text_px, cv2.LINE_AA)
