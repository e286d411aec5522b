"""annotate() shows who speaks: green on the speaker's box only, on a copy, whatever the boxes."""

from __future__ import annotations

import numpy as np

from rtdiar.drawing import annotate, track_colour, track_colour_rgb
from rtdiar.types import FaceResult, FrameResult


def is_green(pixel: np.ndarray) -> bool:
    blue, green, red = (int(v) for v in pixel)
    return green > 200 and red < 80 and blue < 80


def frame_with(faces: list[FaceResult], speaker: int | None) -> tuple[np.ndarray, FrameResult]:
    image = np.full((480, 640, 3), 90, dtype=np.uint8)
    return image, FrameResult(frame=12, t=0.48, faces=faces, speaker=speaker, image=image)


def test_speaker_box_is_green_and_the_others_are_not() -> None:
    image, result = frame_with([FaceResult(1, (60, 100, 220, 320), score=0.81, speaking=True),
                                FaceResult(2, (380, 120, 540, 330), score=None)], speaker=1)
    before = image.copy()
    out = annotate(image, result)
    assert np.array_equal(image, before), "the input frame must not be drawn on"
    assert out.shape == image.shape and out.dtype == np.uint8
    assert is_green(out[210, 60]) and is_green(out[210, 220])  # left and right edges, mid-height
    assert not is_green(out[225, 380]) and not is_green(out[225, 540])
    assert tuple(int(v) for v in out[225, 380]) == track_colour(2)
    assert not np.array_equal(out[:20, :150], before[:20, :150]), "header bar with time and speaker"


def test_no_speaker_means_no_green() -> None:
    image, result = frame_with([FaceResult(1, (60, 100, 220, 320), score=0.2),
                                FaceResult(2, (380, 120, 540, 330), score=0.1)], speaker=None)
    out = annotate(image, result)
    assert not any(is_green(p) for p in out.reshape(-1, 3)[::7])


def test_boxes_partly_or_wholly_outside_the_image() -> None:
    image, result = frame_with([FaceResult(3, (-80, -40, 150, 200), score=0.9, speaking=True),
                                FaceResult(4, (560, 400, 900, 700), score=0.3),
                                FaceResult(5, (-300, -300, -100, -100), score=0.3)], speaker=3)
    out = annotate(image, result)
    assert is_green(out[120, 150]), "the visible right edge of the speaker's box is drawn"
    assert tuple(int(v) for v in out[440, 560]) == track_colour(4)


def test_track_colours_are_stable_distinct_and_never_the_speaking_green() -> None:
    colours = [track_colour(i) for i in range(1, 30)]
    assert colours == [track_colour(i) for i in range(1, 30)]
    assert all(a != b for a, b in zip(colours, colours[1:]))
    assert len(set(colours[:8])) == 8
    assert not any(is_green(np.array(c)) for c in colours)
    assert track_colour_rgb(2) == track_colour(2)[::-1]
